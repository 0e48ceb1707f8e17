//! The pipeline (capture -> buffer -> sender -> sink) through its seams: a sink that
//! accepts, fails or stalls on demand, and a wall clock the test moves.

use super::lines::Event;
use super::sink::{Delivery, PutError, Rejected, SinkFuture};
use super::*;
use crate::clock::Clock;
use microvm_protocol::status::WhenFull;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

#[derive(Default)]
struct TestSink {
    /// Sequence numbers of every accepted batch, in the order they arrived.
    batches: Mutex<Vec<Vec<u64>>>,
    /// Transient failures still to answer before accepting.
    fail_next: AtomicU32,
    permanent: Mutex<bool>,
    /// Refuse the credentials (expired) until cleared.
    expired: Mutex<bool>,
    stalled: Mutex<bool>,
    release: Notify,
    calls: AtomicU32,
}

impl TestSink {
    fn stall(&self, on: bool) {
        *self.stalled.lock().unwrap() = on;
        if !on {
            self.release.notify_waiters();
        }
    }

    fn delivered(&self) -> Vec<u64> {
        self.batches.lock().unwrap().concat()
    }
}

struct Shared(Arc<TestSink>);

impl Sink for Shared {
    fn put<'a>(&'a self, batch: &'a [Event]) -> SinkFuture<'a> {
        Box::pin(async move {
            let s = &self.0;
            s.calls.fetch_add(1, Ordering::SeqCst);
            loop {
                let released = s.release.notified();
                if !*s.stalled.lock().unwrap() {
                    break;
                }
                released.await;
            }
            if *s.permanent.lock().unwrap() {
                return Err(PutError::permanent("invalid on purpose"));
            }
            if *s.expired.lock().unwrap() {
                return Err(PutError::credentials("ExpiredTokenException on purpose"));
            }
            if s.fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(PutError::transient("throttled on purpose"));
            }
            s.batches
                .lock()
                .unwrap()
                .push(batch.iter().map(|e| e.seq).collect());
            Ok(Delivery::Sent(Rejected::default()))
        })
    }
}

/// The real wall clock plus an offset the test moves either way, and a monotonic
/// clock that stands still until the test moves it forward.
#[derive(Default)]
struct TestClock {
    wall: AtomicI64,
    mono: AtomicI64,
}

impl Clock for TestClock {
    fn unix_ms(&self) -> i64 {
        crate::clock::SystemClock.unix_ms() + self.wall.load(Ordering::SeqCst)
    }
    fn mono_ms(&self) -> u64 {
        // Moved by the test alone: batch ages never depend on how loaded the machine is.
        self.mono.load(Ordering::SeqCst) as u64
    }
}

struct Rig {
    logs: Arc<Logs>,
    sink: Arc<TestSink>,
    clock: Arc<TestClock>,
}

fn rig(buffer_bytes: usize, when_full: WhenFull) -> Rig {
    let sink = Arc::new(TestSink::default());
    let clock = Arc::new(TestClock::default());
    let s = sink.clone();
    let factory: SinkFactory = Box::new(move |d, _| match d {
        Destination::CloudWatch { .. } => Some(Arc::new(Shared(s.clone())) as Arc<dyn Sink>),
        Destination::Disabled => Some(Arc::new(Discard("LoggingDisabled"))),
        _ => None,
    });
    let settings = LogsSettings {
        buffer_bytes,
        when_full,
        mirror_to_console: false,
    };
    let logs = Logs::with(settings, factory, clock.clone());
    tokio::spawn(logs.clone().run_sender());
    Rig { logs, sink, clock }
}

fn cloudwatch() -> Destination {
    Destination::CloudWatch {
        log_group: "g".into(),
        log_stream: "s".into(),
        region: "r".into(),
        endpoint: None,
    }
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("line {i:06}")).collect()
}

