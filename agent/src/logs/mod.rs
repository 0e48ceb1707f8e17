//! The application's stdout and stderr: captured through pipes, split into events,
//! buffered (bounded), and sent to CloudWatch Logs or dropped per the logging union.
//!
//! - `capture`: pipes, line splitting, the buffer policy applied to each line;
//! - `buffer`: the bounded queue, sequence numbers and counters (pure);
//! - `sender`: one batch at a time to the sink, in order, retried with backoff;
//! - `sink`: where batches go (CloudWatch, discard);
//! - `destination`: which logging union applies and where it points.
//!
//! A flush waits until the pipes are drained and everything captured before it is
//! resolved (sent, dropped or rejected), which is what /suspend and /terminate need:
//! nothing written before they were asked for is lost.

mod buffer;
mod capture;
pub mod destination;
pub mod lines;
#[cfg(test)]
mod props;
mod sender;
pub mod sink;
#[cfg(test)]
mod tests;

use crate::clock::{Clock, SystemClock};
use crate::config::LogsSettings;
use buffer::Buffer;
use capture::Reader;
pub use destination::{destination, effective, Destination};
use microvm_protocol::run::Credentials;
use microvm_protocol::status::LogsStatus;
use sink::{Discard, Sink};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A line still open after this long is sent as it is.
pub const PARTIAL_LINE_FLUSH: Duration = Duration::from_millis(250);
/// Oldest an event may wait before its batch is sent.
pub const MAX_BATCH_AGE: Duration = Duration::from_secs(1);
/// Under `block`, how long the application may wait for room while the service
/// refuses the credentials. Past it, only new credentials could free room, so the
/// application is never made to wait on the host: the oldest events are dropped
/// (counted as `CredentialsRefused`) until new credentials arrive.
pub const CREDENTIALS_GRACE: Duration = Duration::from_secs(10);

/// Builds the sink for a destination (with the run's credentials, if any). The agent
/// uses [`real_sinks`]; tests plug in sinks that stall or fail on demand.
pub type SinkFactory =
    Box<dyn Fn(&Destination, Option<&Credentials>) -> Option<Arc<dyn Sink>> + Send + Sync>;

/// CloudWatch for a CloudWatch destination with credentials, discard for the
/// destinations that send nothing, none while the destination is not known yet.
pub fn real_sinks() -> SinkFactory {
    Box::new(|d, creds| match (d, creds) {
        (Destination::Pending, _) => None,
        (Destination::Disabled, _) => Some(Arc::new(Discard("LoggingDisabled")) as Arc<dyn Sink>),
        (Destination::NoCredentials, _) | (Destination::CloudWatch { .. }, None) => {
            Some(Arc::new(Discard("NoCredentials")))
        }
        (
            Destination::CloudWatch {
                log_group,
                log_stream,
                region,
                endpoint,
            },
            Some(c),
        ) => Some(Arc::new(sink::cloudwatch::CloudWatch::new(
            region,
            endpoint.as_deref(),
            c,
            log_group,
            log_stream,
        ))),
    })
}

struct State {
    buffer: Buffer,
    destination: Destination,
    sink: Option<Arc<dyn Sink>>,
    last_error: Option<String>,
    flush_requested: bool,
    /// Monotonic ms since the service first refused the current credentials; None
    /// while they work (or since new ones arrived).
    credentials_refused_since: Option<u64>,
    /// From `/suspend` to `/resume`: no batch leaves. A request under way while the
    /// VM is saved is cut, and its retry after the restore would send twice what the
    /// service had already taken.
    held: bool,
    /// A batch is in the sender's hands.
    in_flight: bool,
}

pub struct Logs {
    state: Mutex<State>,
    settings: LogsSettings,
    /// New events, a flush request, or a new destination or credentials.
    wake_sender: Notify,
    /// A new destination or credentials only: what cuts a retry pause short (new
    /// events must not, or a chatty application would defeat the backoff).
    sink_changed: Notify,
    /// Buffer space freed or events resolved.
    progress: Notify,
    readers: Mutex<Vec<Arc<Reader>>>,
    sinks: SinkFactory,
    clock: Arc<dyn Clock>,
}

impl Logs {
    pub fn new(settings: LogsSettings) -> Arc<Self> {
        Self::with(settings, real_sinks(), Arc::new(SystemClock))
    }

