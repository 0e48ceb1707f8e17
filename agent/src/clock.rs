//! The wall clock, behind a trait where it decides behaviour (log timestamps and
//! batch ages), so tests can step it like a restored snapshot does.

pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch (0 if the clock is before it).
    fn unix_ms(&self) -> i64;
}

/// The machine's clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}
