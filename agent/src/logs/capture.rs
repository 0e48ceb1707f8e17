//! Capture: the application's stdout and stderr are pipes the agent reads; bytes
//! become lines, lines become events under the buffer's policy.

use super::lines::{self, LineSplitter};
use super::{Logs, PARTIAL_LINE_FLUSH};
use microvm_protocol::status::WhenFull;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How often a writer waiting for room looks again at the credentials' state.
const CREDENTIALS_RECHECK: Duration = Duration::from_millis(500);

/// A pipe being read, for drain detection.
pub struct Reader {
    /// A duplicate of the read end (the tokio receiver owns the other), so asking how
    /// much waits never names a descriptor that may have been closed and reused.
    fd: OwnedFd,
    /// Bytes read from the pipe but not yet turned into events.
    unprocessed: AtomicU64,
    splitter: Mutex<LineSplitter>,
}

impl Reader {
    /// Bytes still in the pipe, or read and not yet events.
    pub fn busy(&self) -> bool {
        pipe_pending(&self.fd) > 0 || self.unprocessed.load(Ordering::SeqCst) > 0
    }
}

/// Bytes waiting in a pipe (FIONREAD).
fn pipe_pending(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on an open descriptor we own writes one int through the
    // pointer, which is valid and ours.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD as _, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

impl Logs {
    /// A pipe whose write end the application gets as stdout or stderr.
    pub fn pipe(self: &Arc<Self>) -> std::io::Result<OwnedFd> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let reader = Arc::new(Reader {
            fd: read.try_clone()?,
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
            if let Some(reason) = self.discarding() {
                // Nobody reads these events: count the read where it lies.
                let c = match r.splitter.lock() {
                    Ok(mut s) => s.count(&buf[..n]),
                    Err(_) => Default::default(),
                };
                let mut st = self.lock();
                st.buffer.counters.empty_lines_skipped += c.empty;
                st.buffer.discard_counted(c.events, c.bytes, reason);
                drop(st);
                r.unprocessed.fetch_sub(n as u64, Ordering::SeqCst);
                self.progress.notify_waiters();
                continue;
            }
            let mut msgs = Vec::new();
            let empty = match r.splitter.lock() {
                Ok(mut s) => s.push(&buf[..n], &mut msgs),
                Err(_) => 0,
            };
            if empty > 0 {
                self.lock().buffer.counters.empty_lines_skipped += empty as u64;
            }
            self.push(msgs).await;
            r.unprocessed.fetch_sub(n as u64, Ordering::SeqCst);
        }
    }

    /// The reason every event is dropped, when the sink drops them all and nothing
    /// else (the console mirror) wants the lines.
    fn discarding(&self) -> Option<&'static str> {
        if self.settings.mirror_to_console {
            return None;
        }
        self.lock().sink.as_ref().and_then(|s| s.discards())
    }

    /// The partial last line of a quiet pipe, as an event.
    pub(super) async fn flush_partial(&self, r: &Reader) {
        let mut msgs = Vec::new();
        if let Ok(mut s) = r.splitter.lock() {
            s.flush(&mut msgs);
        }
        self.push(msgs).await;
    }

    /// Queue captured messages, waiting for room under the `block` policy. One
    /// clock reading and one lock for all of them (they came in one read), unless the
    /// buffer fills on the way.
    pub(super) async fn push(&self, msgs: Vec<String>) {
        if msgs.is_empty() {
            return;
        }
        if self.settings.mirror_to_console {
            for message in &msgs {
                // Queued, never waited for: a slow console must not slow the app.
                crate::console::write(format!("app| {message}\n").as_bytes());
            }
        }
        let mut msgs = msgs.into_iter();
        let mut refused: Option<String> = None;
        loop {
            // Register for progress before trying, so room freed in between is not
            // missed.
            let progress = self.progress.notified();
            let (wall, mono) = (self.clock.unix_ms(), self.clock.mono_ms());
            {
                let mut st = self.lock();
                let stuck = st.credentials_refused_since.is_some_and(|t| {
                    mono.saturating_sub(t) >= super::CREDENTIALS_GRACE.as_millis() as u64
                });
                while let Some(m) = refused.take().or_else(|| msgs.next()) {
                    let admitted = if stuck {
                        st.buffer.admit_as(
                            m,
                            wall,
                            mono,
                            WhenFull::DropOldest,
                            "CredentialsRefused",
                        )
                    } else {
                        st.buffer.admit(m, wall, mono)
                    };
                    if let Err(m) = admitted {
                        refused = Some(m);
                        // A writer waits for room: what is queued goes now, not at its age.
                        st.flush_requested = true;
                        break;
                    }
                }
            }
            if refused.is_none() {
                break;
            }
            self.wake_sender.notify_one();
            // Room, or the credentials grace running out, whichever first.
            let _ = tokio::time::timeout(CREDENTIALS_RECHECK, progress).await;
        }
        self.wake_sender.notify_one();
    }
}
