//! Idle tracking: what counts as activity, and how long the guest has been idle.
//!
//! Activity is ingress traffic (bytes either way), ingress requests in flight, and
//! leases the application holds. Control-channel traffic and hook calls are not
//! activity. A suspended period is not idle time. The arithmetic is a pure struct
//! driven by an injected `now`, so tests need no clock.

use crate::events::EventType;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The platform's lower bound for `maxIdleDurationSeconds`.
pub const MIN_IDLE: Duration = Duration::from_secs(microvm_protocol::limits::MIN_IDLE_SECONDS);
/// Test-only: lowers [`MIN_IDLE`] (seconds) so suites can use short idle policies.
/// The namespace suites set it in the agent's environment; a guest gets the run
/// envelope's `testMinIdleSeconds` instead, which wins (the kernel command line is
/// frozen in a snapshot).
pub const TEST_MIN_IDLE_ENV: &str = "MICROVM_AGENT_TEST_MIN_IDLE_SECONDS";

/// The smallest idle duration accepted here.
pub fn min_idle() -> Duration {
    std::env::var(TEST_MIN_IDLE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(MIN_IDLE)
}

#[derive(Debug, Clone)]
pub struct IdleClock {
    last_activity: Instant,
    /// Requests in flight plus leases held.
    busy: u32,
    paused_at: Option<Instant>,
    /// Suspended time since the last activity, which does not count as idle.
    paused_total: Duration,
}

impl IdleClock {
    pub fn new(now: Instant) -> Self {
        IdleClock {
            last_activity: now,
            busy: 0,
            paused_at: None,
            paused_total: Duration::ZERO,
        }
    }

    pub fn touch(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
        self.paused_total = Duration::ZERO;
    }

    pub fn begin(&mut self, now: Instant) {
        self.busy += 1;
        self.touch(now);
    }

    pub fn end(&mut self, now: Instant) {
        self.busy = self.busy.saturating_sub(1);
        self.touch(now);
    }

    pub fn suspend(&mut self, now: Instant) {
        self.paused_at.get_or_insert(now);
    }

    pub fn resume(&mut self, now: Instant) {
        if let Some(p) = self.paused_at.take() {
            if p >= self.last_activity {
                self.paused_total += now.saturating_duration_since(p);
            } else {
                self.paused_total += now.saturating_duration_since(self.last_activity);
            }
        }
    }

    pub fn busy(&self) -> bool {
        self.busy > 0
    }

    /// How long the guest has been idle at `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        if self.busy > 0 {
            return Duration::ZERO;
        }
        let paused_now = self
            .paused_at
            .map(|p| now.saturating_duration_since(p.max(self.last_activity)))
            .unwrap_or_default();
        now.saturating_duration_since(self.last_activity)
            .saturating_sub(self.paused_total + paused_now)
    }
}

/// What the agent last told the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Reported {
    Active,
    Idle,
}

/// The report to make, if any, given what was last reported.
pub fn transition(last: Reported, idle_for: Duration, max_idle: Duration) -> Option<Reported> {
    match (last, idle_for >= max_idle) {
        (Reported::Active, true) => Some(Reported::Idle),
        (Reported::Idle, false) => Some(Reported::Active),
        _ => None,
    }
}

