//! The sender: one batch at a time, in order, to the current sink; transient failures
//! are retried with jittered backoff for as long as it takes (the buffer bounds it).

use super::lines::Event;
use super::sink::{Delivery, Sink};
use super::{Logs, MAX_BATCH_AGE};
use crate::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;

const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(10);

impl Logs {
    pub async fn run_sender(self: Arc<Self>) {
        loop {
            let (batch, mut sink) = self.next_batch().await;
            // Seeded per batch, not once at boot: every clone of a snapshot booted
            // with the same seed, and would retry in lockstep against the service.
            let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_CAP).jittered(jitter_seed());
            loop {
                match sink.put(&batch).await {
                    Ok(Delivery::Sent(rejected)) => {
                        {
                            let mut st = self.lock();
                            st.buffer.ack_sent(&batch, &rejected);
                            st.in_flight = false;
                            st.last_error = None;
                            st.credentials_refused_since = None;
                        }
                        self.progress.notify_waiters();
                        break;
                    }
                    Ok(Delivery::Dropped(reason)) => {
                        {
                            let mut st = self.lock();
                            st.buffer.ack_dropped(&batch, reason);
                            st.in_flight = false;
                        }
                        self.progress.notify_waiters();
                        break;
                    }
                    Err(e) if e.is_permanent() => {
                        tracing::error!("PutLogEvents refused a batch for good: {e}");
                        {
                            let mut st = self.lock();
                            st.buffer.ack_dropped(&batch, "InvalidBatch");
                            st.in_flight = false;
                            st.last_error = Some(e.to_string());
                        }
                        self.progress.notify_waiters();
                        break;
                    }
                    Err(e) => {
                        let pause = backoff.next_delay();
                        {
                            let mut st = self.lock();
                            st.buffer.counters.retries += 1;
                            st.last_error = Some(e.to_string());
                            if e.needs_credentials() {
                                let now = self.clock.mono_ms();
                                st.credentials_refused_since.get_or_insert(now);
                            }
                        }
                        let attempt = backoff.attempts();
                        tracing::warn!(attempt, "PutLogEvents: {e}; retrying in {pause:?}");
                        // New credentials or a new destination cut the wait short.
                        let _ = tokio::time::timeout(pause, self.sink_changed.notified()).await;
                        let (current, held) = {
                            let st = self.lock();
                            (st.sink.clone(), st.held)
                        };
                        match current {
                            // The same batch, through the current sink (new credentials,
                            // or a destination that now drops it).
                            Some(current) if !held => sink = current,
                            // No sink, or held for a snapshot: back to the queue's head.
                            _ => {
                                {
                                    let mut st = self.lock();
                                    st.buffer.requeue(batch);
                                    st.in_flight = false;
                                }
                                self.progress.notify_waiters();
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Wait until a batch may go, and take it.
    async fn next_batch(&self) -> (Vec<Event>, Arc<dyn Sink>) {
        loop {
            let wake = self.wake_sender.notified();
            let wait = {
                let mut st = self.lock();
                match st.sink.clone() {
                    _ if st.held => None,
                    None => {
                        st.flush_requested = false;
                        None
                    }
                    Some(sink) => {
                        let hurry = st.flush_requested || sink.immediate();
                        let now = self.clock.mono_ms();
                        let max_age = MAX_BATCH_AGE.as_millis() as u64;
                        match st.buffer.ready(now, max_age, hurry) {
                            super::buffer::Ready::Now => {
                                let batch = st.buffer.take_batch();
                                st.in_flight = true;
                                if st.buffer.buffered_events() == batch.len() {
                                    st.flush_requested = false;
                                }
                                drop(st);
                                self.progress.notify_waiters();
                                return (batch, sink);
                            }
                            super::buffer::Ready::InMs(ms) => {
                                Some(Duration::from_millis(ms.max(1)))
                            }
                            super::buffer::Ready::Empty => {
                                st.flush_requested = false;
                                None
                            }
                        }
                    }
                }
            };
            match wait {
                Some(d) => {
                    let _ = tokio::time::timeout(d, wake).await;
                }
                None => wake.await,
            }
        }
    }
}

/// Nanoseconds of the wall clock: after `/run` set it, no two clones share them.
fn jitter_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
