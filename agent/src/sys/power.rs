//! The one way out of PID 1: an orderly power-off.

use microvm_protocol::status::Role;
use std::time::Duration;

/// The one way out: sync and power off, never returning. Also called from the panic
/// hook, so it takes no locks.
pub fn power_off(role: Role, reason: &str) -> ! {
    tracing::warn!(reason, "powering off");
    if !role.is_pid1() {
        // Under another init: "power off" is leaving; the subreaper's children were
        // stopped by the terminate path already.
        std::process::exit(0);
    }
    // Anything still alive gets a moment to exit cleanly before the power goes.
    kill_all(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    kill_all(nix::sys::signal::Signal::SIGKILL);
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // PID 1 must never exit (that is a kernel panic): if power-off failed, halt here.
    tracing::error!(?err, "power-off failed; halting in place");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn kill_all(sig: nix::sys::signal::Signal) {
    // pid -1 from PID 1: every process but ourselves (kill(2)).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig);
}
