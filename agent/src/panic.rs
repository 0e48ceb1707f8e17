//! What a panic does. PID 1 must not die with it (the kernel would panic, and the host
//! would learn nothing), so a panic anywhere is a reason to power off in order:
//!
//! - the hook writes the panic to the console past its queue;
//! - under another init (not PID 1) it exits 101, which the status of a process says;
//! - as PID 1 it hands the reason to the agent ([`panicked`]), which terminates the
//!   way `/terminate` does (app told, logs flushed, storage synced, the reason in the
//!   status and the console), and starts a watchdog that powers off after
//!   [`PANIC_GRACE`] whatever the rest of the agent still manages.
//!
//! A panic in a tokio task ends only that task (tokio catches it), so the agent is
//! there to do the orderly part; a panic that unwinds out of the runtime or out of
//! `main` is caught there and goes straight to power-off.

use crate::sys::power;
use microvm_protocol::status::Role;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Notify;

/// How long the orderly part may take before the watchdog powers off.
pub const PANIC_GRACE: Duration = Duration::from_secs(30);

static REASON: OnceLock<String> = OnceLock::new();
static PANICKED: Notify = Notify::const_new();

/// The state reason a panic leaves: `Agent.Panic: <message> at <file:line>`.
pub fn reason(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    match info.location() {
        Some(l) => format!("Agent.Panic: {message} at {}:{}", l.file(), l.line()),
        None => format!("Agent.Panic: {message}"),
    }
}

/// First thing in `main`: from here on, whatever fails ends in a logged power-off.
pub fn install(role: Role) {
    std::panic::set_hook(Box::new(move |info| {
        crate::console::critical(&format!("microvm-agent panicked: {info}"));
        if !role.is_pid1() {
            // Under another init a panic is a failure, and says so in the exit status.
            std::process::exit(101);
        }
        let reason = reason(info);
        if REASON.set(reason.clone()).is_err() {
            // A later panic (perhaps of the orderly part itself): the first one's
            // watchdog is already counting.
            return;
        }
        PANICKED.notify_one();
        let watchdog = std::thread::Builder::new()
            .name("panic-watchdog".into())
            .spawn(move || {
                std::thread::sleep(PANIC_GRACE);
                power::power_off(role, &reason)
            });
        if watchdog.is_err() {
            power::power_off(role, REASON.get().map_or("Agent.Panic", |r| r.as_str()))
        }
    }));
}

/// Wait for the first panic; its state reason.
pub async fn panicked() -> String {
    loop {
        if let Some(r) = REASON.get() {
            return r.clone();
        }
        PANICKED.notified().await;
    }
}

/// The reason of a panic that unwound, for the power-off that follows it.
pub fn unwound() -> String {
    REASON
        .get()
        .cloned()
        .unwrap_or_else(|| "Agent.Panic".into())
}
