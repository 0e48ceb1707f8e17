//! The bounded buffer between capture and the sink: plain data, no I/O, no clock of
//! its own, so every rule here is tested directly.
//!
//! Every captured event gets a sequence number. An event leaves the buffer by being
//! sent, dropped (with a reason) or rejected by the service; the sequence number below
//! which every event has left is [`Buffer::resolved`], derived from what is still
//! queued or in flight rather than stored, so eviction can never move it past a batch
//! the sink still holds.

use super::lines::{self, Event};
use super::sink::Rejected;
use microvm_protocol::status::{LogCounters, WhenFull};
use std::collections::VecDeque;

/// The batch the sink holds: it left the queue but is not resolved yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    first_seq: u64,
    events: usize,
    /// Message bytes of the batch.
    bytes: u64,
}

#[derive(Debug)]
pub struct Buffer {
    queue: VecDeque<Event>,
    /// What the queued events take in memory ([`lines::memory_cost`]), against the
    /// limit.
    queued_bytes: usize,
    /// Message bytes of the queued events (the batch in flight keeps its own): the
    /// byte side of captured = sent + dropped + buffered.
    queued_message_bytes: u64,
    limit: usize,
    when_full: WhenFull,
    next_seq: u64,
    in_flight: Option<InFlight>,
    last_ts: i64,
    /// Monotonic time at which the oldest queued event (or an older one) was
    /// captured: batch ages follow it, so a wall clock stepped back by a restored
    /// snapshot cannot hold a batch back.
    oldest_mono_ms: Option<u64>,
    pub counters: LogCounters,
}

/// Whether the next batch can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Now,
    /// The oldest event is this many milliseconds too young.
    InMs(u64),
    Empty,
}

impl Buffer {
    pub fn new(limit: usize, when_full: WhenFull) -> Self {
        Buffer {
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_message_bytes: 0,
            limit,
            when_full,
            next_seq: 0,
            in_flight: None,
            last_ts: 0,
            oldest_mono_ms: None,
            counters: LogCounters::default(),
        }
    }

    /// Capture `message`, read at wall time `now_ms` and monotonic time `mono_ms`.
    /// Under `block`, a full buffer
    /// hands the message back: the caller waits for room and stops reading the pipe,
    /// which is what blocks the application's write. Under `dropOldest` the oldest
    /// queued events make room and are counted as dropped.
    pub fn admit(&mut self, message: String, now_ms: i64, mono_ms: u64) -> Result<(), String> {
        self.admit_as(message, now_ms, mono_ms, self.when_full, "BufferFull")
    }

    /// [`Buffer::admit`] under `when_full`, evictions counted under `reason` (the
    /// pipeline stops blocking, for one, when only new credentials could free room).
    pub fn admit_as(
        &mut self,
        message: String,
        now_ms: i64,
        mono_ms: u64,
        when_full: WhenFull,
        reason: &'static str,
    ) -> Result<(), String> {
        // A message keeps no spare capacity while it waits: memory is what is counted.
        let mut message = message;
        message.shrink_to_fit();
        let cost = lines::memory_cost(&message);
        let full = self.queued_bytes + cost > self.limit && !self.queue.is_empty();
        if full && when_full == WhenFull::Block {
            return Err(message);
        }
        while self.queued_bytes + cost > self.limit {
            let Some(old) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= old.memory();
            self.queued_message_bytes -= old.message.len() as u64;
            count_dropped(&mut self.counters, &old, reason);
        }
        // Never backwards: a clock stepped back (a restored snapshot) must not make a
        // batch out of order, which would fail the whole PutLogEvents call.
        let ts = lines::clamp_timestamp(self.last_ts, now_ms);
        self.last_ts = ts;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.counters.captured_events += 1;
        self.counters.captured_bytes += message.len() as u64;
        self.queued_message_bytes += message.len() as u64;
        self.queued_bytes += cost;
        self.oldest_mono_ms.get_or_insert(mono_ms);
        self.queue.push_back(Event {
            seq,
            timestamp_ms: ts,
            message,
        });
        Ok(())
    }

