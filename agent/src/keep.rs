//! One kept HTTP/1.1 connection to the application: the next request to the same port
//! within [`KEEP_IDLE`] goes over it, and past that it is closed.
//!
//! Closed, not merely left unused: a connection held open ties up a worker of a server
//! that serves one connection per thread or process (Python's `http.server`, Apache
//! prefork), and servers close idle connections on timers of their own (gunicorn after
//! 2 s, Node and uvicorn after 5 s), where a request that crosses the close on the
//! wire fails. One second is below all of those.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How long a kept connection waits for its next request before it is closed.
pub const KEEP_IDLE: Duration = Duration::from_secs(1);

/// At most one connection, to one port; taking it for another port closes it, so a
/// slot never holds more than one descriptor.
pub struct Slot<S> {
    inner: Arc<Mutex<Inner<S>>>,
}

struct Inner<S> {
    kept: Option<(u16, S)>,
    /// When the kept connection is closed; each keep moves it.
    deadline: Instant,
    /// A timer task is watching `deadline`: one per slot, not one per keep (ingress
    /// keeps a connection after every answer).
    timer: bool,
}

impl<S> Default for Slot<S> {
    fn default() -> Self {
        Slot {
            inner: Arc::new(Mutex::new(Inner {
                kept: None,
                deadline: Instant::now(),
                timer: false,
            })),
        }
    }
}

fn lock<S>(m: &Mutex<Inner<S>>) -> MutexGuard<'_, Inner<S>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Send + 'static> Slot<S> {
    /// The kept connection if it goes to `port`; one to another port is closed.
    pub fn take(&self, port: u16) -> Option<S> {
        match lock(&self.inner).kept.take() {
            Some((p, s)) if p == port => Some(s),
            _ => None,
        }
    }

    /// Keep `s` for the next request to `port`, for at most [`KEEP_IDLE`].
    pub fn keep(&self, port: u16, s: S) {
        let start_timer = {
            let mut g = lock(&self.inner);
            g.kept = Some((port, s));
            g.deadline = Instant::now() + KEEP_IDLE;
            !std::mem::replace(&mut g.timer, true)
        };
        if start_timer {
            // Weak: a slot whose owner is gone (the client hung up) closes at once.
            tokio::spawn(expire(Arc::downgrade(&self.inner)));
        }
    }
}

/// Close the kept connection at the slot's deadline, following it as keeps move it.
async fn expire<S>(slot: Weak<Mutex<Inner<S>>>) {
    let mut at = Instant::now() + KEEP_IDLE;
    loop {
        tokio::time::sleep_until(at).await;
        let Some(inner) = slot.upgrade() else { return };
        let mut g = lock(&inner);
        if Instant::now() >= g.deadline {
            let expired = g.kept.take();
            g.timer = false;
            drop(g);
            drop(expired);
            return;
        }
        at = g.deadline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn kept_for_its_port_within_the_idle_time_only() {
        let s = Slot::default();
        s.keep(1, "a");
        assert_eq!(s.take(1), Some("a"));
        assert_eq!(s.take(1), None, "taken once");
        s.keep(1, "b");
        assert_eq!(s.take(2), None, "another port");
        assert_eq!(s.take(1), None, "closed by the other port's take");
        // An older keep's timer does not clear a newer keep.
        s.keep(1, "c");
        tokio::time::sleep(KEEP_IDLE / 2).await;
        assert_eq!(s.take(1), Some("c"));
        s.keep(1, "d");
        tokio::time::sleep(KEEP_IDLE * 3 / 4).await;
        assert_eq!(
            s.take(1),
            Some("d"),
            "the first timer fired for an older keep"
        );
        s.keep(1, "e");
        tokio::time::sleep(KEEP_IDLE + Duration::from_millis(50)).await;
        assert_eq!(s.take(1), None, "closed after the idle time");
    }
}
