//! Bytes from a pipe into log events: one per line, never truncated, never dropped.

/// PutLogEvents limits (current AWS documentation, PutLogEvents API reference):
/// "The maximum batch size is 1,048,576 bytes. This size is calculated as the sum of
/// all event messages in UTF-8, plus 26 bytes for each log event."
pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
/// "Each log event can be no larger than 1 MB", and it must fit a batch of its own.
pub const MAX_EVENT_BYTES: usize = MAX_BATCH_BYTES - EVENT_OVERHEAD;
/// "The maximum number of log events in a batch is 10,000."
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// "A batch of log events in a single request cannot span more than 24 hours."
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub message: String,
}

impl Event {
    /// What the event counts for against the batch limit.
    pub fn cost(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }

    /// What the event takes in memory while queued (see [`memory_cost`]).
    pub fn memory(&self) -> usize {
        memory_cost(&self.message)
    }
}

/// What a queued message takes in memory, so `bufferBytes` bounds real memory and
/// not only payload (a 1-byte line costs far more than a byte): its slot in the
/// queue, counted twice because a growing queue doubles its slots, and the heap
/// block that holds the text, with the allocator's header and 16-byte rounding
/// (glibc's and musl's smallest blocks are 32 bytes).
pub fn memory_cost(message: &str) -> usize {
    let heap = match message.len() {
        0 => 0,
        n => (n + 16).next_multiple_of(16).max(32),
    };
    2 * std::mem::size_of::<Event>() + heap
}

/// Splits a byte stream into messages. Invalid UTF-8 becomes U+FFFD; a line longer
/// than `max` bytes becomes consecutive messages of at most `max` bytes each, cut at
/// character boundaries; an empty line is skipped (CloudWatch requires 1 byte or
/// more) and counted by the caller.
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes; complete messages are appended to `out`. Returns empty lines seen.
    ///
    /// A read holds many whole lines: they are checked as UTF-8 once, together, and
    /// each copied once into its message; only the line carried over from the last
    /// read, and text that needs repair, go line by line.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<String>) -> usize {
        let Some((first, last)) = line_ends(data) else {
            self.carry(data, out);
            return 0;
        };
        let mut empty = 0;
        // The carried line ends here.
        self.buf.extend_from_slice(&data[..first]);
        if self.buf.is_empty() {
            empty += 1;
        }
        self.emit(out);
        // Whole lines only: both ends sit just after a newline.
        let body = &data[first + 1..=last];
        match std::str::from_utf8(body) {
            Ok(text) => {
                for line in lines(body) {
                    match &text[line] {
                        "" => empty += 1,
                        line if line.len() <= self.max => out.push(line.to_owned()),
                        line => split_message(line, self.max, out),
                    }
                }
            }
            Err(_) => {
                for line in lines(body) {
                    match &body[line] {
                        [] => empty += 1,
                        line => split_message(&String::from_utf8_lossy(line), self.max, out),
                    }
                }
            }
        }
        self.carry(&data[last + 1..], out);
        empty
    }

    /// Bytes of a line without an end yet: held, and cut as soon as the line can
    /// only grow past `max`.
    fn carry(&mut self, data: &[u8], out: &mut Vec<String>) {
        self.buf.extend_from_slice(data);
        while self.buf.len() > self.max * 2 {
            let cut = utf8_cut(&self.buf, self.max);
            let head: Vec<u8> = self.buf.drain(..cut).collect();
            split_message(&String::from_utf8_lossy(&head), self.max, out);
        }
    }

    /// What [`LineSplitter::push`] would make of `data`, counted without making it:
    /// the messages a sink that drops everything never reads. Whole lines of valid
    /// UTF-8 within the limit are counted where they lie in `data`, which is what
    /// keeps a discarding pipeline near the speed of the pipe; the rest (the line
    /// carried over from the last read, an invalid or over-long line, the unfinished
    /// tail) takes the ordinary path, so the counts are exactly those of `push`.
    pub fn count(&mut self, data: &[u8]) -> Counted {
        let mut c = Counted::default();
        let Some((first, last)) = line_ends(data) else {
            self.push_counted(data, &mut c);
            return c;
        };
        self.push_counted(&data[..=first], &mut c);
        // Whole lines only: both ends sit just after a newline.
        let body = &data[first + 1..=last];
        if std::str::from_utf8(body).is_ok() {
            for line in lines(body) {
                match line.len() {
                    0 => c.empty += 1,
                    n if n <= self.max => {
                        c.events += 1;
                        c.bytes += n as u64;
                    }
                    // With its newline, so it is a whole line to `push` too.
                    _ => self.push_counted(&body[line.start..=line.end], &mut c),
                }
            }
        } else {
            self.push_counted(body, &mut c);
        }
        self.push_counted(&data[last + 1..], &mut c);
        c
    }

    fn push_counted(&mut self, data: &[u8], c: &mut Counted) {
        if data.is_empty() {
            return;
        }
        let mut out = Vec::new();
        c.empty += self.push(data, &mut out) as u64;
        c.add(&out);
    }

    /// The partial last line, on a quiet pipe or at EOF.
    pub fn flush(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<String>) {
        let line = std::mem::take(&mut self.buf);
        if !line.is_empty() {
            split_message(&String::from_utf8_lossy(&line), self.max, out);
        }
    }
}

