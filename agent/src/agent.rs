//! Wiring: boot, config, reaper, application, control channel, power-off. The binary
//! calls [`Startup::begin`], parses its arguments, and hands them to [`Startup::run`].

use crate::cli::Args;
use crate::config::ImageConfig;
use crate::control::{self, announce, lifecycle};
use crate::logs::Logs;
use crate::supervisor::cgroup::{self, AppCgroup};
use crate::supervisor::privileges::Policy;
use crate::supervisor::{self, AppSpec, Reaper, Supervisor};
use crate::sys::boot::{self, BootReport};
use crate::sys::cmdline::{self, Cmdline};
use crate::sys::machine::{Machine, Real, Role};
use crate::sys::{modules, power};
use crate::{sdkconfig, transport};
use microvm_protocol::events::EventType;
use microvm_protocol::PROTOCOL_VERSION;
use std::path::Path;
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
    /// Boot duties for `role`; the panic hook is installed already
    /// ([`crate::panic::install`]).
    pub fn begin(role: Role) -> Startup {
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
        boot.failures.extend(crate::sys::fatal::install_failures());
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
            // The agent loads modules itself; the kernel's autoload would run
            // /sbin/modprobe as root with every capability, a path the root
            // application could write on a writable root. Empty: never.
            if let Err(e) = modules::disable_autoload() {
                boot.failures.push(format!("kernel.modprobe: {e}"));
            }
            match cmdline
                .net
                .settings()
                .and_then(|s| s.map(|s| crate::sys::network::apply(&s)).transpose())
            {
                Ok(Some(line)) => boot.created.push(line),
                Ok(None) => {}
                Err(e) => boot.failures.push(format!("network: {e}")),
            }
            apply_cmdline(&cmdline, &mut args);
        }
        boot::log(&boot);
        let reason = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let serving = std::panic::AssertUnwindSafe(|| {
                    rt.block_on(serve(args, role, boot, cmdline.announce))
                });
                // A panic that unwinds out of the runtime must not drop it unbounded.
                let reason =
                    std::panic::catch_unwind(serving).unwrap_or_else(|_| crate::panic::unwound());
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
    if let Some(p) = &cmdline.image_config {
        args.image_config = p.into();
    }
}