/// Shared tracker: the clock plus a wake-up for the reporter.
///
/// Traffic is counted on every read and write of every ingress connection, so that
/// path takes no lock, reads no clock and wakes nobody: it raises a flag, and whoever
/// next looks at the clock (the reporter, at least every [`report_tick`]; a status
/// read) folds the flag in as activity at that moment. Activity is thus seen up to
/// one tick late, never early: a guest is reported idle at most a tick after it
/// really is. The one wake-up left is the one that matters, from idle to active.
pub struct Activity {
    clock: Mutex<IdleClock>,
    pub changed: Notify,
    bytes: AtomicU64,
    /// Traffic since the clock last looked.
    touched: AtomicBool,
    /// The host was told `idle`: the next traffic wakes the reporter.
    idle_reported: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            clock: Mutex::new(IdleClock::new(Instant::now())),
            changed: Notify::new(),
            bytes: AtomicU64::new(0),
            touched: AtomicBool::new(false),
            idle_reported: AtomicBool::new(false),
        })
    }

    /// The clock, with traffic seen since the last look folded in as of `now`.
    fn lock_at(&self, now: Instant) -> MutexGuard<'_, IdleClock> {
        let mut g = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        if self.touched.swap(false, Ordering::SeqCst) {
            g.touch(now);
        }
        g
    }

    pub fn traffic(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        // Written only when it flips: a busy stream does not bounce the cache line.
        if !self.touched.load(Ordering::SeqCst) {
            self.touched.store(true, Ordering::SeqCst);
        }
        // Sequentially consistent with the reporter's store-then-fold: either it
        // folds this traffic in, or this sees it idle and wakes it.
        if self.idle_reported.load(Ordering::SeqCst)
            && self.idle_reported.swap(false, Ordering::SeqCst)
        {
            self.changed.notify_one();
        }
    }

    /// A request or lease; activity lasts until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        let now = Instant::now();
        self.lock_at(now).begin(now);
        self.changed.notify_one();
        Busy(self.clone())
    }

    pub fn suspend(&self) {
        let now = Instant::now();
        self.lock_at(now).suspend(now);
    }

    pub fn resume(&self) {
        let now = Instant::now();
        self.lock_at(now).resume(now);
        self.changed.notify_one();
    }

    pub fn idle_for(&self) -> Duration {
        let now = Instant::now();
        self.lock_at(now).idle_for(now)
    }

    /// Ingress bytes either way since boot.
    pub fn ingress_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn is_busy(&self) -> bool {
        self.lock_at(Instant::now()).busy()
    }
}