/// The first and the last newline of `data`: what lies between them (past the first,
/// through the last) is whole lines. None without a newline.
fn line_ends(data: &[u8]) -> Option<(usize, usize)> {
    Some((memchr::memchr(b'\n', data)?, memchr::memrchr(b'\n', data)?))
}

/// The lines of `body`, which ends with a newline, as ranges without their newlines.
fn lines(body: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    memchr::memchr_iter(b'\n', body).map(move |nl| {
        let line = start..nl;
        start = nl + 1;
        line
    })
}

/// Messages counted, not kept: see [`LineSplitter::count`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub events: u64,
    /// Message bytes (after UTF-8 repair), as the events would carry them.
    pub bytes: u64,
    pub empty: u64,
}

impl Counted {
    pub fn add(&mut self, messages: &[String]) {
        self.events += messages.len() as u64;
        self.bytes += messages.iter().map(|m| m.len() as u64).sum::<u64>();
    }
}

/// A cut point at or below `max` that does not split a UTF-8 sequence (if the bytes
/// are valid UTF-8 there; invalid bytes are replaced anyway).
fn utf8_cut(b: &[u8], max: usize) -> usize {
    let limit = max.min(b.len());
    (limit.saturating_sub(3)..=limit)
        .rev()
        .find(|&c| c > 0 && (c == b.len() || (b[c] & 0xC0) != 0x80))
        .unwrap_or(limit)
}

/// Split a message into pieces of at most `max` bytes at character boundaries.
pub fn split_message(s: &str, max: usize, out: &mut Vec<String>) {
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
}

/// How many events from the front of `events` make the next PutLogEvents batch:
/// within the byte and count limits and the 24-hour span. Events must already be in
/// chronological order (the capture clamps timestamps so they are).
pub fn next_batch<'a>(events: impl IntoIterator<Item = &'a Event>) -> usize {
    let mut n = 0;
    let mut bytes = 0;
    let mut first_ts = None;
    for e in events {
        let first = *first_ts.get_or_insert(e.timestamp_ms);
        if n == MAX_BATCH_EVENTS
            || bytes + e.cost() > MAX_BATCH_BYTES
            || e.timestamp_ms - first > MAX_BATCH_SPAN_MS
        {
            break;
        }
        bytes += e.cost();
        n += 1;
    }
    n
}

