//! Runs lifecycle operations decided by [`super::state`]: the application's hooks,
//! the freshness steps, stopping the application and asking for power-off.
//!
//! Every started operation runs in a task of its own and publishes its answer on a
//! watch channel; HTTP handlers only wait on that channel. A host that hangs up
//! mid-request therefore never leaves an operation half done or the state wedged, and
//! a retry simply waits on the same channel (Join) instead of calling the app again.
//!
//! This file is the concurrency machinery; `ops.rs` the operations themselves;
//! `status.rs` the `/v1/status` view.

mod ops;
mod status;
#[cfg(test)]
mod tests;

use super::answer::Answer;
use super::state::{self, Base, Decision};
use crate::activity::Activity;
use crate::config::{Freshness, ImageConfig, RunRequest};
use crate::events::Events;
use crate::logs::Logs;
use crate::supervisor::Supervisor;
use crate::sys::machine::Machine;
use microvm_protocol::events::EventsPage;
use microvm_protocol::run::Credentials;
use microvm_protocol::status::{BootReport, HookRecord, Role, RunInfo, State};
use microvm_protocol::{ApiError, ErrorCode, Hook};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// SIGTERM to SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long /suspend and /terminate wait for captured logs to be sent.
pub const LOG_FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// How long /suspend waits, after the flush, for a batch already under way.
pub const LOG_HOLD_DEADLINE: Duration = Duration::from_secs(5);
/// Longest we wait for sync(2) before answering anyway.
pub const STORAGE_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// The host hears `credentialsExpiring` this long before the credentials expire.
pub const CREDENTIALS_WARNING: Duration =
    Duration::from_secs(microvm_protocol::limits::CREDENTIALS_WARNING_SECONDS);
/// While no newer set arrives, the warning is repeated this often (a rotation may
/// have failed), and no two warnings, of any set, come closer together: credentials
/// that arrive inside the window must not make host and agent rotate in a loop.
pub const CREDENTIALS_REWARN: Duration = Duration::from_secs(60);
/// How long /suspend and /terminate wait for exec sessions to send their last frames.
pub const EXEC_END_WAIT: Duration = Duration::from_secs(3);
/// After the agent ended the VM itself (application exit, maximum duration), how long
/// the host has to read `/v1/status` before power-off; a host `/terminate` cuts it short.
pub const SELF_TERMINATE_REPORT_WINDOW: Duration = Duration::from_secs(5);

/// What a request carries into its operation.
#[derive(Debug)]
pub enum Input {
    Empty,
    Run(Box<RunRequest>),
    Resume(Box<Freshness>),
    /// Terminate started by the agent itself, with the reason.
    SelfTerminate(String),
}

/// Ask the main loop to power off, at once or after `after`.
#[derive(Debug, Clone)]
pub struct PowerRequest {
    pub reason: String,
    pub after: Duration,
}
struct InFlight {
    op: Hook,
    generation: u64,
    done: watch::Receiver<Option<Answer>>,
}

struct Inner {
    base: Base,
    in_flight: Option<InFlight>,
    generation: u64,
    last: HashMap<Hook, Answer>,
    hooks: BTreeMap<Hook, HookRecord>,
    run: Option<RunInfo>,
    credentials: Option<Credentials>,
    /// Bumped by every credentials update: a warning timer of older ones stands down.
    credentials_generation: u64,
    /// When the last `credentialsExpiring` went out (any set): at most one a minute.
    credentials_warned: Option<Instant>,
    state_reason: Option<String>,
}

/// Everything an operation touches outside the state.
pub struct Context {
    pub config: Result<ImageConfig, String>,
    pub supervisor: Option<Arc<Supervisor>>,
    pub logs: Option<Arc<Logs>>,
    pub activity: Arc<Activity>,
    pub events: Arc<Events>,
    pub machine: Arc<dyn Machine>,
    pub power: mpsc::UnboundedSender<PowerRequest>,
    pub role: Role,
    pub boot: BootReport,
    /// The metadata service's facts (None without a valid image config).
    pub metadata: Option<Arc<crate::metadata::Metadata>>,
    /// The agent owns the application's `AWS_CONFIG_FILE` (see `sdkconfig`) and
    /// writes the run's region there.
    pub sdk_config_file: bool,
    /// The network is the agent's to configure (a real guest, or a namespace of its
    /// own): the run's `network` is applied only then.
    pub network_ours: bool,
    /// Exec sessions and file transfers (shell ingress).
    pub exec: Arc<crate::exec::Exec>,
}

pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Lifecycle {
    inner: Mutex<Inner>,
    ctx: Context,
    started: Instant,
    /// Woken when the wall clock was stepped: the credentials warning, a wall-clock
    /// deadline, is recomputed (the monotonic clock stood still while a snapshot was
    /// on disk, so a monotonic sleep computed before would be late).
    clock_stepped: tokio::sync::Notify,
    /// One credentials update at a time, end to end: the CloudWatch client, the
    /// metadata service and the status always hold the same (the newest) set.
    credentials_gate: Mutex<()>,
    /// The connection to the application's hooks server, kept between hooks.
    hooks: crate::hooks::Client,
}