    /// The pipeline with its seams chosen: where batches go, and what time it is.
    pub fn with(settings: LogsSettings, sinks: SinkFactory, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Logs {
            state: Mutex::new(State {
                buffer: Buffer::new(settings.buffer_bytes, settings.when_full),
                destination: Destination::Pending,
                sink: None,
                last_error: None,
                flush_requested: false,
                credentials_refused_since: None,
                held: false,
                in_flight: false,
            }),
            settings,
            wake_sender: Notify::new(),
            sink_changed: Notify::new(),
            progress: Notify::new(),
            readers: Mutex::new(Vec::new()),
            sinks,
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide where events go (at /run); events buffered so far follow.
    pub fn configure(&self, destination: Destination, credentials: Option<&Credentials>) {
        let sink = (self.sinks)(&destination, credentials);
        tracing::info!(?destination, "application logs");
        let mut st = self.lock();
        st.destination = destination;
        st.sink = sink;
        drop(st);
        self.wake_sender.notify_one();
        self.sink_changed.notify_one();
    }

    /// New credentials (a /resume, or a refreshed set): rebuild the sink, retry now.
    pub fn update_credentials(&self, c: &Credentials) {
        let destination = self.lock().destination.clone();
        if !matches!(destination, Destination::CloudWatch { .. }) {
            return;
        }
        // Building a client sets up TLS: not under the lock capture and status share.
        let sink = (self.sinks)(&destination, Some(c));
        let mut st = self.lock();
        if st.destination == destination {
            st.sink = sink;
            st.last_error = None;
            st.credentials_refused_since = None;
        }
        drop(st);
        self.wake_sender.notify_one();
        self.sink_changed.notify_one();
    }

    /// Send or drop everything captured up to now, within `deadline`. True only if
    /// done: whatever blocks (a full buffer under `block`, a stuck sink), the answer
    /// comes by the deadline, so /suspend and /terminate never wait longer.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        tokio::time::timeout_at(until.into(), self.flush_until(until))
            .await
            .unwrap_or(false)
    }

    async fn flush_until(&self, until: Instant) -> bool {
        // 1. The pipes are drained and every byte read has become an event.
        let readers: Vec<Arc<Reader>> = self.readers.lock().map(|r| r.clone()).unwrap_or_default();
        while readers.iter().any(|r| r.busy()) {
            if Instant::now() >= until {
                // Bytes still in a pipe or in a reader's hands: not everything
                // written before the request is an event yet.
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Every reader is idle in its read: its partial line is the newest output.
        for r in &readers {
            self.flush_partial(r).await;
        }
        // 2. Everything captured so far is resolved.
        let target = self.lock().buffer.captured();
        loop {
            let progress = self.progress.notified();
            {
                let mut st = self.lock();
                if st.buffer.resolved() >= target {
                    return true;
                }
                st.flush_requested = true;
            }
            self.wake_sender.notify_one();
            if tokio::time::timeout_at(until.into(), progress)
                .await
                .is_err()
            {
                return self.lock().buffer.resolved() >= target;
            }
        }
    }

    /// Stop sending (at `/suspend`, after the flush), and wait within `deadline` for
    /// a batch under way to be answered; true if none is left in flight. New lines
    /// are captured and buffered meanwhile, as the buffer's policy says.
    pub async fn hold(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            let progress = self.progress.notified();
            {
                let mut st = self.lock();
                st.held = true;
                if !st.in_flight {
                    return true;
                }
            }
            // A retry pause under way ends now and sees the hold (notify_waiters: no
            // permit is left to cut a later pause short).
            self.sink_changed.notify_waiters();
            if tokio::time::timeout_at(until.into(), progress)
                .await
                .is_err()
            {
                return !self.lock().in_flight;
            }
        }
    }

    /// Send again (at `/resume`, once the clock is right, and at `/terminate`).
    pub fn release(&self) {
        self.lock().held = false;
        self.wake_sender.notify_one();
    }

    pub fn status(&self) -> LogsStatus {
        let st = self.lock();
        let why = match st.destination {
            Destination::NoCredentials => Some("no credentials in the run (no execution role): application logs are dropped, as on the platform"),
            Destination::Disabled => Some("logging is disabled for this run"),
            Destination::Pending => Some("waiting for /run to decide the destination"),
            Destination::CloudWatch { .. } => None,
        };
        LogsStatus {
            destination: st.destination.clone(),
            counters: st.buffer.counters.clone(),
            buffered_events: st.buffer.buffered_events(),
            buffered_bytes: st.buffer.queued_bytes(),
            buffered_message_bytes: st.buffer.buffered_message_bytes(),
            buffer_limit_bytes: st.buffer.limit(),
            when_full: st.buffer.when_full(),
            last_error: st.last_error.clone(),
            why: why.map(str::to_string),
        }
    }
}
