//! The `/v1/status` view: everything the host may read about this guest, in one
//! typed answer (`microvm_protocol::status::Status`).

use super::Lifecycle;
use crate::control::state;
use crate::sys::guest;
use microvm_protocol::status::{ActivityStatus, CredentialsInfo, GuestInfo, Role, Status};
use microvm_protocol::PROTOCOL_VERSION;

impl Lifecycle {
    pub fn status(&self) -> Status {
        let g = self.lock();
        let in_flight = g.in_flight.as_ref().map(|f| f.op);
        let (image_name, config_error) = match &self.ctx.config {
            Ok(c) => (Some(c.image_name.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        let activity = &self.ctx.activity;
        Status {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            state: state::phase(g.base, in_flight),
            in_flight,
            state_reason: g.state_reason.clone(),
            image_name,
            config_error,
            microvm_id: g.run.as_ref().map(|r| r.microvm_id.clone()),
            run: g.run.clone(),
            credentials: g.credentials.as_ref().map(|c| CredentialsInfo {
                access_key_id: c.access_key_id.clone(),
                expiration: c.expiration.clone(),
            }),
            application: self.ctx.supervisor.as_ref().map(|s| s.status()),
            hooks: g.hooks.clone(),
            logs: self.ctx.logs.as_ref().map(|l| l.status()),
            activity: ActivityStatus {
                ingress_bytes: activity.ingress_bytes(),
                busy: activity.is_busy(),
                idle_for_ms: activity.idle_for().as_millis() as u64,
                exec_sessions: self.ctx.exec.live() as u64,
            },
            machine: self.ctx.machine.steps(),
            role: self.ctx.role,
            guest: (self.ctx.role == Role::Guest).then(|| {
                let mem = guest::meminfo();
                GuestInfo {
                    machine: guest::machine(),
                    cid: guest::local_cid(),
                    mem_total_ki_b: mem.map(|m| m.0),
                    mem_available_ki_b: mem.map(|m| m.1),
                    announcements: crate::control::announce::announcements(),
                    unix_time_ms: Some(crate::clock::Clock::unix_ms(&crate::clock::SystemClock)),
                }
            }),
            boot: self.ctx.boot.clone(),
            console: crate::console::status(),
            metadata: self.ctx.metadata.as_ref().map(|m| m.status()),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}