/// Timestamps never go backwards: a clock stepped back (a restored snapshot) must not
/// make a batch out of order, which would fail the whole PutLogEvents call.
pub fn clamp_timestamp(previous: i64, now: i64) -> i64 {
    previous.max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> (Vec<String>, usize) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut empty = 0;
        for c in chunks {
            empty += s.push(c, &mut out);
        }
        s.flush(&mut out);
        (out, empty)
    }

    #[test]
    fn lines_across_chunks_and_a_partial_last_line() {
        let (out, empty) = split(&[b"a\nb", b"c\n\nd", b"e"], 100);
        assert_eq!(out, ["a", "bc", "de"]);
        assert_eq!(empty, 1);
    }

    #[test]
    fn long_lines_are_split_never_truncated() {
        let line = "x".repeat(25);
        let (out, _) = split(&[line.as_bytes(), b"\n"], 10);
        assert_eq!(out, ["x".repeat(10), "x".repeat(10), "x".repeat(5)]);
        assert_eq!(out.concat(), line);
        // Multibyte characters are never cut in half.
        let line = "é".repeat(7); // 14 bytes
        let (out, _) = split(&[line.as_bytes(), b"\n"], 5);
        assert!(out.iter().all(|p| p.len() <= 5));
        assert_eq!(out.concat(), line);
    }

    #[test]
    fn an_endless_line_is_cut_while_it_streams() {
        let mut s = LineSplitter::new(8);
        let mut out = Vec::new();
        for _ in 0..10 {
            s.push(b"0123456789", &mut out);
        }
        assert!(s.pending() <= 16, "bounded: {}", s.pending());
        s.flush(&mut out);
        assert_eq!(out.concat(), "0123456789".repeat(10));
        assert!(out.iter().all(|p| p.len() <= 8));
    }

    #[test]
    fn invalid_utf8_is_replaced_and_still_bounded() {
        let garbage = vec![0xFFu8; 20];
        let (out, _) = split(&[&garbage, b"\n"], 10);
        // 20 invalid bytes become 20 U+FFFD (3 bytes each), split to fit.
        assert_eq!(out.concat(), "\u{FFFD}".repeat(20));
        assert!(out.iter().all(|p| p.len() <= 10));
        let (out, _) = split(&[b"ok \xF0\x9F\xA6\x80 crab \xC3\n"], 100);
        assert_eq!(out, ["ok 🦀 crab \u{FFFD}"]);
    }

    #[test]
    fn the_real_event_limit() {
        let line = vec![b'a'; MAX_EVENT_BYTES + 1];
        let (out, _) = split(&[&line, b"\n"], MAX_EVENT_BYTES);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_EVENT_BYTES);
        assert_eq!(out[1], "a");
    }

    fn ev(seq: u64, ts: i64, len: usize) -> Event {
        Event {
            seq,
            timestamp_ms: ts,
            message: "m".repeat(len),
        }
    }

    #[test]
    fn batches_respect_every_putlogevents_limit() {
        // Count: 10,000 per batch.
        let many: Vec<_> = (0..10_001).map(|i| ev(i, 0, 1)).collect();
        assert_eq!(next_batch(&many), 10_000);
        // Bytes, counting 26 per event: 1 MiB exactly fits, one more byte does not.
        let per = 1024 - EVENT_OVERHEAD;
        let exact: Vec<_> = (0..1024).map(|i| ev(i, 0, per)).collect();
        assert_eq!(
            exact.iter().map(Event::cost).sum::<usize>(),
            MAX_BATCH_BYTES
        );
        assert_eq!(next_batch(&exact), 1024);
        let mut over = exact.clone();
        over[1023].message.push('m');
        assert_eq!(next_batch(&over), 1023);
        // One maximal event is a batch of its own.
        let big = [ev(0, 0, MAX_EVENT_BYTES), ev(1, 0, 1)];
        assert_eq!(next_batch(&big), 1);
        // Span: 24 h from the first event is in, a millisecond more is out.
        let span = [
            ev(0, 0, 1),
            ev(1, MAX_BATCH_SPAN_MS, 1),
            ev(2, MAX_BATCH_SPAN_MS + 1, 1),
        ];
        assert_eq!(next_batch(&span), 2);
        assert_eq!(next_batch(&[] as &[Event]), 0);
    }

    #[test]
    fn timestamps_never_go_backwards() {
        assert_eq!(clamp_timestamp(100, 50), 100);
        assert_eq!(clamp_timestamp(100, 150), 150);
    }
}