/// Captured = sent + dropped + buffered: nothing vanishes uncounted.
fn balanced(logs: &Logs) {
    let s = logs.status();
    let c = &s.counters;
    assert_eq!(
        c.captured_events,
        c.sent_events + c.dropped_events + s.buffered_events as u64,
        "{s:?}"
    );
    assert_eq!(
        c.captured_bytes,
        c.sent_bytes + c.dropped_bytes + s.buffered_message_bytes,
        "{s:?}"
    );
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn lines_before_run_wait_then_leave_in_order_in_lawful_batches() {
    let r = rig(64 << 20, WhenFull::Block);
    r.logs.push(lines(0..25_000)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.sink.delivered().is_empty(), "no destination before /run");
    r.logs.configure(cloudwatch(), None);
    assert!(r.logs.flush(5 * SECOND).await);
    assert_eq!(r.sink.delivered(), (0..25_000).collect::<Vec<u64>>());
    let sizes: Vec<usize> = r
        .sink
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, [10_000, 10_000, 5_000]);
    let s = r.logs.status();
    assert_eq!(s.counters.sent_events, 25_000);
    assert_eq!(s.counters.sent_batches, 3);
    assert_eq!(s.buffered_events, 0);
    balanced(&r.logs);
}

#[tokio::test]
async fn block_stops_capture_while_full_and_loses_nothing() {
    // Room for about ten lines.
    let r = rig(10 * 40, WhenFull::Block);
    r.logs.configure(cloudwatch(), None);
    r.sink.stall(true);
    let logs = r.logs.clone();
    let writer = tokio::spawn(async move { logs.push(lines(0..100)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "the writer must wait for room");
    balanced(&r.logs);
    r.sink.stall(false);
    tokio::time::timeout(5 * SECOND, writer)
        .await
        .unwrap()
        .unwrap();
    assert!(r.logs.flush(5 * SECOND).await);
    assert_eq!(r.sink.delivered(), (0..100).collect::<Vec<u64>>());
    assert_eq!(r.logs.status().counters.dropped_events, 0);
    balanced(&r.logs);
}

#[tokio::test]
async fn drop_oldest_counts_what_it_drops_and_flush_waits_for_the_batch_in_flight() {
    let r = rig(
        10 * super::lines::memory_cost("line 000000"),
        WhenFull::DropOldest,
    );
    r.logs.configure(cloudwatch(), None);
    r.sink.stall(true);
    r.logs.push(lines(0..5)).await;
    // The sender takes those five and the sink holds them.
    while r.sink.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        r.logs.flush(Duration::ZERO).await;
    }
    // A flush asked now covers the five the sink holds; the lines that follow evict
    // queued ones, which must not count as resolving the batch in flight.
    let logs = r.logs.clone();
    let early = tokio::spawn(async move { logs.flush(Duration::from_millis(400)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.logs.push(lines(5..100)).await;
    balanced(&r.logs);
    let s = r.logs.status();
    assert!(s.counters.dropped_by_reason["BufferFull"] > 0, "{s:?}");
    // Not done while the sink holds a batch: neither sent nor counted yet.
    assert!(!early.await.unwrap(), "the held batch is not flushed");
    r.sink.stall(false);
    assert!(r.logs.flush(5 * SECOND).await);
    let s = r.logs.status();
    assert_eq!(s.counters.captured_events, 100);
    assert_eq!(s.counters.sent_events + s.counters.dropped_events, 100);
    let delivered = r.sink.delivered();
    assert_eq!(
        &delivered[..5],
        [0, 1, 2, 3, 4],
        "the held batch went first"
    );
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(*delivered.last().unwrap(), 99, "the newest are kept");
    balanced(&r.logs);
}

#[tokio::test]
async fn a_throttled_batch_is_retried_whole_and_delivered_once() {
    let r = rig(64 << 20, WhenFull::Block);
    r.sink.fail_next.store(2, Ordering::SeqCst);
    r.logs.configure(cloudwatch(), None);
    r.logs.push(lines(0..10)).await;
    assert!(r.logs.flush(10 * SECOND).await);
    assert_eq!(
        *r.sink.batches.lock().unwrap(),
        [(0..10).collect::<Vec<u64>>()]
    );
    let s = r.logs.status();
    assert_eq!(s.counters.retries, 2);
    assert_eq!(s.last_error, None, "cleared once the batch went");
    balanced(&r.logs);
}

#[tokio::test]
async fn a_batch_the_service_refuses_for_good_is_dropped_and_counted() {
    let r = rig(64 << 20, WhenFull::Block);
    *r.sink.permanent.lock().unwrap() = true;
    r.logs.configure(cloudwatch(), None);
    r.logs.push(lines(0..7)).await;
    assert!(r.logs.flush(5 * SECOND).await);
    let s = r.logs.status();
    assert_eq!(s.counters.dropped_by_reason["InvalidBatch"], 7);
    assert_eq!(s.counters.retries, 0);
    assert!(s.last_error.unwrap().contains("invalid on purpose"));
    balanced(&r.logs);
}

#[tokio::test]
async fn disabled_logging_drops_everything_counted() {
    let r = rig(64 << 20, WhenFull::Block);
    r.logs.push(lines(0..30)).await;
    r.logs.configure(Destination::Disabled, None);
    assert!(r.logs.flush(5 * SECOND).await);
    let s = r.logs.status();
    assert_eq!(s.counters.dropped_by_reason["LoggingDisabled"], 30);
    assert_eq!(s.counters.sent_batches, 0);
    assert!(r.sink.delivered().is_empty());
    balanced(&r.logs);
}

#[tokio::test]
async fn a_batch_waits_for_its_age_unless_someone_flushes() {
    let r = rig(64 << 20, WhenFull::Block);
    r.logs.configure(cloudwatch(), None);
    r.logs.push(lines(0..3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.sink.delivered().is_empty(), "younger than a second");
    // An hour back on the wall clock changes nothing; a second on the monotonic does.
    r.clock.wall.fetch_sub(3_600_000, Ordering::SeqCst);
    r.logs.wake_sender.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(r.sink.delivered().is_empty(), "still younger than a second");
    r.clock.mono.fetch_add(1_000, Ordering::SeqCst);
    r.logs.wake_sender.notify_one();
    let t0 = Instant::now();
    while r.sink.delivered().is_empty() {
        assert!(t0.elapsed() < 5 * SECOND, "an aged batch must go");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.sink.delivered(), [0, 1, 2]);
}

#[tokio::test]
async fn flush_answers_by_its_deadline_even_when_capture_is_blocked() {
    // The bug this guards: with the buffer full under `block` and the sink stuck, the
    // flush pushed the partial last line and waited for room without limit, so
    // /terminate never answered and the VM never powered off.
    let r = rig(10 * 40, WhenFull::Block);
    r.logs.configure(cloudwatch(), None);
    r.sink.stall(true);
    let fd = r.logs.pipe().unwrap();
    let mut out = std::fs::File::from(fd);
    use std::io::Write;
    let mut text = String::new();
    for l in lines(0..100) {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str("a partial last line");
    out.write_all(text.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let done = tokio::time::timeout(5 * SECOND, r.logs.flush(Duration::from_millis(300)))
        .await
        .expect("flush must answer by its deadline");
    assert!(!done, "nothing could be sent: not flushed");
    assert!(t0.elapsed() < SECOND, "{:?}", t0.elapsed());
    r.sink.stall(false);
    assert!(r.logs.flush(10 * SECOND).await);
    let delivered = r.sink.delivered();
    assert_eq!(
        delivered,
        (0..101).collect::<Vec<u64>>(),
        "in order, tail last"
    );
    balanced(&r.logs);
}

/// Refused credentials never freeze the application: under `block`, once the service
/// has refused them for the grace period, the oldest events are dropped (counted as
/// `CredentialsRefused`) instead of blocking the writer; new credentials resume
/// delivery, and nothing captured vanishes uncounted.
#[tokio::test]
async fn refused_credentials_drop_after_a_grace_instead_of_blocking() {
    let limit = 10 * super::lines::memory_cost("line 000000");
    let r = rig(limit, WhenFull::Block);
    *r.sink.expired.lock().unwrap() = true;
    r.logs.configure(cloudwatch(), None);
    r.logs.push(lines(0..5)).await;
    r.logs.flush(Duration::ZERO).await;
    while r.logs.lock().credentials_refused_since.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Within the grace the writer waits (block, as usual).
    let logs = r.logs.clone();
    let writer = tokio::spawn(async move { logs.push(lines(5..100)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "within the grace a full buffer blocks"
    );
    assert_eq!(r.logs.status().counters.dropped_events, 0);
    // Past the grace it drops the oldest instead, and the writer finishes.
    r.clock
        .mono
        .fetch_add(CREDENTIALS_GRACE.as_millis() as i64, Ordering::SeqCst);
    tokio::time::timeout(5 * SECOND, writer)
        .await
        .unwrap()
        .unwrap();
    let s = r.logs.status();
    assert!(
        s.counters.dropped_by_reason["CredentialsRefused"] > 0,
        "{s:?}"
    );
    balanced(&r.logs);
    // New credentials: delivery resumes at once, blocking again when full.
    *r.sink.expired.lock().unwrap() = false;
    r.logs.update_credentials(&Credentials {
        access_key_id: "AK2".into(),
        secret_access_key: "SK2".into(),
        session_token: None,
        expiration: None,
    });
    assert!(r.logs.flush(5 * SECOND).await);
    assert!(r.logs.lock().credentials_refused_since.is_none());
    let s = r.logs.status();
    assert_eq!(s.counters.captured_events, 100);
    assert_eq!(s.counters.sent_events + s.counters.dropped_events, 100);
    let delivered = r.sink.delivered();
    assert_eq!(
        &delivered[..5],
        [0, 1, 2, 3, 4],
        "the batch held went first"
    );
    assert_eq!(*delivered.last().unwrap(), 99, "the newest are kept");
    balanced(&r.logs);
}

/// From `/suspend` to `/resume` nothing leaves: a hold waits for the batch under way,
/// lines written meanwhile are kept, and they go, in order, once released.
#[tokio::test]
async fn a_hold_waits_for_the_batch_under_way_and_sends_nothing_until_released() {
    let r = rig(64 << 20, WhenFull::Block);
    r.logs.configure(cloudwatch(), None);
    r.sink.stall(true);
    r.logs.push(lines(0..10)).await;
    while r.sink.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        r.logs.flush(Duration::ZERO).await;
    }
    // The batch is in the sink's hands: the hold is not done within its deadline.
    assert!(!r.logs.hold(Duration::from_millis(100)).await);
    let logs = r.logs.clone();
    let hold = tokio::spawn(async move { logs.hold(5 * SECOND).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.sink.stall(false);
    assert!(hold.await.unwrap(), "done once the batch was answered");
    assert_eq!(r.sink.delivered(), (0..10).collect::<Vec<u64>>());
    // Held: new lines are captured and stay, even when a flush hurries the sender.
    r.logs.push(lines(10..20)).await;
    assert!(!r.logs.flush(Duration::from_millis(300)).await);
    assert_eq!(
        r.sink.calls.load(Ordering::SeqCst),
        1,
        "no request while held"
    );
    assert_eq!(r.logs.status().buffered_events, 10);
    balanced(&r.logs);
    r.logs.release();
    assert!(r.logs.flush(5 * SECOND).await);
    assert_eq!(r.sink.delivered(), (0..20).collect::<Vec<u64>>());
    balanced(&r.logs);
}

/// A batch whose delivery fails while a hold is asked goes back to the queue's head
/// instead of being retried during the hold, and leaves first after the release.
#[tokio::test]
async fn a_failing_batch_is_requeued_by_a_hold_and_keeps_its_place() {
    let r = rig(64 << 20, WhenFull::Block);
    r.logs.configure(cloudwatch(), None);
    r.sink.fail_next.store(u32::MAX, Ordering::SeqCst);
    r.logs.push(lines(0..5)).await;
    while r.sink.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        r.logs.flush(Duration::ZERO).await;
    }
    assert!(
        r.logs.hold(5 * SECOND).await,
        "the retry pause ends at the hold"
    );
    let calls = r.sink.calls.load(Ordering::SeqCst);
    r.sink.fail_next.store(0, Ordering::SeqCst);
    r.logs.push(lines(5..8)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.sink.calls.load(Ordering::SeqCst),
        calls,
        "no retry while held"
    );
    r.logs.release();
    assert!(r.logs.flush(5 * SECOND).await);
    assert_eq!(r.sink.delivered(), (0..8).collect::<Vec<u64>>());
    balanced(&r.logs);
}