    /// Events a discarding sink would drop, counted without being queued: captured
    /// and dropped under `reason` at once (they take sequence numbers, so a flush
    /// waiting for what was captured before it still sees them resolved).
    pub fn discard_counted(&mut self, events: u64, bytes: u64, reason: &str) {
        if events == 0 {
            return;
        }
        self.next_seq += events;
        let c = &mut self.counters;
        c.captured_events += events;
        c.captured_bytes += bytes;
        c.dropped_events += events;
        c.dropped_bytes += bytes;
        match c.dropped_by_reason.get_mut(reason) {
            Some(n) => *n += events,
            None => {
                c.dropped_by_reason.insert(reason.to_string(), events);
            }
        }
    }

    /// Sequence number of the next event to be captured.
    pub fn captured(&self) -> u64 {
        self.next_seq
    }

    /// Every event numbered below this was sent, dropped or rejected.
    pub fn resolved(&self) -> u64 {
        self.in_flight
            .map(|f| f.first_seq)
            .or_else(|| self.queue.front().map(|e| e.seq))
            .unwrap_or(self.next_seq)
    }

    /// Whether a batch may go now (`mono_ms` is the monotonic time): when one is full,
    /// when asked to hurry (a flush, or a sink that needs no batching), or when its
    /// oldest event is `max_age_ms` old.
    pub fn ready(&self, mono_ms: u64, max_age_ms: u64, hurry: bool) -> Ready {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return Ready::Empty;
        }
        let age = mono_ms.saturating_sub(self.oldest_mono_ms.unwrap_or(0));
        // Cheapest first: sizing a batch walks up to 10,000 events.
        if hurry || age >= max_age_ms || lines::next_batch(self.queue.iter()) < self.queue.len() {
            Ready::Now
        } else {
            Ready::InMs(max_age_ms - age)
        }
    }

    /// Take the next batch (within every PutLogEvents limit) out of the queue; it is
    /// in flight until acknowledged or put back.
    pub fn take_batch(&mut self) -> Vec<Event> {
        if self.in_flight.is_some() {
            return Vec::new();
        }
        let n = lines::next_batch(self.queue.iter());
        let batch: Vec<Event> = self.queue.drain(..n).collect();
        self.queued_bytes -= batch.iter().map(Event::memory).sum::<usize>();
        // A queue that was long keeps its slots: give them back once it is short.
        if self.queue.capacity() > 4 * self.queue.len().max(1024) {
            self.queue.shrink_to(2 * self.queue.len().max(1024));
        }
        // What stays queued is no older than the oldest that left: keeping its time
        // can only make the next batch go sooner, never later.
        if self.queue.is_empty() {
            self.oldest_mono_ms = None;
        }
        let bytes: u64 = batch.iter().map(|e| e.message.len() as u64).sum();
        self.queued_message_bytes -= bytes;
        self.in_flight = batch.first().map(|e| InFlight {
            first_seq: e.seq,
            events: batch.len(),
            bytes,
        });
        batch
    }

    /// The sink accepted the batch; `rejected` says which events the service refused.
    pub fn ack_sent(&mut self, batch: &[Event], rejected: &Rejected) {
        for (i, e) in batch.iter().enumerate() {
            match rejected.reason(i) {
                Some(reason) => count_dropped(&mut self.counters, e, reason),
                None => {
                    self.counters.sent_events += 1;
                    self.counters.sent_bytes += e.message.len() as u64;
                }
            }
        }
        self.counters.sent_batches += 1;
        self.release(batch);
    }

    /// The batch will never be sent: counted as dropped under `reason`.
    pub fn ack_dropped(&mut self, batch: &[Event], reason: &str) {
        for e in batch {
            count_dropped(&mut self.counters, e, reason);
        }
        self.release(batch);
    }

    /// The batch in flight is resolved.
    fn release(&mut self, batch: &[Event]) {
        debug_assert_eq!(
            self.in_flight.map(|f| (f.first_seq, f.events)),
            batch.first().map(|e| (e.seq, batch.len())),
            "a batch acknowledged is the batch in flight"
        );
        self.in_flight = None;
    }

    /// An unsent batch goes back to the front, in order.
    pub fn requeue(&mut self, batch: Vec<Event>) {
        for e in batch.into_iter().rev() {
            self.queued_bytes += e.memory();
            self.queued_message_bytes += e.message.len() as u64;
            self.queue.push_front(e);
        }
        // Their age is unknown here and at least a batch's: they go at once.
        self.oldest_mono_ms = Some(0);
        self.in_flight = None;
    }

    /// Events captured and not yet resolved, the batch in flight included.
    pub fn buffered_events(&self) -> usize {
        self.queue.len() + self.in_flight.map_or(0, |f| f.events)
    }

    /// Message bytes of the events [`Buffer::buffered_events`] counts.
    pub fn buffered_message_bytes(&self) -> u64 {
        self.queued_message_bytes + self.in_flight.map_or(0, |f| f.bytes)
    }

    /// What the queued events take in memory, against the limit.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }
}

