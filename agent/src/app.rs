//! Wiring: boot, config, reaper, application, control channel, power-off.

use crate::boot;
use crate::cli::Args;
use crate::config::ImageConfig;
use crate::control::{self, lifecycle, transport};
use crate::machine::{Machine, Real, Role};
use crate::supervisor::{self, AppSpec, Reaper, Supervisor};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How long to keep trying to bind the control channel (a guest's vsock driver may
/// still be probing) before giving up and powering off with the reason.
const BIND_PATIENCE: Duration = Duration::from_secs(10);

/// Run the agent; returns the reason to power off with.
pub async fn run(args: Args, role: Role, boot: boot::BootReport, announce: Option<u32>) -> String {
    let machine: Arc<dyn Machine> = Arc::new(Real::new(role));
    let reaper = Arc::new(Reaper::default());
    tokio::spawn(reaper.clone().run());

    let config = ImageConfig::load(&args.image_config).map_err(|e| {
        tracing::error!("{e}");
        e.to_string()
    });

    let listener = match bind(&args.control, "control").await {
        Ok(l) => l,
        Err(e) => return format!("Agent.ControlBindFailed: {} ({e})", args.control),
    };
    let activity = crate::activity::Activity::new();
    let events = Arc::new(crate::events::Events::new());
    // Ingress is not vital: without it the host can still run and terminate the VM.
    match bind(&args.ingress, "ingress").await {
        Ok(l) => {
            tokio::spawn(crate::ingress::serve(l, activity.clone()));
        }
        Err(e) => tracing::error!("ingress on {} unavailable: {e}", args.ingress),
    }
    tokio::spawn(crate::ingress::serve_leases(activity.clone()));

    let logs = config.as_ref().ok().map(|cfg| {
        let logs = crate::logs::Logs::new(cfg.logs.clone());
        tokio::spawn(logs.clone().run_sender());
        logs
    });
    let pipe = |logs: &Option<Arc<crate::logs::Logs>>| {
        logs.as_ref().and_then(|l| match l.pipe() {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::error!("cannot create a log pipe ({e}); output goes to the console");
                None
            }
        })
    };
    let (stdout, stderr) = (pipe(&logs), pipe(&logs));
    let supervisor = config.as_ref().ok().map(|cfg| {
        let mut env: Vec<(String, String)> = ["PATH", "HOME", "TERM"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), "/".into()));
        }
        env.retain(|(k, _)| !cfg.env.contains_key(k));
        env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let spec = AppSpec {
            command: cfg.command.clone(),
            env,
            working_dir: cfg.working_dir.clone(),
            stdout,
            stderr,
        };
        Supervisor::new(reaper.clone(), spec, cfg.on_application_exit)
    });

    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    let lc = lifecycle::Lifecycle::new(lifecycle::Context {
        config,
        supervisor: supervisor.clone(),
        logs,
        activity,
        events,
        machine: machine.clone(),
        power: power_tx,
        role,
        boot,
    });

    if let Some(sup) = supervisor {
        tokio::spawn(supervisor::forward_signals(sup.clone()));
        let lc = lc.clone();
        tokio::spawn(async move {
            if let Some(exit) = sup.run().await {
                lc.application_exited(exit).await;
            }
        });
    }

    let shutdown = Arc::new(Notify::new());
    let server = tokio::spawn(control::serve(listener, lc.clone(), shutdown.clone()));
    tracing::info!(control = %args.control, "control channel ready");
    if let Some(port) = announce {
        let line = serde_json::json!({
            "event": "ready",
            "cid": crate::guest::local_cid(),
            "control": args.control.to_string(),
        })
        .to_string();
        tokio::spawn(crate::guest::announce(port, line));
    }

    // The first power request sets a deadline; a later one may only bring it closer.
    let Some(first) = power_rx.recv().await else {
        return "Agent.Internal: power channel closed".into();
    };
    let mut reason = first.reason;
    let deadline = tokio::time::sleep(first.after);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(next) = power_rx.recv() => {
                let at = tokio::time::Instant::now() + next.after;
                if at < deadline.deadline() {
                    reason = next.reason;
                    deadline.as_mut().reset(at);
                }
            }
        }
    }
    shutdown.notify_one();
    let _ = tokio::time::timeout(control::DRAIN_TIMEOUT * 2, server).await;
    reason
}

async fn bind(addr: &transport::Addr, role: &'static str) -> std::io::Result<transport::Listener> {
    let start = tokio::time::Instant::now();
    loop {
        match transport::Listener::bind(addr, role) {
            Ok(l) => return Ok(l),
            Err(e) if start.elapsed() < BIND_PATIENCE => {
                tracing::warn!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!("bind {addr}: {e}; giving up");
                return Err(e);
            }
        }
    }
}
