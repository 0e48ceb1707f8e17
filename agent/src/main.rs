//! microvm-agent: PID 1 of a MicroVM guest. See DESIGN.md and README.md.

mod app;
mod boot;
mod cli;
mod config;
mod console;
mod control;
mod hooks;
mod machine;
mod supervisor;

use machine::Role;

fn main() {
    console::init();
    let role = Role::detect();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("agent panicked: {info}");
        eprintln!("microvm-agent panicked: {info}");
        machine::power_off(role, "Agent.Panic");
    }));
    let args = match cli::parse(std::env::args().skip(1)) {
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
    let boot = if role.is_pid1() {
        boot::init_pid1(boot::DEFAULT_HOSTNAME)
    } else {
        boot::init_subreaper()
    };
    let reason = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(app::run(args, role, boot)),
        Err(e) => format!("Agent.RuntimeFailed: {e}"),
    };
    machine::power_off(role, &reason);
}
