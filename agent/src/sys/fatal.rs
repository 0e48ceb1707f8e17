//! The faults no panic hook sees: a stack overflow, an `abort` (a panic while
//! panicking, a panic in a destructor during unwinding, an allocation failure), a
//! memory fault. Each ends the process with a signal, and a PID 1 killed by a signal
//! is a kernel panic: the host sees a wedged or vanished VM, never why, and nothing is
//! synced. As PID 1 the agent catches those signals and does, within bounds and with
//! async-signal-safe calls only, the part of power-off that still makes sense: say
//! why on the console, stop every other process, sync storage (in a child on a stack
//! of its own, so wedged storage cannot keep the power on), power off.
//!
//! The orderly part (the application told, logs flushed) is out of reach here: the
//! runtime's state cannot be trusted once memory or a stack is gone.
//!
//! Rust's own stack-overflow handler is replaced, not chained: it writes with a
//! blocking write (a stuck console would hold PID 1 there) and aborts, which would
//! stack a second signal frame on the small alternate stack. The handler runs on that
//! alternate stack (Rust gives one to every thread it starts), one frame deep.

use microvm_protocol::status::Role;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// How long the sync child may take before the power goes off anyway.
const SYNC_DEADLINE_MS: u64 = 5_000;
/// How long one console line may wait for room in a full console.
const LINE_PATIENCE_MS: u64 = 1_000;

