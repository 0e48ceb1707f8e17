//! Property tests (issue 11): line splitting and PutLogEvents batching.
//!
//! - every captured byte ends up in exactly one event, in order, an event never spans
//!   a line end, and how the bytes were chunked by the pipe does not matter;
//! - every batch is within the PutLogEvents limits (10,000 events, 1,048,576 bytes
//!   counting 26 per event, 24 h span, chronological) and as large as they allow;
//! - through the buffer, every captured event is sent, dropped or still buffered,
//!   exactly once and in capture order.

use super::buffer::Buffer;
use super::lines::{
    next_batch, split_message, Counted, Event, LineSplitter, EVENT_OVERHEAD, MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS, MAX_BATCH_SPAN_MS, MAX_EVENT_BYTES,
};
use super::sink::Rejected;
use microvm_protocol::status::WhenFull;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------
// Line splitting

/// Pieces of a pipe's byte stream: text, line ends (also `\r\n`), multibyte
/// characters, invalid and truncated UTF-8, long runs without a line end.
fn byte_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z ]{1,12}".prop_map(String::into_bytes),
        3 => Just(b"\n".to_vec()),
        1 => Just(b"\r\n".to_vec()),
        2 => prop::sample::select(vec!["é", "€", "🦀", "\u{FFFD}", "ß√"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        1 => prop::sample::select(vec![
            vec![0xF0, 0x9F],       // a 4-byte sequence cut short
            vec![0xE2, 0x82],       // a 3-byte one
            vec![0x80, 0x80, 0x80, 0x80, 0x80], // a run of continuation bytes
            vec![0xC3],
            vec![0xFF, 0xFE],
        ]),
        1 => (1usize..120).prop_map(|n| vec![b'x'; n]),
        1 => (1usize..30).prop_map(|n| "é".repeat(n).into_bytes()),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(byte_piece(), 0..60).prop_map(|v| v.concat())
}

/// `data` cut at the given points (as a pipe's reads would cut it, anywhere, also in
/// the middle of a character).
fn chunks<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

struct Split {
    events: Vec<String>,
    empty: usize,
    /// The most bytes the splitter held back after any push.
    max_pending: usize,
}

fn run_splitter(parts: &[&[u8]], max: usize) -> Split {
    let mut s = LineSplitter::new(max);
    let mut events = Vec::new();
    let mut empty = 0;
    let mut max_pending = 0;
    for p in parts {
        empty += s.push(p, &mut events);
        max_pending = max_pending.max(s.pending());
    }
    s.flush(&mut events);
    assert_eq!(s.pending(), 0, "flush leaves nothing behind");
    Split {
        events,
        empty,
        max_pending,
    }
}

/// The lines of `data` as the splitter must see them: every `\n`-terminated line
/// and a non-empty unterminated last one, and how many terminated lines are empty.
fn lines_of(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = lines.pop().unwrap_or_default();
    let empty = lines.iter().filter(|l| l.is_empty()).count();
    lines.retain(|l| !l.is_empty());
    if !last.is_empty() {
        lines.push(last);
    }
    (lines, empty)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes, chunked anyway: events are non-empty, at most `max` bytes, hold no
    /// line end, and taken in order they are exactly the lines (invalid UTF-8
    /// replaced as `from_utf8_lossy` does for the whole line): an event never spans
    /// two lines, no byte is lost or repeated, empty lines are counted, and the
    /// splitter never holds back more than twice `max`.
    #[test]
    fn every_byte_in_exactly_one_event_in_order(
        data in stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        max in 0usize..48,
    ) {
        let max_eff = max.max(4);
        let out = run_splitter(&chunks(&data, &cuts), max);
        let (lines, empty) = lines_of(&data);
        prop_assert_eq!(out.empty, empty);
        prop_assert!(out.max_pending <= 2 * max_eff, "held back {}", out.max_pending);
        for e in &out.events {
            prop_assert!(!e.is_empty() && e.len() <= max_eff, "event {:?}", e);
            prop_assert!(!e.contains('\n'), "event {:?}", e);
        }
        // Walk the events against the lines: each line is a run of whole events.
        let mut events = out.events.iter();
        for line in lines {
            let want = String::from_utf8_lossy(line);
            let mut got = String::new();
            while got.len() < want.len() {
                match events.next() {
                    Some(e) => got.push_str(e),
                    None => break,
                }
            }
            prop_assert_eq!(&got, &want, "line {:?}", line);
        }
        let rest: Vec<_> = events.collect();
        prop_assert!(rest.is_empty(), "events beyond the input: {:?}", rest);
    }

    /// Valid UTF-8, chunked anyway (reads may end inside a character): the events
    /// are exactly each line cut greedily into pieces of at most `max` bytes at
    /// character boundaries, whatever the chunking: joining them with the line ends
    /// the splitter removed gives back the input.
    #[test]
    fn valid_utf8_is_split_the_same_whatever_the_chunking(
        text in prop::collection::vec(
            prop_oneof![
                "[a-z]{1,10}",
                Just("\n".to_string()),
                prop::sample::select(vec!["é", "€", "🦀", "字"]).prop_map(String::from),
                (1usize..80).prop_map(|n| "🦀".repeat(n)),
            ],
            0..40,
        ).prop_map(|v| v.concat()),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        max in 4usize..40,
    ) {
        let out = run_splitter(&chunks(text.as_bytes(), &cuts), max);
        let whole = run_splitter(&[text.as_bytes()], max);
        let mut want = Vec::new();
        let mut parts: Vec<&str> = text.split('\n').collect();
        let last = parts.pop().unwrap_or_default();
        let mut rebuilt = String::new();
        for line in &parts {
            split_message(line, max, &mut want);
            rebuilt.push_str(line);
            rebuilt.push('\n');
        }
        split_message(last, max, &mut want);
        rebuilt.push_str(last);
        prop_assert_eq!(&rebuilt, &text);
        prop_assert_eq!(&out.events, &want);
        prop_assert_eq!(&whole.events, &want);
        prop_assert_eq!(out.empty, parts.iter().filter(|l| l.is_empty()).count());
    }

    /// Counting in place (the discarding path) gives exactly what splitting would:
    /// events, message bytes after UTF-8 repair, empty lines, whatever the bytes and
    /// their chunking, and with reads counted and split in any mix (a pipeline whose
    /// destination becomes known mid-stream), the carried line included.
    #[test]
    fn counting_in_place_matches_splitting(
        data in stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        counted in prop::collection::vec(any::<bool>(), 13),
        max in 0usize..48,
    ) {
        let parts = chunks(&data, &cuts);
        let want = run_splitter(&parts, max);
        let mut s = LineSplitter::new(max);
        let mut reference = LineSplitter::new(max);
        let mut got = Counted::default();
        for (i, p) in parts.iter().enumerate() {
            if counted[i % counted.len()] {
                let c = s.count(p);
                got.events += c.events;
                got.bytes += c.bytes;
                got.empty += c.empty;
            } else {
                let mut out = Vec::new();
                got.empty += s.push(p, &mut out) as u64;
                got.add(&out);
            }
            let mut sink = Vec::new();
            reference.push(p, &mut sink);
            prop_assert_eq!(s.pending(), reference.pending(), "carried line after read {}", i);
        }
        let mut out = Vec::new();
        s.flush(&mut out);
        got.add(&out);
        let bytes: u64 = want.events.iter().map(|e| e.len() as u64).sum();
        prop_assert_eq!(got, Counted { events: want.events.len() as u64, bytes, empty: want.empty as u64 });
    }

    /// `split_message` (for `max` of at least 4, the longest character): pieces are
    /// non-empty, at most `max` bytes, whole characters, in order, and each but the
    /// last is as long as it can be.
    #[test]
    fn split_message_pieces_are_maximal_and_lossless(s in any::<String>(), max in 4usize..24) {
        let mut out = Vec::new();
        split_message(&s, max, &mut out);
        prop_assert_eq!(out.concat(), s.clone());
        for (i, p) in out.iter().enumerate() {
            prop_assert!(!p.is_empty() && p.len() <= max, "{:?}", p);
            if let Some(next) = out.get(i + 1) {
                let c = next.chars().next().map_or(0, char::len_utf8);
                prop_assert!(p.len() + c > max, "{:?} could have taken more of {:?}", p, next);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Batching

const T0: i64 = 1_795_000_000_000;

/// How far the clock moves between two events: not at all, a little, right around
/// the 24 h span limit, or (only for the buffer) backwards.
fn ts_step(backwards: bool) -> BoxedStrategy<i64> {
    let mut options = vec![
        (3, Just(0i64).boxed()),
        (3, (1i64..2_000).boxed()),
        (1, (MAX_BATCH_SPAN_MS - 2..=MAX_BATCH_SPAN_MS + 2).boxed()),
        (1, (3_600_000i64..2 * MAX_BATCH_SPAN_MS).boxed()),
    ];
    if backwards {
        options.push((1, (-2 * MAX_BATCH_SPAN_MS..0).boxed()));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

/// A run of `count` events of `len` bytes each, `step` ms apart: many small ones (to
/// reach 10,000), a few large ones (to reach 1 MiB), or single maximal ones.
fn run(backwards: bool) -> impl Strategy<Value = (usize, usize, i64)> {
    let shape = prop_oneof![
        3 => (1usize..4_000, 0usize..100),
        1 => (9_990usize..10_020, 0usize..60),
        2 => (1usize..40, 1_000usize..120_000),
        1 => (1usize..3, MAX_EVENT_BYTES - 64..=MAX_EVENT_BYTES),
    ];
    (shape, ts_step(backwards)).prop_map(|((count, len), step)| (count, len, step))
}

fn events_of(runs: &[(usize, usize, i64)]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut ts = T0;
    for &(count, len, step) in runs {
        let message = "m".repeat(len.max(1));
        for _ in 0..count {
            ts += step;
            out.push(Event {
                seq: out.len() as u64,
                timestamp_ms: ts,
                message: message.clone(),
            });
        }
    }
    out
}

/// Every PutLogEvents limit, and chronological order, for one batch.
fn check_batch(batch: &[Event]) -> Result<(), TestCaseError> {
    prop_assert!(!batch.is_empty(), "an empty batch");
    prop_assert!(batch.len() <= MAX_BATCH_EVENTS, "{} events", batch.len());
    let bytes: usize = batch.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum();
    prop_assert!(bytes <= MAX_BATCH_BYTES, "{} bytes", bytes);
    for w in batch.windows(2) {
        prop_assert!(w[0].timestamp_ms <= w[1].timestamp_ms, "out of order");
    }
    let span = batch[batch.len() - 1].timestamp_ms - batch[0].timestamp_ms;
    prop_assert!(span <= MAX_BATCH_SPAN_MS, "spans {} ms", span);
    for e in batch {
        prop_assert!(!e.message.is_empty() && e.message.len() <= MAX_EVENT_BYTES);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Cutting a chronological sequence into batches with `next_batch`: every event in
    /// exactly one batch, in order; each batch within every limit; each batch as
    /// large as the limits allow (the next event would break one).
    #[test]
    fn batches_partition_the_events_within_every_limit(
        runs in prop::collection::vec(run(false), 0..8),
    ) {
        let events = events_of(&runs);
        let mut rest = &events[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let n = next_batch(rest);
            prop_assert!(n >= 1 && n <= rest.len(), "no progress: {}", n);
            let (batch, tail) = rest.split_at(n);
            check_batch(batch)?;
            if let Some(next) = tail.first() {
                let bytes: usize = batch.iter().map(Event::cost).sum();
                prop_assert!(
                    n == MAX_BATCH_EVENTS
                        || bytes + next.cost() > MAX_BATCH_BYTES
                        || next.timestamp_ms - batch[0].timestamp_ms > MAX_BATCH_SPAN_MS,
                    "batch of {} ended early", n
                );
            }
            seen.extend(batch.iter().map(|e| e.seq));
            rest = tail;
        }
        prop_assert_eq!(seen, (0..events.len() as u64).collect::<Vec<_>>());
        prop_assert_eq!(next_batch(&[] as &[Event]), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Right at the byte limit: `n` events whose costs (26 each included) add up to
    /// 1,048,576 + `over` make one batch when `over <= 0` and leave the last event
    /// for the next batch when `over > 0`.
    #[test]
    fn the_byte_limit_is_exact(n in 2usize..1_500, over in -3isize..=3, ts in T0..T0 + 1_000) {
        let total = MAX_BATCH_BYTES.checked_add_signed(over).unwrap() - n * EVENT_OVERHEAD;
        let events: Vec<Event> = (0..n)
            .map(|i| Event {
                seq: i as u64,
                timestamp_ms: ts,
                // Spread `total` bytes over `n` messages, the remainder on the first.
                message: "b".repeat(total / n + usize::from(i < total % n)),
            })
            .collect();
        let bytes: usize = events.iter().map(Event::cost).sum();
        prop_assert_eq!(bytes as isize, MAX_BATCH_BYTES as isize + over);
        let want = if over <= 0 { n } else { n - 1 };
        prop_assert_eq!(next_batch(&events), want);
    }
}

/// What the sink does with a batch taken from the buffer.
#[derive(Debug, Clone)]
enum Outcome {
    Sent,
    /// Sent, the service refused some at the ends (too old / too new).
    Rejected(Index, Index),
    /// Given up on.
    Dropped,
    /// Failed, to be retried: back to the front of the queue.
    Requeued,
}

#[derive(Debug, Clone)]
enum Op {
    /// Capture `count` messages of `len` bytes, the wall clock moving `step` each.
    Capture(usize, usize, i64),
    Take(Outcome),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Sent),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Outcome::Rejected(a, b)),
        1 => Just(Outcome::Dropped),
        2 => Just(Outcome::Requeued),
    ];
    prop_oneof![
        2 => run(true).prop_map(|(c, l, s)| Op::Capture(c, l, s)),
        3 => outcome.prop_map(Op::Take),
    ]
}

/// The buffer as the sender drives it.
struct Driver {
    b: Buffer,
    messages: Vec<String>,
    wall: i64,
    mono: u64,
    /// Sequence numbers resolved (sent, rejected, dropped by the sink) so far.
    resolved: Vec<u64>,
    dropped_by_sink: u64,
}

impl Driver {
    fn take(&mut self, outcome: &Outcome) -> Result<(), TestCaseError> {
        let batch = self.b.take_batch();
        if batch.is_empty() {
            prop_assert_eq!(self.b.buffered_events(), 0, "events left but no batch");
            return Ok(());
        }
        check_batch(&batch)?;
        for e in &batch {
            prop_assert_eq!(&e.message, &self.messages[e.seq as usize], "seq {}", e.seq);
        }
        prop_assert!(self.b.take_batch().is_empty(), "two batches in flight");
        match outcome {
            Outcome::Requeued => {
                self.b.requeue(batch);
                return Ok(());
            }
            Outcome::Sent => self.b.ack_sent(&batch, &Rejected::default()),
            Outcome::Rejected(old, new) => {
                let rejected = Rejected {
                    too_old_to: Some(old.index(batch.len())),
                    too_new_from: Some(new.index(batch.len())),
                    ..Rejected::default()
                };
                self.dropped_by_sink += (0..batch.len())
                    .filter(|&i| rejected.reason(i).is_some())
                    .count() as u64;
                self.b.ack_sent(&batch, &rejected);
            }
            Outcome::Dropped => {
                self.dropped_by_sink += batch.len() as u64;
                self.b.ack_dropped(&batch, "InvalidBatch");
            }
        }
        self.resolved.extend(batch.iter().map(|e| e.seq));
        Ok(())
    }

    fn balanced(&self) -> Result<(), TestCaseError> {
        let c = &self.b.counters;
        prop_assert_eq!(
            c.captured_events,
            c.sent_events + c.dropped_events + self.b.buffered_events() as u64
        );
        prop_assert_eq!(
            c.captured_bytes,
            c.sent_bytes + c.dropped_bytes + self.b.buffered_message_bytes()
        );
        prop_assert_eq!(c.captured_events, self.b.captured());
        prop_assert!(self.b.resolved() <= self.b.captured());
        Ok(())
    }
}

fn drive(ops: &[Op], limit: usize, when_full: WhenFull) -> Result<Driver, TestCaseError> {
    let mut d = Driver {
        b: Buffer::new(limit, when_full),
        messages: Vec::new(),
        wall: T0,
        mono: 0,
        resolved: Vec::new(),
        dropped_by_sink: 0,
    };
    for op in ops {
        match *op {
            Op::Capture(count, len, step) => {
                let message = "c".repeat(len.max(1));
                for _ in 0..count {
                    d.wall += step;
                    d.mono += 1;
                    let mut m = message.clone();
                    // Under `block` a full buffer hands the message back: the sender
                    // makes room (a batch goes), then the capture tries again.
                    loop {
                        match d.b.admit(m, d.wall, d.mono) {
                            Ok(()) => break,
                            Err(back) => {
                                prop_assert_eq!(when_full, WhenFull::Block);
                                prop_assert!(d.b.buffered_events() > 0, "refused while empty");
                                m = back;
                                d.take(&Outcome::Sent)?;
                            }
                        }
                    }
                    d.messages.push(message.clone());
                }
            }
            Op::Take(ref outcome) => d.take(outcome)?,
        }
        d.balanced()?;
    }
    // The end: a flush sends everything still buffered.
    while d.b.buffered_events() > 0 {
        d.take(&Outcome::Sent)?;
    }
    d.balanced()?;
    prop_assert_eq!(d.b.resolved(), d.b.captured());
    Ok(d)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Under `block`, with wall clocks stepped back and forth and batches requeued:
    /// every captured event is resolved exactly once, in capture order, none is
    /// dropped for room, and every batch is chronological and within the limits.
    #[test]
    fn block_resolves_every_event_once_in_order(
        ops in prop::collection::vec(op(), 0..16),
        limit in prop::sample::select(vec![2 * MAX_BATCH_BYTES, 4 * MAX_BATCH_BYTES]),
    ) {
        let d = drive(&ops, limit, WhenFull::Block)?;
        prop_assert_eq!(&d.resolved, &(0..d.b.captured()).collect::<Vec<_>>());
        let c = &d.b.counters;
        prop_assert_eq!(c.dropped_events, d.dropped_by_sink);
        prop_assert!(!c.dropped_by_reason.contains_key("BufferFull"));
        prop_assert_eq!(c.sent_events + c.dropped_events, c.captured_events);
    }

    /// Under `dropOldest`: what leaves in batches is in capture order with no event
    /// twice, and every event not resolved by the sink was dropped for room.
    #[test]
    fn drop_oldest_keeps_order_and_accounts_for_every_event(
        ops in prop::collection::vec(op(), 0..16),
        limit in prop::sample::select(vec![2 * MAX_BATCH_BYTES, 3 * MAX_BATCH_BYTES]),
    ) {
        let d = drive(&ops, limit, WhenFull::DropOldest)?;
        prop_assert!(d.resolved.windows(2).all(|w| w[0] < w[1]), "order or a repeat");
        let c = &d.b.counters;
        let for_room = c.dropped_by_reason.get("BufferFull").copied().unwrap_or(0);
        prop_assert_eq!(d.resolved.len() as u64 + for_room, c.captured_events);
        prop_assert_eq!(c.dropped_events, d.dropped_by_sink + for_room);
    }
}
