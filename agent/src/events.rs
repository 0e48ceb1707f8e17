//! Events for the host, numbered so that none is lost across a host reconnect.
//!
//! Wire form: the host asks `GET /v1/events?after=N&waitSeconds=W` on the control
//! channel and gets every event with `seq > N`, waiting up to W seconds (at most 60)
//! for one to exist. It remembers the highest `seq` it has seen and asks with it
//! again: a reconnect replays what it missed and nothing it already had. The agent
//! keeps the last [`RETAINED`] events; an `after` older than that answers with
//! `"gap": true` and the oldest events still kept.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub const RETAINED: usize = 4096;
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Events {
    /// The retained events and the next sequence number, under one lock: numbering
    /// and appending are one step, so the ring is always in sequence order (a host
    /// reading `lastSeq` from its end can never skip an event).
    ring: Mutex<Ring>,
    added: Notify,
}

struct Ring {
    events: VecDeque<Value>,
    next_seq: u64,
}

/// Events after `after` from a ring whose oldest entry has `oldest_seq`.
pub fn select(ring: &VecDeque<Value>, after: u64) -> (Vec<Value>, bool) {
    let oldest = ring.front().and_then(|e| e["seq"].as_u64());
    let gap = oldest.is_some_and(|o| after + 1 < o);
    let events = ring
        .iter()
        .filter(|e| e["seq"].as_u64().is_some_and(|s| s > after))
        .cloned()
        .collect();
    (events, gap)
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

    /// Record an event of `kind` with `fields`; returns its sequence number.
    pub fn emit(&self, kind: &str, fields: Value) -> u64 {
        let mut e = json!({"type": kind, "uptimeMs": uptime_ms(), "unixTimeMs": unix_ms()});
        if let (Value::Object(m), Value::Object(f)) = (&mut e, fields) {
            m.extend(f);
        }
        let seq = {
            let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let seq = r.next_seq;
            r.next_seq += 1;
            e["seq"] = json!(seq);
            r.events.push_back(e.clone());
            while r.events.len() > RETAINED {
                r.events.pop_front();
            }
            seq
        };
        tracing::info!(event = %e, "event");
        self.added.notify_waiters();
        seq
    }

    /// Events after `after`, waiting up to `wait` for at least one.
    pub async fn since(&self, after: u64, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let added = self.added.notified();
            let (events, gap) = {
                let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
                select(&r.events, after)
            };
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                let last = events
                    .last()
                    .and_then(|e| e["seq"].as_u64())
                    .unwrap_or(after);
                return json!({"events": events, "lastSeq": last, "gap": gap});
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
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn replay_after_a_reconnect_loses_nothing_and_repeats_nothing() {
        let ev = Events::new();
        for i in 0..5 {
            ev.emit("idle", json!({"i": i}));
        }
        let first = ev.since(0, Duration::ZERO).await;
        assert_eq!(first["events"].as_array().unwrap().len(), 5);
        assert_eq!(first["lastSeq"], 5);
        // The host saw up to 3, then lost its connection.
        let again = ev.since(3, Duration::ZERO).await;
        let seqs: Vec<u64> = again["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(again["gap"], false);
        let none = ev.since(5, Duration::ZERO).await;
        assert!(none["events"].as_array().unwrap().is_empty());
        assert_eq!(none["lastSeq"], 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_long_poll_wakes_on_the_next_event() {
        let ev = std::sync::Arc::new(Events::new());
        let e2 = ev.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            e2.emit("active", json!({}));
        });
        let t0 = std::time::Instant::now();
        let got = ev.since(0, Duration::from_secs(5)).await;
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(got["events"][0]["type"], "active");
    }

    #[test]
    fn a_gap_is_reported_when_history_was_dropped() {
        let mut r = VecDeque::new();
        for s in 10..=12u64 {
            r.push_back(json!({"seq": s}));
        }
        assert!(!select(&r, 9).1);
        assert!(select(&r, 5).1);
        assert_eq!(select(&r, 5).0.len(), 3);
    }

    #[test]
    fn query() {
        assert_eq!(parse_query(None), Ok((0, Duration::ZERO)));
        assert_eq!(
            parse_query(Some("after=7&waitSeconds=5")),
            Ok((7, Duration::from_secs(5)))
        );
        assert_eq!(parse_query(Some("waitSeconds=999")).unwrap().1, MAX_WAIT);
        assert!(parse_query(Some("after=x")).is_err());
        assert!(parse_query(Some("since=1")).is_err());
    }
}