const FATAL: [libc::c_int; 7] = [
    libc::SIGABRT,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// The thread handling a fault (0: none yet).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// Set for a namespace's PID 1, where power-off may be refused (no CAP_SYS_BOOT).
static IN_NAMESPACE: AtomicBool = AtomicBool::new(false);
/// Test fault `WEDGED_SYNC`: the sync child hangs.
static WEDGED_SYNC: AtomicBool = AtomicBool::new(false);

const SYNC_STACK_SIZE: usize = 64 * 1024;

/// The sync child's stack: it shares our memory (CLONE_VM, so no page tables are
/// copied when memory is what ran out), so it cannot use ours. Aligned as both
/// x86_64 and aarch64 want a stack pointer at a call (16 bytes).
#[repr(C, align(16))]
struct SyncStack(std::cell::UnsafeCell<[u8; SYNC_STACK_SIZE]>);
// SAFETY: only the one sync child, started at most once (by the owning thread), ever
// touches it.
unsafe impl Sync for SyncStack {}
static SYNC_STACK: SyncStack = SyncStack(std::cell::UnsafeCell::new([0; SYNC_STACK_SIZE]));

static INSTALL_FAILURES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// What [`install`] could not do, for the boot report (it runs before the log).
pub fn install_failures() -> Vec<String> {
    INSTALL_FAILURES
        .lock()
        .map(|f| f.clone())
        .unwrap_or_default()
}

/// Catch the fatal signals; only for PID 1 (any other process dies of them as usual,
/// and its parent sees the signal). Failures to install go into the boot report.
pub fn install(role: Role) {
    IN_NAMESPACE.store(role == Role::Namespace, Ordering::SeqCst);
    WEDGED_SYNC.store(crate::faults::active("WEDGED_SYNC"), Ordering::SeqCst);
    let mut failures = Vec::new();
    for sig in FATAL {
        // SAFETY: a zeroed sigaction is a valid "no handler, empty mask"; the handler
        // is an `extern "C"` function that uses only async-signal-safe calls.
        let rc = unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_fatal as *const () as usize;
            // On the alternate stack (the only way to run after a stack overflow);
            // NODEFER so a fault inside the handler reaches it again (and powers off
            // at once) instead of killing PID 1 for a blocked signal.
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            // Nothing else may land on the small stack while we work (a SIGCHLD
            // from the sync child would), except the fatal signals.
            libc::sigfillset(&mut new.sa_mask);
            for f in FATAL {
                libc::sigdelset(&mut new.sa_mask, f);
            }
            libc::sigaction(sig, &new, std::ptr::null_mut())
        };
        if rc != 0 {
            failures.push(format!(
                "fatal-signal handler for signal {sig}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Ok(mut f) = INSTALL_FAILURES.lock() {
        *f = failures;
    }
}

/// The console line for `sig`.
pub fn describe(sig: libc::c_int) -> &'static [u8] {
    match sig {
        libc::SIGABRT => b"microvm-agent: fatal: SIGABRT (an abort: a panic while panicking, memory exhausted); powering off without the orderly part\n",
        libc::SIGSEGV => b"microvm-agent: fatal: SIGSEGV (a stack overflow or a memory fault); powering off without the orderly part\n",
        libc::SIGBUS => b"microvm-agent: fatal: SIGBUS (a memory fault); powering off without the orderly part\n",
        libc::SIGILL => b"microvm-agent: fatal: SIGILL (an illegal instruction, an abort); powering off without the orderly part\n",
        libc::SIGFPE => b"microvm-agent: fatal: SIGFPE (an arithmetic fault); powering off without the orderly part\n",
        libc::SIGTRAP => b"microvm-agent: fatal: SIGTRAP (a trap); powering off without the orderly part\n",
        libc::SIGSYS => b"microvm-agent: fatal: SIGSYS (a bad system call); powering off without the orderly part\n",
        _ => b"microvm-agent: fatal signal; powering off without the orderly part\n",
    }
}

/// A fault of ours: raised by the kernel (a positive code), or by this process's own
/// abort/raise (`SI_TKILL` from our pid; the kernel refuses `SI_TKILL` forged by
/// another process). Anything else (`kill -SEGV 1`, a queued signal with a made-up
/// sender) is ignored, as the kernel ignored such signals for PID 1 before.
pub fn ours(code: libc::c_int, sender: libc::pid_t, me: libc::pid_t) -> bool {
    code > 0 || (code == libc::SI_TKILL && sender == me)
}

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler; every call
    // below is async-signal-safe (raw syscalls, no allocation, no locks).
    unsafe {
        // First of all: the console must never block us (a pipe nobody reads, a
        // stuck serial port).
        let flags = libc::fcntl(2, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(2, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        if !info.is_null() && !ours((*info).si_code, (*info).si_pid(), libc::getpid()) {
            return;
        }
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        match OWNER.compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {}
            // A fault in this very path: the power goes now.
            Err(owner) if owner == tid => power_off(sig),
            // Another thread is already on it: let it finish.
            Err(_) => halt(),
        }
        say(describe(sig));
        libc::kill(-1, libc::SIGKILL);
        match sync_within(SYNC_DEADLINE_MS) {
            Synced::Done => say(b"microvm-agent: fatal: storage synced\n"),
            Synced::Late => {
                say(b"microvm-agent: fatal: sync did not finish in time; powering off anyway\n")
            }
            Synced::NoChild => {
                say(b"microvm-agent: fatal: no process for the sync; powering off unsynced\n")
            }
        }
        say(b"microvm-agent: fatal: powering off\n");
        power_off(sig)
    }
}

/// Power off; where that is refused (a namespace without CAP_SYS_BOOT), leave with the
/// signal's status, since hanging would be worse; a guest that cannot power off halts.
fn power_off(sig: libc::c_int) -> ! {
    // SAFETY: reboot(2) and exit_group(2) take plain integers.
    unsafe {
        libc::reboot(libc::RB_POWER_OFF);
        if IN_NAMESPACE.load(Ordering::SeqCst) {
            libc::syscall(libc::SYS_exit_group, 128 + sig);
        }
        libc::reboot(libc::RB_HALT_SYSTEM);
    }
    halt()
}

/// Write `line`, waiting at most [`LINE_PATIENCE_MS`] for room in a full console.
fn say(line: &[u8]) {
    let mut rest = line;
    let mut waited = 0;
    while !rest.is_empty() {
        // SAFETY: writes a borrowed buffer to a descriptor; no allocation.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
            continue;
        }
        if waited >= LINE_PATIENCE_MS {
            return;
        }
        nap_ms(10);
        waited += 10;
    }
}

fn nap_ms(ms: u64) {
    let t = libc::timespec {
        tv_sec: 0,
        tv_nsec: (ms * 1_000_000) as libc::c_long,
    };
    // SAFETY: nanosleep reads a timespec we own.
    unsafe {
        libc::nanosleep(&t, std::ptr::null_mut());
    }
}

enum Synced {
    Done,
    Late,
    NoChild,
}

extern "C" fn sync_child(_: *mut libc::c_void) -> libc::c_int {
    if WEDGED_SYNC.load(Ordering::SeqCst) {
        halt();
    }
    // SAFETY: raw syscalls only; the child leaves with exit_group... of its own: a
    // CLONE_VM child without CLONE_THREAD is its own process.
    unsafe {
        libc::syscall(libc::SYS_sync);
        libc::syscall(libc::SYS_exit_group, 0);
    }
    0
}

/// sync(2) in a child sharing our memory on a stack of its own (libc's fork takes
/// locks a dying thread may hold, and copying page tables fails when memory ran out),
/// waited for at most `deadline_ms`. The agent's reaper may reap the child first; a
/// vanished child is a finished one.
fn sync_within(deadline_ms: u64) -> Synced {
    // SAFETY: the child runs `sync_child` on SYNC_STACK (used by nothing else; the
    // stack grows down from its end), makes raw syscalls only and exits.
    let pid = unsafe {
        let top = SYNC_STACK.0.get().cast::<u8>().add(SYNC_STACK_SIZE);
        libc::clone(
            sync_child,
            top.cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    if pid <= 0 {
        return Synced::NoChild;
    }
    for _ in 0..deadline_ms / 20 {
        let mut status = 0;
        // SAFETY: waitpid writes the status we own.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != 0 {
            return Synced::Done;
        }
        nap_ms(20);
    }
    Synced::Late
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
    fn only_our_own_faults_count() {
        // kill -SEGV 1 from another process, and a queued signal naming us falsely.
        assert!(!ours(libc::SI_USER, 77, 1));
        assert!(!ours(libc::SI_QUEUE, 1, 1));
        assert!(!ours(libc::SI_TKILL, 77, 1));
        // abort() and raise() in this process: SI_TKILL from ourselves.
        assert!(ours(libc::SI_TKILL, 1, 1));
        // A real fault: a positive code from the kernel (SEGV_MAPERR).
        assert!(ours(1, 0, 1));
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