fn count_dropped(c: &mut LogCounters, e: &Event, reason: &str) {
    c.dropped_events += 1;
    c.dropped_bytes += e.message.len() as u64;
    *c.dropped_by_reason.entry(reason.to_string()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> usize {
        10 * lines::memory_cost("message000")
    }

    fn msg(i: usize) -> String {
        format!("message{i:03}")
    }

    /// Captured = sent + dropped + buffered, in events and bytes; checked after
    /// every step.
    fn balanced(b: &Buffer) {
        let c = &b.counters;
        assert_eq!(
            c.captured_events,
            c.sent_events + c.dropped_events + b.buffered_events() as u64,
            "{c:?}, {} buffered",
            b.buffered_events()
        );
        assert_eq!(
            c.captured_bytes,
            c.sent_bytes + c.dropped_bytes + b.buffered_message_bytes(),
            "{c:?}, {} bytes buffered",
            b.buffered_message_bytes()
        );
        // The counters against the contents, not only against each other.
        let queued: u64 = b.queue.iter().map(|e| e.message.len() as u64).sum();
        assert_eq!(b.queued_message_bytes, queued);
        let memory: usize = b.queue.iter().map(Event::memory).sum();
        assert_eq!(b.queued_bytes, memory);
        assert!(b.resolved() <= b.captured());
    }

    #[test]
    fn block_hands_the_message_back_when_full_and_loses_nothing() {
        let mut b = Buffer::new(limit(), WhenFull::Block);
        for i in 0..10 {
            b.admit(msg(i), 1, 0).unwrap();
            balanced(&b);
        }
        assert_eq!(b.admit(msg(10), 1, 0), Err(msg(10)));
        assert_eq!(b.counters.dropped_events, 0);
        let batch = b.take_batch();
        assert_eq!(batch.len(), 10);
        // Room again once the batch left the queue.
        b.admit(msg(10), 1, 0).unwrap();
        b.ack_sent(&batch, &Rejected::default());
        balanced(&b);
        assert_eq!(b.counters.sent_events, 10);
    }

    #[test]
    fn drop_oldest_evicts_from_the_front_and_counts_it() {
        let mut b = Buffer::new(limit(), WhenFull::DropOldest);
        for i in 0..13 {
            b.admit(msg(i), 1, 0).unwrap();
            balanced(&b);
        }
        assert_eq!(b.counters.dropped_events, 3);
        assert_eq!(b.counters.dropped_by_reason["BufferFull"], 3);
        let batch = b.take_batch();
        let kept: Vec<_> = batch.iter().map(|e| e.message.clone()).collect();
        assert_eq!(kept, (3..13).map(msg).collect::<Vec<_>>());
        assert!(b.queued_bytes() <= b.limit());
    }

    #[test]
    fn eviction_never_resolves_the_batch_in_flight() {
        // The bug this guards: evicting a queued event used to move the resolved mark
        // past it, over a batch the sink still held, so a flush reported success for
        // events that were neither sent nor counted.
        let mut b = Buffer::new(limit(), WhenFull::DropOldest);
        for i in 0..5 {
            b.admit(msg(i), 1, 0).unwrap();
        }
        let target = b.captured();
        let batch = b.take_batch();
        for i in 5..30 {
            b.admit(msg(i), 1, 0).unwrap();
            balanced(&b);
        }
        assert!(b.counters.dropped_events > 0);
        assert_eq!(b.resolved(), 0, "the batch in flight is not resolved");
        assert!(b.resolved() < target);
        b.ack_sent(&batch, &Rejected::default());
        assert!(b.resolved() >= target);
        balanced(&b);
    }

    #[test]
    fn batches_leave_in_order_and_a_requeued_batch_goes_first() {
        let mut b = Buffer::new(1 << 20, WhenFull::Block);
        for i in 0..5 {
            b.admit(msg(i), i as i64, 0).unwrap();
        }
        let first = b.take_batch();
        assert!(b.take_batch().is_empty(), "one batch at a time");
        b.admit(msg(5), 9, 0).unwrap();
        b.requeue(first);
        balanced(&b);
        let again = b.take_batch();
        let seqs: Vec<_> = again.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
        b.ack_dropped(&again, "InvalidBatch");
        assert_eq!(b.counters.dropped_by_reason["InvalidBatch"], 6);
        assert_eq!(b.resolved(), b.captured());
        balanced(&b);
    }

    #[test]
    fn rejected_events_are_dropped_with_their_reason() {
        let mut b = Buffer::new(1 << 20, WhenFull::Block);
        for i in 0..4 {
            b.admit(msg(i), 1, 0).unwrap();
        }
        let batch = b.take_batch();
        let rejected = Rejected {
            too_old_to: Some(0),
            too_new_from: Some(3),
            ..Rejected::default()
        };
        b.ack_sent(&batch, &rejected);
        assert_eq!(b.counters.sent_events, 2);
        assert_eq!(b.counters.dropped_by_reason["RejectedTooOld"], 1);
        assert_eq!(b.counters.dropped_by_reason["RejectedTooNew"], 1);
        balanced(&b);
    }

    #[test]
    fn readiness_by_age_fullness_and_hurry() {
        let mut b = Buffer::new(64 << 20, WhenFull::Block);
        assert_eq!(b.ready(0, 1000, false), Ready::Empty);
        b.admit("a".into(), 1_795_000_000_000, 10_000).unwrap();
        assert_eq!(b.ready(10_400, 1000, false), Ready::InMs(600));
        assert_eq!(b.ready(10_400, 1000, true), Ready::Now);
        assert_eq!(b.ready(11_000, 1000, false), Ready::Now);
        for _ in 0..lines::MAX_BATCH_EVENTS {
            b.admit("x".into(), 1_795_000_000_000, 10_000).unwrap();
        }
        assert_eq!(
            b.ready(10_000, 1000, false),
            Ready::Now,
            "a full batch goes"
        );
        b.take_batch();
        assert_eq!(b.ready(99_999, 1000, true), Ready::Empty, "one in flight");
    }

    #[test]
    fn a_wall_clock_stepped_back_an_hour_does_not_hold_a_batch() {
        // The bug this guards: ages were wall-clock differences, so after a restore
        // stepped the clock back an hour the sender slept for that hour.
        let mut b = Buffer::new(64 << 20, WhenFull::Block);
        let wall = 1_795_000_000_000;
        b.admit("before".into(), wall, 5_000).unwrap();
        b.admit("after".into(), wall - 3_600_000, 5_200).unwrap();
        assert_eq!(b.ready(5_500, 1000, false), Ready::InMs(500));
        assert_eq!(b.ready(6_000, 1000, false), Ready::Now);
        let ts: Vec<_> = b.take_batch().iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(
            ts,
            [wall, wall],
            "timestamps stay in order for PutLogEvents"
        );
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let mut b = Buffer::new(1 << 20, WhenFull::Block);
        b.admit("a".into(), 5_000, 0).unwrap();
        b.admit("b".into(), 1_000, 0).unwrap();
        let ts: Vec<_> = b.take_batch().iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(ts, [5_000, 5_000]);
    }
}
