//! microvm-agent: PID 1 of a MicroVM guest. Boot first (mounts, the agent's log),
//! then the command line, then the agent until it powers off.

use microvm_agent::agent::Startup;
use microvm_agent::cli;

fn main() {
    let start = Startup::begin();
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) if a.help && !start.role.is_pid1() => {
            println!("{}", cli::USAGE);
            return;
        }
        Ok(a) => {
            if a.help {
                // PID 1 cannot leave: a `--help` from the kernel command line is noise.
                tracing::warn!("--help ignored: running as PID 1");
            }
            a
        }
        Err(e) if !start.role.is_pid1() => {
            eprintln!("{e}");
            std::process::exit(2);
        }
        Err(e) => {
            // PID 1 cannot refuse to start: a bad command line keeps the defaults.
            tracing::error!("{e}; using defaults");
            cli::Args::default()
        }
    };
    start.run(args)
}
