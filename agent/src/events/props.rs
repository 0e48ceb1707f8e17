//! Property tests (issue 11): the host's replay of events across reconnects.
//!
//! A host that asks with the highest `seq` it has seen gets every later event exactly
//! once, in order; when the agent already discarded some, the page says `gap` and the
//! host can count exactly what it missed.

use super::{parse_query, select, EventType, Events, MAX_WAIT};
use microvm_protocol::events::Event;
use microvm_protocol::limits::EVENTS_RETAINED;
use proptest::prelude::*;
use serde_json::json;
use std::collections::VecDeque;
use std::time::Duration;

fn event(seq: u64) -> Event {
    Event {
        seq,
        kind: EventType::Active,
        uptime_ms: 0,
        unix_time_ms: 0,
        fields: serde_json::Map::new(),
    }
}

/// A retained ring: consecutive numbers from `first` (at least 1).
fn ring() -> impl Strategy<Value = VecDeque<Event>> {
    (
        prop_oneof![Just(1u64), 1u64..10_000, Just(u64::MAX - 200)],
        0usize..100,
    )
        .prop_map(|(first, n)| (first..first + n as u64).map(event).collect())
}

fn after_for(ring: &VecDeque<Event>) -> BoxedStrategy<u64> {
    let first = ring.front().map_or(1, |e| e.seq);
    let last = ring.back().map_or(0, |e| e.seq);
    prop_oneof![
        Just(0u64),
        Just(first.saturating_sub(2)),
        Just(first - 1),
        Just(last),
        first.saturating_sub(5)..=last.saturating_add(5),
        Just(u64::MAX),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// For a ring of consecutive events and any `after`: the page holds every kept
    /// event numbered above `after`, in order; `gap` is set exactly when events
    /// between `after` and the oldest kept were discarded; and without a gap, what
    /// the host had (1..=after) and the page together are every event up to the
    /// newest, none twice.
    #[test]
    fn a_page_is_every_later_event_or_says_gap(
        (ring, after) in ring().prop_flat_map(|r| { let a = after_for(&r); (Just(r), a) }),
    ) {
        let (events, gap) = select(&ring, after);
        let want: Vec<u64> = ring.iter().map(|e| e.seq).filter(|s| *s > after).collect();
        let got: Vec<u64> = events.iter().map(|e| e.seq).collect();
        prop_assert_eq!(&got, &want);
        let first = ring.front().map(|e| e.seq);
        prop_assert_eq!(gap, first.is_some_and(|f| after < f - 1), "after {} first {:?}", after, first);
        if !gap {
            // No loss: the page continues right after what the host had.
            if let Some(&s) = got.first() {
                prop_assert_eq!(s, after + 1);
            }
            prop_assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }

    /// `after=N&waitSeconds=W` in any order, with empty pairs, the last of a repeated
    /// key winning; the wait is capped; anything else is refused naming the parameter;
    /// no query string makes parsing panic.
    #[test]
    fn queries(
        pairs in prop::collection::vec(prop_oneof![
            any::<u64>().prop_map(|n| format!("after={n}")),
            (0u64..200).prop_map(|n| format!("waitSeconds={n}")),
            Just(String::new()),
        ], 0..5),
        junk in ".{0,24}",
        bad_key in "[a-zA-Z]{1,8}".prop_filter("unknown", |k| k != "after" && k != "waitSeconds"),
        bad_num in "[0-9]{0,3}[^0-9&+][0-9]{0,3}",
    ) {
        let _ = parse_query(Some(&junk));
        let q = pairs.join("&");
        let (mut after, mut wait) = (0u64, 0u64);
        for p in &pairs {
            if let Some(n) = p.strip_prefix("after=") { after = n.parse().unwrap(); }
            if let Some(n) = p.strip_prefix("waitSeconds=") { wait = n.parse().unwrap(); }
        }
        let want = (after, Duration::from_secs(wait).min(MAX_WAIT));
        prop_assert_eq!(parse_query(Some(&q)), Ok(want));
        let e = parse_query(Some(&format!("{q}&{bad_key}=1"))).unwrap_err();
        prop_assert!(e.contains(&bad_key), "{}", e);
        for key in ["after", "waitSeconds"] {
            let e = parse_query(Some(&format!("{q}&{key}={bad_num}"))).unwrap_err();
            prop_assert!(e.starts_with(key), "{}", e);
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The agent records this many events.
    Emit(usize),
    /// The host asks (it may have reconnected: it asks with what it remembers).
    Poll,
    /// The host lost what it remembered and asks from 0.
    PollFromScratch,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..40).prop_map(Step::Emit),
        1 => (EVENTS_RETAINED - 2..EVENTS_RETAINED + 40).prop_map(Step::Emit),
        4 => Just(Step::Poll),
        1 => Just(Step::PollFromScratch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A host polling the real event log with the `lastSeq` of its previous page:
    /// it never sees an event twice or out of order, and every event it never sees
    /// was reported by a `gap` (exactly as many as the gap skipped).
    #[test]
    fn replay_loses_nothing_unreported_and_repeats_nothing(steps in prop::collection::vec(step(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let ev = Events::new();
        let mut emitted = 0u64;
        let mut last_seen = 0u64;
        let mut seen: Vec<u64> = Vec::new();
        let mut skipped = 0u64;
        for s in steps.iter().chain(std::iter::once(&Step::Poll)) {
            match *s {
                Step::Emit(n) => {
                    for i in 0..n {
                        emitted += 1;
                        prop_assert_eq!(ev.emit(EventType::Idle, json!({"i": i})), emitted);
                    }
                }
                Step::Poll | Step::PollFromScratch => {
                    let from_scratch = matches!(s, Step::PollFromScratch);
                    let after = if from_scratch { 0 } else { last_seen };
                    let page = rt.block_on(ev.since(after, Duration::ZERO));
                    let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
                    let oldest_kept = emitted.saturating_sub(EVENTS_RETAINED as u64) + 1;
                    prop_assert_eq!(page.gap, after + 1 < oldest_kept && emitted > 0);
                    let start = if page.gap { oldest_kept } else { after + 1 };
                    prop_assert_eq!(&seqs, &(start..=emitted).collect::<Vec<_>>());
                    prop_assert_eq!(page.last_seq, seqs.last().copied().unwrap_or(after));
                    if from_scratch {
                        // A fresh host: it starts its record over.
                        seen.clear();
                        skipped = start - 1;
                    } else if page.gap {
                        skipped += start - after - 1;
                    }
                    seen.extend(&seqs);
                    last_seen = page.last_seq;
                }
            }
        }
        // Everything, once, in order: what the host saw, and what gaps told it it
        // missed.
        prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "repeated or out of order");
        prop_assert_eq!(seen.len() as u64 + skipped, emitted);
        prop_assert_eq!(last_seen, emitted);
    }
}