/// Run the agent's services; returns the reason to power off with.
async fn serve(args: Args, role: Role, mut boot: BootReport, announce_port: Option<u32>) -> String {
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
    // Not PID 1, /run is the machine's: the agent writes nothing there.
    let sdk_config_file = role.is_pid1()
        && config
            .as_ref()
            .is_ok_and(|c| !c.env.contains_key(sdkconfig::ENV));
    let metadata = config.as_ref().ok().map(|cfg| {
        let md = crate::metadata::Metadata::new(cfg.metadata, &cfg.image_name);
        tokio::spawn(crate::metadata::serve(md.clone(), role));
        md
    });
    // A real guest: the agent out of the OOM killer's reach, the app in its cgroup.
    let agent_protected = role == Role::Guest && protect_agent(&mut boot);
    let cgroup = match (&config, role) {
        (Ok(cfg), Role::Guest) => app_cgroup(cfg, &mut boot),
        _ => None,
    };
    // Exec sessions start from the application's environment (the agent's PATH
    // without a valid config).
    let mut exec_env: Vec<(String, String)> = std::env::var("PATH")
        .ok()
        .map(|p| ("PATH".to_string(), p))
        .into_iter()
        .collect();
    let supervisor = config.as_ref().ok().map(|cfg| {
        // HOME is the run-as user's (from the image's /etc/passwd) unless the image
        // sets it: the spawn decides, as it resolves the user.
        let mut env: Vec<(String, String)> = ["PATH", "TERM"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if sdk_config_file {
            env.push((sdkconfig::ENV.into(), sdkconfig::PATH.into()));
        }
        env.retain(|(k, _)| !cfg.env.contains_key(k));
        env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        exec_env = env.clone();
        let spec = AppSpec {
            command: cfg.command.clone(),
            env,
            working_dir: cfg.working_dir.clone(),
            stdout,
            stderr,
            cgroup: cgroup.clone(),
            reset_oom_score: agent_protected,
            // Not PID 1, the agent is someone's process with nothing of its own to
            // protect (and may lack the privileges to confine anything).
            confine: role.is_pid1().then(|| Policy {
                user: cfg.user.clone(),
                all_capabilities: !cfg.additional_os_capabilities.is_empty(),
            }),
        };
        Supervisor::new(reaper.clone(), spec, cfg.on_application_exit)
    });

    let memory_limit_mib = config.as_ref().ok().and_then(|c| c.memory_limit_mib);
    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    let exec = crate::exec::Exec::new(
        reaper.clone(),
        crate::exec::spawn::Base {
            env: exec_env,
            reset_oom_score: agent_protected,
        },
        activity.clone(),
    );
    let lc = lifecycle::Lifecycle::new(lifecycle::Context {
        config,
        supervisor: supervisor.clone(),
        logs,
        activity,
        events: events.clone(),
        machine: machine.clone(),
        power: power_tx,
        role,
        boot,
        metadata,
        sdk_config_file,
        // Decided at boot, as for the metadata address: a test namespace is the
        // agent's own only while it has nothing but lo (a NIC may come later).
        network_ours: crate::metadata::network_is_ours(role).is_ok(),
        exec,
    });

    if let Some(sup) = supervisor {
        tokio::spawn(supervisor::signals::forward_signals(sup.clone()));
        let lc = lc.clone();
        tokio::spawn(async move {
            if let Some((exit, reason)) = sup.run().await {
                lc.application_exited(exit, reason).await;
            }
        });
    }
    if let Some(cg) = cgroup {
        let (events, limit) = (events.clone(), memory_limit_mib);
        tokio::spawn(supervisor::cgroup::watch_oom_kills(cg, move |total| {
            tracing::warn!(total, "the OOM killer struck the application");
            events.emit(
                EventType::ApplicationOutOfMemory,
                serde_json::json!({"oomKills": total, "memoryLimitMiB": limit}),
            );
        }));
    }

    // A panic in any task: terminate in order, as /terminate would, with its reason.
    {
        let lc = lc.clone();
        tokio::spawn(async move {
            let reason = crate::panic::panicked().await;
            lc.self_terminate(reason).await;
        });
    }

    let shutdown = Arc::new(Notify::new());
    let server = tokio::spawn(control::serve(listener, lc.clone(), shutdown.clone()));
    tracing::info!(control = %args.control, "control channel ready");
    if let Some(port) = announce_port {
        // Again whenever the vsock device comes back (a snapshot restore).
        tokio::spawn(announce::announce_and_follow(
            port,
            args.control.to_string(),
        ));
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

/// `oom_score_adj` -1000 for the agent; false (a boot failure) if refused.
fn protect_agent(boot: &mut BootReport) -> bool {
    match cgroup::protect_agent() {
        Ok(()) => true,
        Err(e) => {
            boot.failures
                .push(format!("oom_score_adj -1000 for the agent: {e}"));
            false
        }
    }
}

/// The application in a cgroup of its own (with the image's memory limit). Failures
/// are boot failures, not fatal.
fn app_cgroup(cfg: &ImageConfig, boot: &mut BootReport) -> Option<Arc<AppCgroup>> {
    let limit = cfg.memory_limit_mib.map(|m| m << 20);
    match AppCgroup::create(Path::new(cgroup::ROOT), limit) {
        Ok(cg) => Some(Arc::new(cg)),
        Err(e) => {
            boot.failures.push(format!(
                "application cgroup under {}: {e}; no memory limit, OOM kills unreported",
                cgroup::ROOT
            ));
            None
        }
    }
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
