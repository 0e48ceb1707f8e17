//! The one way out of PID 1: an orderly power-off.

use microvm_protocol::status::Role;
use std::time::Duration;

/// How long the last sync before power-off may take.
pub const FINAL_SYNC_DEADLINE: Duration = Duration::from_secs(5);

/// How long the console's queue may take to drain before the power-off line.
const CONSOLE_FLUSH: Duration = Duration::from_secs(1);

/// Run `work` on a thread of its own; true if it finished within `deadline`. The
/// thread is abandoned otherwise (the machine is about to go).
pub fn within(deadline: Duration, work: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("bounded".into())
        .spawn(move || {
            work();
            let _ = done.send(());
        });
    spawned.is_ok() && finished.recv_timeout(deadline).is_ok()
}

/// The one way out: sync and power off, never returning. Also called from the panic
/// hook, so it takes no locks.
pub fn power_off(role: Role, reason: &str) -> ! {
    // What the agent logged last explains this: it gets a moment. The reason itself
    // goes past the queue, so a reader of the console always sees why.
    crate::console::flush(CONSOLE_FLUSH);
    crate::console::critical(&format!("microvm-agent: powering off: {reason}"));
    if !role.is_pid1() {
        // Under another init: "power off" is leaving; the subreaper's children were
        // stopped by the terminate path already.
        std::process::exit(0);
    }
    // Anything still alive gets a moment to exit cleanly before the power goes.
    kill_all(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    kill_all(nix::sys::signal::Signal::SIGKILL);
    // Wedged storage must not keep the power on: the final sync gets a deadline.
    if !within(FINAL_SYNC_DEADLINE, crate::faults::sync) {
        crate::console::critical(&format!(
            "microvm-agent: sync did not finish within {FINAL_SYNC_DEADLINE:?}; powering off anyway"
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn bounded_work_returns_on_time_whatever_the_work_does() {
        assert!(within(Duration::from_secs(5), || {}));
        let t0 = Instant::now();
        let wedged = within(Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(3600))
        });
        assert!(!wedged);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}
