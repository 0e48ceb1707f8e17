//! microvm-agent: PID 1 of a MicroVM guest. The panic hook first, then boot (mounts,
//! the agent's log), then the command line, then the agent until it powers off.

use microvm_agent::agent::Startup;
use microvm_agent::sys::{machine, power};
use microvm_agent::{cli, panic};

/// Before Rust's start-up code, which aborts when PID 1 has no console (see
/// `boot::early_console`).
// SAFETY (of running it there): an `extern "C" fn()` ignoring the loader's arguments;
// it uses no std facility that needs the runtime (only libc and nix, whose path
// arguments live on the stack), and nothing in it can panic.
#[used]
#[link_section = ".init_array"]
static EARLY_CONSOLE: extern "C" fn() = microvm_agent::sys::boot::early_console;

fn main() {
    let role = machine::detect_role();
    // First of all: whatever fails from here on ends in a logged power-off.
    panic::install(role);
    if role.is_pid1() {
        // What no panic hook sees (a stack overflow, an abort) must not kill PID 1.
        microvm_agent::sys::fatal::install(role);
    }
    let body = std::panic::catch_unwind(|| {
        // Booted from the agent's initramfs: load the root disk's driver, switch to
        // it and exec its init (this binary again); returns when there is no switch.
        microvm_agent::sys::switch_root::stage1(role);
        let start = Startup::begin(role);
        let args = if role.is_pid1() {
            // PID 1 cannot refuse to start: a bad value keeps that flag's default, the
            // flags that were right still count, and `--help` is noise.
            let (args, errors) = cli::parse_all(std::env::args().skip(1));
            for e in errors {
                tracing::error!("{e}; that flag keeps its default");
            }
            if args.help {
                tracing::warn!("--help ignored: running as PID 1");
            }
            args
        } else {
            match cli::parse(std::env::args().skip(1)) {
                Ok(a) if a.help => {
                    println!("{}", cli::USAGE);
                    return;
                }
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            }
        };
        start.run(args)
    });
    // `run` never returns: only `--help` (not PID 1) ends well; a panic that unwound
    // this far ends in power-off (the hook already exited, were we not PID 1).
    if body.is_err() {
        power::power_off(role, &panic::unwound())
    }
}
