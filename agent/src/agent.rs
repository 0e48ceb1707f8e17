//! Wiring: boot, config, reaper, application, control channel, power-off. The binary
//! calls [`Startup::begin`], parses its arguments, and hands them to [`Startup::run`].

use crate::cli::Args;
use crate::config::ImageConfig;
use crate::control::{self, announce, lifecycle};
use crate::logs::Logs;
use crate::supervisor::{self, AppSpec, Reaper, Supervisor};
use crate::sys::boot::{self, BootReport};
use crate::sys::cmdline::{self, Cmdline};
use crate::sys::machine::{detect_role, Machine, Real, Role};
use crate::sys::{guest, modules, power};
use crate::transport;
use microvm_protocol::events::Announce;
use microvm_protocol::PROTOCOL_VERSION;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// How long the runtime's tasks get to finish once the agent decided to power off.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// How long to keep trying to bind the control channel (a guest's vsock driver may
/// still be probing) before giving up and powering off with the reason.
const BIND_PATIENCE: Duration = Duration::from_secs(10);

/// What happened before the arguments were parsed: PID 1's boot duties and the
/// agent's own log, which must come first (the log level may be on /proc/cmdline).
pub struct Startup {
    pub role: Role,
    boot: BootReport,
    cmdline: Cmdline,
}

impl Startup {
    pub fn begin() -> Startup {
        let role = detect_role();
        // First of all: whatever fails from here on ends in a logged power-off.
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!("agent panicked: {info}");
            eprintln!("microvm-agent panicked: {info}");
            if !role.is_pid1() {
                // Under another init a panic is a failure, and says so in the status.
                std::process::exit(101);
            }
            power::power_off(role, "Agent.Panic");
        }));
        let boot = if role.is_pid1() {
            boot::init_pid1()
        } else {
            boot::init_subreaper()
        };
        let cmdline = if role == Role::Guest {
            cmdline::read_cmdline()
        } else {
            Cmdline::default()
        };
        crate::log::init(cmdline.log.as_deref());
        Startup {
            role,
            boot,
            cmdline,
        }
    }

    /// Run the agent with `args` until it powers off. Never returns: PID 1 must not.
    pub fn run(self, mut args: Args) -> ! {
        let Startup {
            role,
            mut boot,
            cmdline,
        } = self;
        if !args.ignored.is_empty() {
            tracing::warn!(ignored = ?args.ignored, "ignoring unknown arguments");
        }
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            protocol = PROTOCOL_VERSION,
            ?role,
            "microvm-agent starting"
        );
        boot::raise_nofile(&mut boot);
        if role.is_pid1() {
            let hostname = cmdline
                .hostname
                .as_deref()
                .unwrap_or(boot::DEFAULT_HOSTNAME);
            boot::set_hostname(&mut boot, hostname);
        }
        // Only a real guest loads modules: in a test namespace the kernel is the host's.
        if role == Role::Guest {
            boot.failures.extend(modules::load_modules());
            apply_cmdline(&cmdline, &mut args);
        }
        boot::log(&boot);
        let reason = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let reason = rt.block_on(serve(args, role, boot, cmdline.announce));
                // Dropping a runtime waits for its blocking tasks without limit (a
                // sync(2) on wedged storage); power-off must not.
                rt.shutdown_timeout(RUNTIME_SHUTDOWN);
                reason
            }
            Err(e) => format!("Agent.RuntimeFailed: {e}"),
        };
        power::power_off(role, &reason)
    }
}

/// `microvm.*` kernel parameters override the command line in a guest.
fn apply_cmdline(cmdline: &Cmdline, args: &mut Args) {
    if let Some(c) = &cmdline.control {
        match c.parse() {
            Ok(a) => args.control = a,
            Err(e) => tracing::error!("microvm.control: {e}; keeping {}", args.control),
        }
    }
    if let Some(c) = &cmdline.ingress {
        match c.parse() {
            Ok(a) => args.ingress = a,
            Err(e) => tracing::error!("microvm.ingress: {e}; keeping {}", args.ingress),
        }
    }
    if let Some(n) = cmdline.test_min_idle_seconds {
        tracing::warn!("test-only setting: minimum idle duration lowered to {n}s");
        std::env::set_var(crate::activity::TEST_MIN_IDLE_ENV, n.to_string());
    }
    if let Some(p) = &cmdline.image_config {
        args.image_config = p.into();
    }
}

/// Run the agent's services; returns the reason to power off with.
async fn serve(args: Args, role: Role, boot: BootReport, announce_port: Option<u32>) -> String {
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
            let hooks_port = config
                .as_ref()
                .ok()
                .filter(|c| c.hooks.any_enabled())
                .map(|c| c.hooks.port());
            let borders = crate::ingress::Borders::new(hooks_port);
            tokio::spawn(crate::ingress::serve(l, activity.clone(), borders));
        }
        Err(e) => tracing::error!("ingress on {} unavailable: {e}", args.ingress),
    }
    tokio::spawn(crate::ingress::serve_leases(activity.clone()));

    let logs = config.as_ref().ok().map(|cfg| {
        let logs = Logs::new(cfg.logs.clone());
        tokio::spawn(logs.clone().run_sender());
        logs
    });
    let pipe = |logs: &Option<Arc<Logs>>| {
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
        tokio::spawn(supervisor::signals::forward_signals(sup.clone()));
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
    if let Some(port) = announce_port {
        let line = Announce {
            event: "ready".into(),
            cid: guest::local_cid(),
            control: args.control.to_string(),
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        match serde_json::to_string(&line) {
            Ok(line) => {
                tokio::spawn(announce::announce(port, line));
            }
            Err(e) => tracing::error!("encoding the announce line: {e}"),
        }
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
