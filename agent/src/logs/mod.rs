//! The application's stdout and stderr: captured through pipes, split into events,
//! buffered (bounded), and sent to CloudWatch Logs or dropped per the logging union.
//!
//! Every event gets a sequence number when captured; the sender acknowledges events
//! in order once they are sent, dropped or rejected. A flush waits until the pipes are
//! drained and everything captured before it is acknowledged, which is what /suspend
//! and /terminate need: nothing written before they were asked for is lost.

pub mod cloudwatch;
pub mod lines;

use crate::config::{Credentials, Logging, LogsSettings, WhenFull};
use lines::{Event, LineSplitter};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// A line still open after this long is sent as it is.
pub const PARTIAL_LINE_FLUSH: Duration = Duration::from_millis(250);
/// Oldest an event may wait before its batch is sent.
pub const MAX_BATCH_AGE: Duration = Duration::from_secs(1);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Where events go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Destination {
    /// Before /run: the destination is not known yet; events wait in the buffer.
    Pending,
    /// `{"disabled":{}}`: dropped, counted.
    Disabled,
    /// No execution role: nothing can leave, so nothing is kept (as on the platform).
    NoCredentials,
    #[serde(rename_all = "camelCase")]
    CloudWatch {
        log_group: String,
        log_stream: String,
        region: String,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub captured_events: u64,
    pub captured_bytes: u64,
    pub sent_events: u64,
    pub sent_bytes: u64,
    pub sent_batches: u64,
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    pub retries: u64,
    pub empty_lines_skipped: u64,
}

struct State {
    queue: VecDeque<Event>,
    queued_bytes: usize,
    next_seq: u64,
    /// Every event with a lower sequence number is sent, dropped or rejected.
    acked: u64,
    /// Sequence numbers of the batch being sent, which left `queue`.
    in_flight: Option<(u64, u64)>,
    last_ts: i64,
    destination: Destination,
    sink: Option<Arc<cloudwatch::CloudWatch>>,
    counters: Counters,
    last_error: Option<String>,
    flush_requested: bool,
}

/// A pipe being read, for drain detection.
struct Reader {
    fd: i32,
    /// Bytes read from the pipe but not yet turned into events.
    unprocessed: AtomicU64,
    splitter: Mutex<LineSplitter>,
}

pub struct Logs {
    state: Mutex<State>,
    settings: LogsSettings,
    /// New events, a flush request, or a new destination or credentials.
    wake_sender: Notify,
    /// Buffer space freed or events acknowledged.
    progress: Notify,
    readers: Mutex<Vec<Arc<Reader>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Bytes waiting in a pipe (FIONREAD).
fn pipe_pending(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid and ours.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD as _, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// The effective logging union: the run's, else the image's, else CloudWatch defaults.
pub fn effective(run: Option<&Logging>, image: Option<&Logging>) -> Logging {
    run.or(image)
        .cloned()
        .unwrap_or(Logging::CloudWatch(Default::default()))
}

/// Where the effective union sends events, for this image and MicroVM.
pub fn destination(
    logging: &Logging,
    image_name: &str,
    microvm_id: &str,
    region: Option<&str>,
    has_credentials: bool,
) -> Result<Destination, String> {
    match logging {
        Logging::Disabled(_) => Ok(Destination::Disabled),
        Logging::CloudWatch(_) if !has_credentials => Ok(Destination::NoCredentials),
        Logging::CloudWatch(cw) => {
            let region = region
                .map(str::to_string)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .ok_or("no region: the run request carries none and AWS_REGION is unset")?;
            Ok(Destination::CloudWatch {
                log_group: cw
                    .log_group
                    .clone()
                    .unwrap_or_else(|| format!("/aws/lambda-microvms/{image_name}")),
                log_stream: cw
                    .log_stream
                    .clone()
                    .unwrap_or_else(|| microvm_id.to_string()),
                region,
            })
        }
    }
}

/// Exponential backoff with full jitter, from a cheap xorshift (no crypto needed).
fn backoff(attempt: u32, seed: &mut u64) -> Duration {
    let cap = (BACKOFF_INITIAL * 2u32.saturating_pow(attempt.min(10))).min(BACKOFF_CAP);
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let ms = cap.as_millis() as u64;
    Duration::from_millis(ms / 2 + *seed % (ms / 2 + 1))
}

impl Logs {
    pub fn new(settings: LogsSettings) -> Arc<Self> {
        Arc::new(Logs {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                next_seq: 0,
                acked: 0,
                in_flight: None,
                last_ts: 0,
                destination: Destination::Pending,
                sink: None,
                counters: Counters::default(),
                last_error: None,
                flush_requested: false,
            }),
            settings,
            wake_sender: Notify::new(),
            progress: Notify::new(),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pipe whose write end the application gets as stdout or stderr.
    pub fn pipe(self: &Arc<Self>) -> std::io::Result<OwnedFd> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let reader = Arc::new(Reader {
            fd: read.as_raw_fd(),
            unprocessed: AtomicU64::new(0),
            splitter: Mutex::new(LineSplitter::new(lines::MAX_EVENT_BYTES)),
        });
        if let Ok(mut r) = self.readers.lock() {
            r.push(reader.clone());
        }
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        tokio::spawn(self.clone().read_pipe(rx, reader));
        Ok(write)
    }

    async fn read_pipe(self: Arc<Self>, mut rx: tokio::net::unix::pipe::Receiver, r: Arc<Reader>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout(PARTIAL_LINE_FLUSH, rx.read(&mut buf)).await {
                Err(_) => {
                    self.flush_partial(&r).await;
                    continue;
                }
                Ok(Ok(0)) => {
                    self.flush_partial(&r).await;
                    return;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::error!("reading the application's output: {e}");
                    return;
                }
            };
            r.unprocessed.fetch_add(n as u64, Ordering::SeqCst);
            let mut msgs = Vec::new();
            let empty = match r.splitter.lock() {
                Ok(mut s) => s.push(&buf[..n], &mut msgs),
                Err(_) => 0,
            };
            if empty > 0 {
                self.lock().counters.empty_lines_skipped += empty as u64;
            }
            self.push(msgs).await;
            r.unprocessed.fetch_sub(n as u64, Ordering::SeqCst);
        }
    }

    async fn flush_partial(&self, r: &Reader) {
        let mut msgs = Vec::new();
        if let Ok(mut s) = r.splitter.lock() {
            s.flush(&mut msgs);
        }
        self.push(msgs).await;
    }

    /// Queue captured messages, applying the buffer policy.
    async fn push(&self, msgs: Vec<String>) {
        for message in msgs {
            if self.settings.mirror_to_console {
                eprintln!("app| {message}");
            }
            let cost = message.len() + lines::EVENT_OVERHEAD;
            let mut message = Some(message);
            while let Some(m) = message.take() {
                // Not reading the pipe while the buffer is full is what blocks the
                // application's write under the `block` policy.
                let wait = {
                    let mut st = self.lock();
                    let full =
                        st.queued_bytes + cost > self.settings.buffer_bytes && !st.queue.is_empty();
                    if full && self.settings.when_full == WhenFull::Block {
                        message = Some(m);
                        Some(self.progress.notified())
                    } else {
                        self.enqueue(&mut st, m, cost);
                        None
                    }
                };
                if let Some(w) = wait {
                    self.wake_sender.notify_one();
                    w.await;
                }
            }
        }
        self.wake_sender.notify_one();
    }

    fn enqueue(&self, st: &mut State, message: String, cost: usize) {
        while st.queued_bytes + cost > self.settings.buffer_bytes {
            let Some(old) = st.queue.pop_front() else {
                break;
            };
            st.queued_bytes -= old.cost();
            st.acked = st.acked.max(old.seq + 1);
            drop_counted(&mut st.counters, &old, "BufferFull");
        }
        let ts = lines::clamp_timestamp(st.last_ts, now_ms());
        st.last_ts = ts;
        let seq = st.next_seq;
        st.next_seq += 1;
        st.counters.captured_events += 1;
        st.counters.captured_bytes += message.len() as u64;
        st.queued_bytes += cost;
        st.queue.push_back(Event {
            seq,
            timestamp_ms: ts,
            message,
        });
    }

    /// Decide where events go (at /run); events buffered so far follow.
    pub fn configure(&self, destination: Destination, credentials: Option<&Credentials>) {
        let sink = match (&destination, credentials) {
            (
                Destination::CloudWatch {
                    log_group,
                    log_stream,
                    region,
                },
                Some(c),
            ) => Some(Arc::new(cloudwatch::CloudWatch::new(
                region, c, log_group, log_stream,
            ))),
            _ => None,
        };
        tracing::info!(?destination, "application logs");
        let mut st = self.lock();
        st.destination = destination;
        st.sink = sink;
        drop(st);
        self.wake_sender.notify_one();
    }

    /// New credentials (a /resume, or a refreshed set): rebuild the client, retry now.
    pub fn update_credentials(&self, c: &Credentials) {
        let mut st = self.lock();
        if let Destination::CloudWatch {
            log_group,
            log_stream,
            region,
        } = &st.destination
        {
            st.sink = Some(Arc::new(cloudwatch::CloudWatch::new(
                region, c, log_group, log_stream,
            )));
            st.last_error = None;
        }
        drop(st);
        self.wake_sender.notify_one();
    }

    /// Send or drop everything captured up to now, within `deadline`. True if done.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        // 1. The pipes are drained and every byte read has become an event.
        let readers: Vec<Arc<Reader>> = self.readers.lock().map(|r| r.clone()).unwrap_or_default();
        loop {
            let busy = readers
                .iter()
                .any(|r| pipe_pending(r.fd) > 0 || r.unprocessed.load(Ordering::SeqCst) > 0);
            if !busy || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for r in &readers {
            self.flush_partial(r).await;
        }
        // 2. Everything captured so far is acknowledged.
        let target = self.lock().next_seq;
        loop {
            let progress = self.progress.notified();
            {
                let mut st = self.lock();
                if st.acked >= target {
                    return true;
                }
                st.flush_requested = true;
            }
            self.wake_sender.notify_one();
            if tokio::time::timeout_at(until.into(), progress)
                .await
                .is_err()
            {
                return self.lock().acked >= target;
            }
        }
    }

    /// The sender: one batch at a time, in order, retried until it is accepted.
    pub async fn run_sender(self: Arc<Self>) {
        let mut seed = now_ms() as u64 | 1;
        loop {
            let (batch, mut sink) = self.next_batch().await;
            let mut attempt = 0;
            loop {
                match sink.put(&batch).await {
                    Ok(rejected) => {
                        self.ack_sent(&batch, &rejected);
                        break;
                    }
                    Err(e) if e.is_permanent() => {
                        tracing::error!("PutLogEvents refused a batch for good: {e}");
                        self.ack_dropped(&batch, "InvalidBatch", Some(e.to_string()));
                        break;
                    }
                    Err(e) => {
                        let pause = backoff(attempt, &mut seed);
                        attempt += 1;
                        {
                            let mut st = self.lock();
                            st.counters.retries += 1;
                            st.last_error = Some(e.to_string());
                        }
                        tracing::warn!(attempt, "PutLogEvents: {e}; retrying in {pause:?}");
                        // New credentials cut the wait short.
                        let _ = tokio::time::timeout(pause, self.wake_sender.notified()).await;
                        let current = self.lock().sink.clone();
                        match current {
                            // New credentials: the same batch, through the new client.
                            Some(current) => sink = current,
                            // The destination changed under us: apply the new rule.
                            None => {
                                self.requeue(batch);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Put an unsent batch back at the front, in order.
    fn requeue(&self, batch: Vec<Event>) {
        let mut st = self.lock();
        for e in batch.into_iter().rev() {
            st.queued_bytes += e.cost();
            st.queue.push_front(e);
        }
        st.in_flight = None;
    }

    /// Wait for the next batch to send; drops what the destination says to drop.
    async fn next_batch(&self) -> (Vec<Event>, Arc<cloudwatch::CloudWatch>) {
        enum Next {
            Send(Vec<Event>, Arc<cloudwatch::CloudWatch>),
            Drop(Vec<Event>, &'static str),
            Wait(Option<Duration>),
        }
        loop {
            let wake = self.wake_sender.notified();
            let next = {
                let mut st = self.lock();
                match (st.destination.clone(), st.sink.clone()) {
                    (Destination::Disabled, _) | (Destination::NoCredentials, _) => {
                        let reason = if st.destination == Destination::Disabled {
                            "LoggingDisabled"
                        } else {
                            "NoCredentials"
                        };
                        st.queued_bytes = 0;
                        Next::Drop(st.queue.drain(..).collect(), reason)
                    }
                    (Destination::CloudWatch { .. }, Some(sink)) if !st.queue.is_empty() => {
                        let age = st
                            .queue
                            .front()
                            .map(|e| now_ms().saturating_sub(e.timestamp_ms))
                            .unwrap_or(0);
                        let n = lines::next_batch(st.queue.iter());
                        let full = n < st.queue.len();
                        let max_age = MAX_BATCH_AGE.as_millis() as i64;
                        if full || st.flush_requested || age >= max_age {
                            let batch: Vec<Event> = st.queue.drain(..n).collect();
                            st.queued_bytes -= batch.iter().map(Event::cost).sum::<usize>();
                            if st.queue.is_empty() {
                                st.flush_requested = false;
                            }
                            st.in_flight =
                                batch.first().zip(batch.last()).map(|(a, b)| (a.seq, b.seq));
                            Next::Send(batch, sink)
                        } else {
                            Next::Wait(Some(Duration::from_millis((max_age - age).max(1) as u64)))
                        }
                    }
                    _ => {
                        st.flush_requested = false;
                        Next::Wait(None)
                    }
                }
            };
            match next {
                Next::Send(batch, sink) => {
                    self.progress.notify_waiters();
                    return (batch, sink);
                }
                Next::Drop(batch, reason) => {
                    if !batch.is_empty() {
                        self.ack_dropped(&batch, reason, None);
                    } else {
                        wake.await;
                    }
                }
                Next::Wait(Some(d)) => {
                    let _ = tokio::time::timeout(d, wake).await;
                }
                Next::Wait(None) => wake.await,
            }
        }
    }

    fn ack_sent(&self, batch: &[Event], rejected: &cloudwatch::Rejected) {
        let mut st = self.lock();
        for (i, e) in batch.iter().enumerate() {
            match rejected.reason(i) {
                Some(reason) => drop_counted(&mut st.counters, e, reason),
                None => {
                    st.counters.sent_events += 1;
                    st.counters.sent_bytes += e.message.len() as u64;
                }
            }
        }
        st.counters.sent_batches += 1;
        if let Some(last) = batch.last() {
            st.acked = st.acked.max(last.seq + 1);
        }
        st.in_flight = None;
        st.last_error = None;
        drop(st);
        self.progress.notify_waiters();
    }

    fn ack_dropped(&self, batch: &[Event], reason: &str, error: Option<String>) {
        let mut st = self.lock();
        for e in batch {
            drop_counted(&mut st.counters, e, reason);
        }
        if let Some(last) = batch.last() {
            st.acked = st.acked.max(last.seq + 1);
        }
        st.in_flight = None;
        if error.is_some() {
            st.last_error = error;
        }
        drop(st);
        self.progress.notify_waiters();
    }

    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        serde_json::json!({
            "destination": st.destination,
            "counters": st.counters,
            "bufferedEvents": st.queue.len() + st.in_flight.map(|(a, b)| (b - a + 1) as usize).unwrap_or(0),
            "bufferedBytes": st.queued_bytes,
            "bufferLimitBytes": self.settings.buffer_bytes,
            "whenFull": self.settings.when_full,
            "lastError": st.last_error,
            "why": match st.destination {
                Destination::NoCredentials => Some("no credentials in the run (no execution role): application logs are dropped, as on the platform"),
                Destination::Disabled => Some("logging is disabled for this run"),
                Destination::Pending => Some("waiting for /run to decide the destination"),
                _ => None,
            },
        })
    }
}

fn drop_counted(c: &mut Counters, e: &Event, reason: &str) {
    c.dropped_events += 1;
    c.dropped_bytes += e.message.len() as u64;
    *c.dropped_by_reason.entry(reason.to_string()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CloudWatchLogging, Empty};

    #[test]
    fn effective_union_precedence() {
        let off = Logging::Disabled(Empty {});
        let cw = Logging::CloudWatch(CloudWatchLogging {
            log_group: Some("/g".into()),
            log_stream: None,
        });
        assert_eq!(effective(Some(&off), Some(&cw)), off);
        assert_eq!(effective(None, Some(&cw)), cw);
        assert_eq!(
            effective(None, None),
            Logging::CloudWatch(CloudWatchLogging::default())
        );
    }

    #[test]
    fn destinations_and_defaults() {
        let cw = Logging::CloudWatch(CloudWatchLogging::default());
        assert_eq!(
            destination(&cw, "img", "mvm-1", Some("eu-west-1"), true).unwrap(),
            Destination::CloudWatch {
                log_group: "/aws/lambda-microvms/img".into(),
                log_stream: "mvm-1".into(),
                region: "eu-west-1".into()
            }
        );
        assert_eq!(
            destination(&cw, "img", "mvm-1", Some("eu-west-1"), false).unwrap(),
            Destination::NoCredentials
        );
        assert_eq!(
            destination(&Logging::Disabled(Empty {}), "img", "m", None, true).unwrap(),
            Destination::Disabled
        );
        let named = Logging::CloudWatch(CloudWatchLogging {
            log_group: Some("/mine".into()),
            log_stream: Some("s".into()),
        });
        match destination(&named, "img", "m", Some("r"), true).unwrap() {
            Destination::CloudWatch {
                log_group,
                log_stream,
                ..
            } => {
                assert_eq!((log_group.as_str(), log_stream.as_str()), ("/mine", "s"))
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut seed = 12345;
        for attempt in 0..20 {
            let cap = (BACKOFF_INITIAL * 2u32.pow(attempt.min(10))).min(BACKOFF_CAP);
            let d = backoff(attempt, &mut seed);
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?} vs {cap:?}");
        }
    }
}