/// How often the reporter looks at the clock while the guest is active: how late
/// traffic may be seen, a twentieth of the idle policy, within 50 ms and 1 s.
pub fn report_tick(max_idle: Duration) -> Duration {
    (max_idle / 20).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Report `idle` and `active` to the host per the run's idle policy, for good.
pub async fn report(
    activity: Arc<Activity>,
    events: Arc<crate::events::Events>,
    max_idle: Duration,
) {
    let mut last = Reported::Active;
    let tick = report_tick(max_idle);
    loop {
        let changed = activity.changed.notified();
        let idle = activity.idle_for();
        if let Some(now) = transition(last, idle, max_idle) {
            let fields = match now {
                Reported::Idle => serde_json::json!({"idleForMs": idle.as_millis() as u64,
                                                     "maxIdleMs": max_idle.as_millis() as u64}),
                Reported::Active => serde_json::json!({}),
            };
            let kind = match now {
                Reported::Idle => EventType::Idle,
                Reported::Active => EventType::Active,
            };
            events.emit(kind, fields);
            last = now;
            activity
                .idle_reported
                .store(now == Reported::Idle, Ordering::SeqCst);
            // Traffic between the look above and the flag (folded in by anyone who
            // looked meanwhile, or still raised): look again rather than sleep on it.
            if now == Reported::Idle && activity.idle_for() < max_idle {
                continue;
            }
        }
        // While active, look again within a tick (traffic raises only a flag); once
        // idle, sleep until traffic, a request or a lease wakes us.
        let wait = match last {
            Reported::Active => max_idle
                .saturating_sub(idle)
                .clamp(Duration::from_millis(10), tick),
            Reported::Idle => Duration::from_secs(3600),
        };
        let _ = tokio::time::timeout(wait, changed).await;
    }
}

pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.lock_at(now).end(now);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn quiet_time_is_idle_time() {
        let t0 = Instant::now();
        let c = IdleClock::new(t0);
        assert_eq!(c.idle_for(t0), s(0));
        assert_eq!(c.idle_for(t0 + s(59)), s(59));
    }

    #[test]
    fn boundaries_of_the_transition() {
        let max = s(60);
        assert_eq!(transition(Reported::Active, s(59), max), None);
        assert_eq!(
            transition(Reported::Active, s(60), max),
            Some(Reported::Idle)
        );
        assert_eq!(transition(Reported::Idle, s(61), max), None);
        assert_eq!(
            transition(Reported::Idle, s(0), max),
            Some(Reported::Active)
        );
        assert_eq!(transition(Reported::Active, s(0), max), None);
    }

    #[test]
    fn traffic_resets_the_idle_time() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(t0);
        c.touch(t0 + s(50));
        assert_eq!(c.idle_for(t0 + s(70)), s(20));
    }

    #[test]
    fn overlapping_leases_keep_it_busy_until_the_last_ends() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(t0);
        c.begin(t0 + s(1));
        c.begin(t0 + s(2));
        c.end(t0 + s(100));
        assert_eq!(c.idle_for(t0 + s(500)), s(0), "one lease still held");
        c.end(t0 + s(600));
        assert_eq!(c.idle_for(t0 + s(660)), s(60));
    }

    #[test]
    fn a_long_lived_quiet_connection_is_idle() {
        // An open connection moves no bytes: only traffic counts, not its existence.
        let t0 = Instant::now();
        let mut c = IdleClock::new(t0);
        c.touch(t0 + s(10)); // the connection's last bytes
        assert_eq!(c.idle_for(t0 + s(3610)), s(3600));
    }

    #[test]
    fn a_suspended_period_is_not_idle_time() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(t0);
        c.suspend(t0 + s(30));
        assert_eq!(c.idle_for(t0 + s(1000)), s(30), "frozen while suspended");
        c.resume(t0 + s(1000));
        assert_eq!(c.idle_for(t0 + s(1010)), s(40));
        // Activity after the resume starts afresh.
        c.touch(t0 + s(1020));
        assert_eq!(c.idle_for(t0 + s(1025)), s(5));
        // Two suspensions add up.
        c.suspend(t0 + s(1030));
        c.resume(t0 + s(1100));
        c.suspend(t0 + s(1110));
        c.resume(t0 + s(1200));
        assert_eq!(c.idle_for(t0 + s(1200)), s(20));
    }

    #[test]
    fn traffic_is_seen_at_the_next_look_and_wakes_only_an_idle_reporter() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(a.idle_for() >= Duration::from_millis(30));
        a.traffic(5);
        assert!(
            a.idle_for() < Duration::from_millis(30),
            "folded in at the look"
        );
        assert_eq!(a.ingress_bytes(), 5);
        // Active: no wake-up stored for the reporter.
        let woke = futures_now(a.changed.notified());
        assert!(!woke, "traffic while active wakes nobody");
        a.idle_reported.store(true, Ordering::SeqCst);
        a.traffic(1);
        assert!(
            futures_now(a.changed.notified()),
            "idle to active wakes the reporter"
        );
        assert!(!a.idle_reported.load(Ordering::SeqCst));
        a.traffic(1);
        assert!(!futures_now(a.changed.notified()), "once");
    }

    /// Whether a Notified future is ready at once (a stored permit).
    fn futures_now(n: tokio::sync::futures::Notified<'_>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(1), n)
                .await
                .is_ok()
        })
    }

    #[test]
    fn the_report_tick_bounds_lateness() {
        assert_eq!(report_tick(s(60)), s(1));
        assert_eq!(report_tick(s(10)), Duration::from_millis(500));
        assert_eq!(
            report_tick(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn busy_while_suspended_stays_busy() {
        let t0 = Instant::now();
        let mut c = IdleClock::new(t0);
        c.begin(t0);
        c.suspend(t0 + s(5));
        c.resume(t0 + s(50));
        assert_eq!(c.idle_for(t0 + s(60)), s(0));
    }
}