impl Lifecycle {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Lifecycle {
            inner: Mutex::new(Inner {
                base: Base::Pending,
                in_flight: None,
                generation: 0,
                last: HashMap::new(),
                hooks: BTreeMap::new(),
                run: None,
                credentials: None,
                credentials_generation: 0,
                credentials_warned: None,
                state_reason: None,
            }),
            ctx,
            started: Instant::now(),
            clock_stepped: tokio::sync::Notify::new(),
            credentials_gate: Mutex::new(()),
            hooks: crate::hooks::Client::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic, and the panic hook is powering off already;
        // the state itself is still consistent enough to answer the host meanwhile.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handle one host request for `op`.
    pub async fn request(self: &Arc<Self>, op: Hook, input: Input) -> Answer {
        if let (Err(e), false) = (&self.ctx.config, op == Hook::Terminate) {
            return ApiError::new(
                ErrorCode::ImageConfigInvalid,
                format!("{e}; fix the image and rebuild it (only /terminate works)"),
            )
            .into();
        }
        let (mut done, start) = {
            let mut g = self.lock();
            let in_flight = g.in_flight.as_ref().map(|f| f.op);
            match state::decide(g.base, in_flight, op) {
                Decision::Reject => {
                    let phase = state::phase(g.base, in_flight);
                    return conflict(op, phase, in_flight);
                }
                Decision::Replay => {
                    let answer = g.last.get(&op).cloned();
                    drop(g);
                    if op == Hook::Terminate {
                        // The host saw the VM end on its own and acknowledges it.
                        self.request_power("Host.Terminate", Duration::ZERO);
                    }
                    return answer.unwrap_or_else(|| Answer::new(200, json!({})));
                }
                Decision::Join => match &g.in_flight {
                    Some(f) => (f.done.clone(), None),
                    None => {
                        return ApiError::new(ErrorCode::InternalError, "nothing to join").into()
                    }
                },
                Decision::Start => {
                    g.generation += 1;
                    let (tx, rx) = watch::channel(None);
                    g.in_flight = Some(InFlight {
                        op,
                        generation: g.generation,
                        done: rx.clone(),
                    });
                    (rx, Some((tx, g.generation)))
                }
            }
        };
        if let Some((tx, generation)) = start {
            let this = self.clone();
            let by_host = !matches!(input, Input::SelfTerminate(_));
            tokio::spawn(async move {
                let answer = this.execute(op, input).await;
                let ok = answer.status == 200;
                let settled = this.finish(op, generation, answer, tx);
                if settled && ok && op == Hook::Run {
                    this.run_started();
                }
                // A self-termination asks for power-off itself, after a report window.
                if settled && op == Hook::Terminate && by_host {
                    this.request_power("Host.Terminate", Duration::ZERO);
                }
            });
        }
        let answer = done.wait_for(Option::is_some).await.map(|a| a.clone());
        match answer {
            Ok(Some(a)) => a,
            _ => ApiError::new(ErrorCode::InternalError, "operation vanished").into(),
        }
    }

    /// Settle the state and publish the answer; false if /terminate preempted `op`.
    fn finish(
        &self,
        op: Hook,
        generation: u64,
        mut answer: Answer,
        tx: watch::Sender<Option<Answer>>,
    ) -> bool {
        let mut g = self.lock();
        let current = matches!(&g.in_flight, Some(f) if f.generation == generation);
        if current {
            g.base = state::complete(g.base, op, answer.status == 200);
            g.in_flight = None;
            if let Value::Object(m) = &mut answer.body {
                m.insert("state".into(), json!(state::phase(g.base, None)));
            }
            g.last.insert(op, answer.clone());
        } else {
            // Preempted by /terminate while it ran: its outcome no longer applies.
            let phase = state::phase(g.base, g.in_flight.as_ref().map(|f| f.op));
            answer = conflict(op, phase, Some(Hook::Terminate));
        }
        drop(g);
        let _ = tx.send(Some(answer));
        current
    }

    pub fn exec(&self) -> &Arc<crate::exec::Exec> {
        &self.ctx.exec
    }

    /// Exec and files run only while RUNNING with nothing in flight (a suspension
    /// under way ends sessions; new ones must not slip in behind it). Err(None): the
    /// state refuses; the registry then decides the rest.
    pub fn exec_phase_allows(&self) -> Result<(), Option<crate::exec::Refusal>> {
        let g = self.lock();
        match state::phase(g.base, g.in_flight.as_ref().map(|f| f.op)) {
            State::Running if g.in_flight.is_none() => Ok(()),
            _ => Err(None),
        }
    }

    /// 409 for an exec or files request in the current state.
    pub fn exec_conflict(&self) -> Answer {
        let g = self.lock();
        let in_flight = g.in_flight.as_ref().map(|f| f.op);
        let phase = state::phase(g.base, in_flight);
        let mut message = format!(
            "exec and files need a RUNNING MicroVM; it is {}",
            phase.as_str()
        );
        if let Some(f) = in_flight {
            message.push_str(&format!(" ({f:?} in progress)"));
        }
        ApiError::new(ErrorCode::InvalidState, message)
            .with_state(phase)
            .into()
    }

    pub async fn events(&self, after: u64, wait: Duration) -> EventsPage {
        self.ctx.events.since(after, wait).await
    }

    fn request_power(&self, reason: &str, after: Duration) {
        let reason = self.lock().state_reason.clone().unwrap_or(reason.into());
        let _ = self.ctx.power.send(PowerRequest { reason, after });
    }
}

/// 409: `op` is not allowed in `state`.
fn conflict(op: Hook, state: State, in_flight: Option<Hook>) -> Answer {
    let mut message = format!("{op:?} is not allowed in state {}", state.as_str());
    if let Some(f) = in_flight {
        message.push_str(&format!(" ({f:?} in progress)"));
    }
    ApiError::new(ErrorCode::InvalidState, message)
        .with_state(state)
        .into()
}
