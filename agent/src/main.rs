//! microvm-agent: PID 1 of a MicroVM guest. See DESIGN.md and README.md.

mod activity;
mod app;
mod boot;
mod cli;
mod config;
mod console;
mod control;
mod events;
mod guest;
mod hooks;
mod ingress;
mod logs;
mod machine;
mod supervisor;

use machine::Role;

fn main() {
    let role = Role::detect();
    // Mounts first: the log level and more come from /proc/cmdline in a guest.
    let mut boot = if role.is_pid1() {
        boot::init_pid1()
    } else {
        boot::init_subreaper()
    };
    let cmdline = if role == Role::Guest {
        guest::read_cmdline()
    } else {
        guest::Cmdline::default()
    };
    console::init(cmdline.log.as_deref());
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("agent panicked: {info}");
        eprintln!("microvm-agent panicked: {info}");
        machine::power_off(role, "Agent.Panic");
    }));
    let mut args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) if a.help => {
            println!("{}", cli::USAGE);
            return;
        }
        Ok(a) => a,
        Err(e) if !role.is_pid1() => {
            eprintln!("{e}");
            std::process::exit(2);
        }
        Err(e) => {
            // PID 1 cannot refuse to start: a bad command line keeps the defaults.
            tracing::error!("{e}; using defaults");
            cli::parse(std::iter::empty()).unwrap_or_else(|_| unreachable!())
        }
    };
    if !args.ignored.is_empty() {
        tracing::warn!(ignored = ?args.ignored, "ignoring unknown arguments");
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
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
        boot.failures.extend(guest::load_modules());
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
            std::env::set_var(activity::TEST_MIN_IDLE_ENV, n.to_string());
        }
        if let Some(p) = &cmdline.image_config {
            args.image_config = p.into();
        }
    }
    boot.log();
    let reason = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(app::run(args, role, boot, cmdline.announce)),
        Err(e) => format!("Agent.RuntimeFailed: {e}"),
    };
    machine::power_off(role, &reason);
}
