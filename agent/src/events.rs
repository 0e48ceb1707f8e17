//! Events for the host, numbered so that none is lost across a host reconnect.
//!
//! Wire form (`microvm_protocol::events`): the host asks
//! `GET /v1/events?after=N&waitSeconds=W` on the control channel and gets every event
//! with `seq > N`, waiting up to W seconds for one to exist. It remembers the highest
//! `seq` it has seen and asks with it again: a reconnect replays what it missed and
//! nothing it already had. The agent keeps the last
//! [`EVENTS_RETAINED`](microvm_protocol::limits::EVENTS_RETAINED) events; an `after`
//! older than that answers with `"gap": true` and the oldest events still kept.

pub use microvm_protocol::events::EventType;
use microvm_protocol::events::{Event, EventsPage};
use microvm_protocol::limits::{EVENTS_MAX_WAIT_SECONDS, EVENTS_RETAINED};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub const MAX_WAIT: Duration = Duration::from_secs(EVENTS_MAX_WAIT_SECONDS);

pub struct Events {
    /// The retained events and the next sequence number, under one lock: numbering
    /// and appending are one step, so the ring is always in sequence order (a host
    /// reading `lastSeq` from its end can never skip an event).
    ring: Mutex<Ring>,
    added: Notify,
}

struct Ring {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// Events after `after` from a ring in sequence order, and whether some were lost.
pub fn select(ring: &VecDeque<Event>, after: u64) -> (Vec<Event>, bool) {
    let gap = ring
        .front()
        .is_some_and(|o| after.saturating_add(1) < o.seq);
    let events = ring.iter().filter(|e| e.seq > after).cloned().collect();
    (events, gap)
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        Events {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                next_seq: 1,
            }),
            added: Notify::new(),
        }
    }

    /// Record an event of `kind` with `fields` (a JSON object); returns its number.
    pub fn emit(&self, kind: EventType, fields: Value) -> u64 {
        let fields = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let mut e = Event {
            seq: 0,
            kind,
            uptime_ms: uptime_ms(),
            unix_time_ms: unix_ms(),
            fields,
        };
        {
            let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            e.seq = r.next_seq;
            r.next_seq += 1;
            r.events.push_back(e.clone());
            while r.events.len() > EVENTS_RETAINED {
                r.events.pop_front();
            }
        }
        tracing::info!(event = %serde_json::to_string(&e).unwrap_or_default(), "event");
        self.added.notify_waiters();
        e.seq
    }

    /// Events after `after`, waiting up to `wait` for at least one.
    pub async fn since(&self, after: u64, wait: Duration) -> EventsPage {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let added = self.added.notified();
            let (events, gap) = {
                let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
                select(&r.events, after)
            };
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let last_seq = events.last().map(|e| e.seq).unwrap_or(after);
                return EventsPage {
                    events,
                    last_seq,
                    gap,
                };
            }
            let _ = tokio::time::timeout_at(deadline, added).await;
        }
    }
}

fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `after=N&waitSeconds=W` from a query string.
pub fn parse_query(q: Option<&str>) -> Result<(u64, Duration), String> {
    let (mut after, mut wait) = (0, Duration::ZERO);
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| format!("after: not a number: {v:?}"))?
            }
            "waitSeconds" => {
                wait = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("waitSeconds: not a number: {v:?}"))?,
                )
            }
            _ => return Err(format!("unknown query parameter {k:?}")),
        }
    }
    Ok((after, wait.min(MAX_WAIT)))
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seqs(p: &EventsPage) -> Vec<u64> {
        p.events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replay_after_a_reconnect_loses_nothing_and_repeats_nothing() {
        let ev = Events::new();
        for i in 0..5 {
            ev.emit(EventType::Idle, json!({"i": i}));
        }
        let first = ev.since(0, Duration::ZERO).await;
        assert_eq!(seqs(&first), [1, 2, 3, 4, 5]);
        assert_eq!(first.last_seq, 5);
        assert_eq!(first.events[2].fields["i"], 2);
        // The host saw up to 3, then lost its connection.
        let again = ev.since(3, Duration::ZERO).await;
        assert_eq!(seqs(&again), [4, 5]);
        assert!(!again.gap);
        let none = ev.since(5, Duration::ZERO).await;
        assert!(none.events.is_empty());
        assert_eq!(none.last_seq, 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_long_poll_wakes_on_the_next_event() {
        let ev = std::sync::Arc::new(Events::new());
        let e2 = ev.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            e2.emit(EventType::Active, json!({}));
        });
        let t0 = std::time::Instant::now();
        let got = ev.since(0, Duration::from_secs(5)).await;
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(got.events[0].kind, EventType::Active);
        let wire = serde_json::to_value(&got).unwrap();
        assert_eq!(wire["events"][0]["type"], "active");
        assert_eq!(wire["lastSeq"], 1);
    }

    #[test]
    fn a_gap_is_reported_when_history_was_dropped() {
        let ev = Events::new();
        for _ in 0..EVENTS_RETAINED + 3 {
            ev.emit(EventType::Active, json!({}));
        }
        let r = ev.ring.lock().unwrap();
        assert_eq!(r.events.front().map(|e| e.seq), Some(4));
        assert!(!select(&r.events, 3).1);
        assert!(select(&r.events, 2).1);
        assert_eq!(select(&r.events, 2).0.len(), EVENTS_RETAINED);
        // The largest `after` a host can send neither overflows nor finds anything.
        assert_eq!(select(&r.events, u64::MAX), (Vec::new(), false));
    }

    #[test]
    fn query() {
        assert_eq!(parse_query(None), Ok((0, Duration::ZERO)));
        assert_eq!(
            parse_query(Some("after=7&waitSeconds=5")),
            Ok((7, Duration::from_secs(5)))
        );
        assert_eq!(parse_query(Some("waitSeconds=999")).unwrap().1, MAX_WAIT);
        assert_eq!(
            parse_query(Some("after=18446744073709551615")).unwrap().0,
            u64::MAX
        );
        assert!(parse_query(Some("after=x")).is_err());
        assert!(parse_query(Some("since=1")).is_err());
    }
}
