//! The faults no panic hook sees: a stack overflow, an `abort` (a panic while
//! panicking, a panic in a destructor during unwinding, an allocation failure), a
//! memory fault. Each ends the process with a signal, and a PID 1 killed by a signal
//! is a kernel panic: the host sees a wedged or vanished VM, never why, and nothing is
//! synced. As PID 1 the agent catches those signals and does, within bounds and with
//! async-signal-safe calls only, the part of power-off that still makes sense: say
//! why on the console, stop every other process, sync storage (in a child process,
//! so wedged storage cannot keep the power on), power off.
//!
//! The orderly part (the application told, logs flushed) is out of reach here: the
//! runtime's state cannot be trusted once memory or a stack is gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How long the sync child may take before the power goes off anyway.
const SYNC_DEADLINE_MS: u64 = 5_000;

const FATAL: [libc::c_int; 5] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
];

/// Rust's own SIGSEGV and SIGBUS handlers (they tell a stack overflow from other
/// faults and name the thread), called first so their explanation reaches the console.
static PREVIOUS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Catch the fatal signals; only for PID 1 (any other process dies of them as usual,
/// and its parent sees the signal).
pub fn install() {
    for sig in FATAL {
        // SAFETY: a zeroed sigaction is a valid "no handler, empty mask"; the handler
        // is an `extern "C"` function that uses only async-signal-safe calls, and runs
        // on the alternate stack that Rust's runtime gives every thread it starts (the
        // only way a handler can run after a stack overflow).
        let old = unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_fatal as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // Nothing else may land on this small stack while we work (a SIGCHLD
            // from the sync child overflowed it), except the fatal signals: an
            // abort raised inside the chained handler must still reach us.
            libc::sigfillset(&mut new.sa_mask);
            for f in FATAL {
                libc::sigdelset(&mut new.sa_mask, f);
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &new, &mut old) != 0 {
                tracing::warn!(sig, "fatal-signal handler not installed");
                continue;
            }
            old
        };
        let handler = old.sa_sigaction;
        let chained = old.sa_flags & libc::SA_SIGINFO != 0
            && handler != libc::SIG_DFL
            && handler != libc::SIG_IGN;
        match sig {
            libc::SIGSEGV if chained => PREVIOUS[0].store(handler, Ordering::SeqCst),
            libc::SIGBUS if chained => PREVIOUS[1].store(handler, Ordering::SeqCst),
            _ => {}
        }
    }
}

/// The console line for `sig`.
pub fn describe(sig: libc::c_int) -> &'static [u8] {
    match sig {
        libc::SIGABRT => b"microvm-agent: fatal: SIGABRT (an abort: a stack overflow, a panic while panicking, memory exhausted); powering off without the orderly part\n",
        libc::SIGSEGV => b"microvm-agent: fatal: SIGSEGV (a memory fault); powering off without the orderly part\n",
        libc::SIGBUS => b"microvm-agent: fatal: SIGBUS (a memory fault); powering off without the orderly part\n",
        libc::SIGILL => b"microvm-agent: fatal: SIGILL (an illegal instruction, an abort); powering off without the orderly part\n",
        libc::SIGFPE => b"microvm-agent: fatal: SIGFPE (an arithmetic fault); powering off without the orderly part\n",
        _ => b"microvm-agent: fatal signal; powering off without the orderly part\n",
    }
}

/// A signal some other process sent (`kill -SEGV 1`) is not a fault of ours: the
/// kernel never delivered those to PID 1 before a handler existed, and still must not.
pub fn sent_by_another(code: libc::c_int, sender: libc::pid_t, me: libc::pid_t) -> bool {
    code <= 0 && sender != me
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler; every call
    // below is async-signal-safe (raw syscalls, no allocation, no locks), and the
    // chained handler is Rust's own, installed for exactly this signal.
    unsafe {
        let me = libc::getpid();
        if !info.is_null() && sent_by_another((*info).si_code, (*info).si_pid(), me) {
            return;
        }
        if let Some(i) = match sig {
            libc::SIGSEGV => Some(0),
            libc::SIGBUS => Some(1),
            _ => None,
        } {
            let previous = PREVIOUS[i].load(Ordering::SeqCst);
            if previous != 0 && !ENTERED.load(Ordering::SeqCst) {
                // A stack overflow: it prints which thread and aborts (back here, as
                // SIGABRT). Any other fault: it returns.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(previous);
                f(sig, info, ctx);
            }
        }
        if ENTERED.swap(true, Ordering::SeqCst) {
            // A fault in this very path: the power goes now.
            libc::reboot(libc::RB_POWER_OFF);
            halt();
        }
        // The console may be a pipe nobody reads: a line that does not fit is lost,
        // never waited for.
        let flags = libc::fcntl(2, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(2, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        say(describe(sig));
        libc::kill(-1, libc::SIGKILL);
        if sync_within(SYNC_DEADLINE_MS) {
            say(b"microvm-agent: fatal: storage synced; powering off\n");
        } else {
            say(b"microvm-agent: fatal: sync did not finish in time; powering off anyway\n");
        }
        libc::reboot(libc::RB_POWER_OFF);
        halt();
    }
}

fn say(line: &[u8]) {
    // SAFETY: writes a borrowed buffer to a descriptor; no allocation.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
    }
}

/// sync(2) in a child made with a raw clone (libc's fork takes locks a dying thread
/// may hold), waited for at most `deadline_ms`. The agent's reaper may reap the child
/// first; a vanished child is a finished one.
fn sync_within(deadline_ms: u64) -> bool {
    // SAFETY: a raw clone with only SIGCHLD is fork without libc's bookkeeping; the
    // child makes raw syscalls only and leaves with exit_group.
    unsafe {
        let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
        if pid == 0 {
            libc::syscall(libc::SYS_sync);
            libc::syscall(libc::SYS_exit_group, 0);
        }
        if pid < 0 {
            return false;
        }
        let pid = pid as libc::pid_t;
        let tick = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        for _ in 0..deadline_ms / 20 {
            let mut status = 0;
            match libc::waitpid(pid, &mut status, libc::WNOHANG) {
                0 => {}
                _ => return true,
            }
            libc::nanosleep(&tick, std::ptr::null_mut());
        }
        false
    }
}

fn halt() -> ! {
    // PID 1 must not return from here: the signal would come back, and exiting is a
    // kernel panic.
    loop {
        // SAFETY: pause(2) takes no arguments.
        unsafe {
            libc::pause();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_from_other_processes_are_not_faults() {
        assert!(sent_by_another(libc::SI_USER, 77, 1));
        assert!(sent_by_another(libc::SI_TKILL, 77, 1));
        // abort() and raise() in this process: SI_TKILL from ourselves.
        assert!(!sent_by_another(libc::SI_TKILL, 1, 1));
        // A real fault: a positive code from the kernel.
        assert!(!sent_by_another(1, 0, 1)); // SEGV_MAPERR
    }

    #[test]
    fn every_fatal_signal_has_its_line() {
        for sig in FATAL {
            let line = describe(sig);
            assert!(line.ends_with(b"\n"));
            assert!(line.starts_with(b"microvm-agent: fatal: SIG"), "{sig}");
        }
    }
}
