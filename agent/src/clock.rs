//! Time behind a trait where it decides behaviour (log timestamps and batch ages), so
//! tests can step it like a restored snapshot does: the wall clock may jump either
//! way, the monotonic one only goes forward.

use std::sync::OnceLock;
use std::time::Instant;

pub trait Clock: Send + Sync {
    /// Wall time: milliseconds since the Unix epoch (0 if the clock is before it).
    fn unix_ms(&self) -> i64;
    /// Monotonic milliseconds since an arbitrary start; never goes backwards.
    fn mono_ms(&self) -> u64;
}

/// The machine's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
}

/// Wall time in whole seconds since the Unix epoch (0 before it).
pub fn unix_secs() -> i64 {
    SystemClock.unix_ms() / 1000
}
