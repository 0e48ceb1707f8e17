//! One exec session over an upgraded control connection: frames from the host to the
//! process (stdin, resize, signal), its output to the host, and a final exit frame.
//!
//! The session ends when the process exits, its timeout passes, the VM is suspended
//! or terminated (the ticket says so), or the host breaks the protocol or goes away;
//! in every case but the first the process group is killed. Output still in the pipes
//! is then forwarded until they close or stay quiet for [`DRAIN_QUIET`], so an orphan
//! that keeps a pipe open cannot hold the session forever.

use super::pty;
use super::spawn::{Spawned, Streams};
use super::Ticket;
use crate::supervisor::process::signal_name;
use microvm_protocol::exec::{self, EndReason, ExitFrame, Kind, HEADER_LEN};
use microvm_protocol::status::Exit;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// After the process ended, output is forwarded until the pipes stay quiet this long.
pub const DRAIN_QUIET: Duration = Duration::from_secs(2);
/// How long a killed process group gets to be reaped before the session reports anyway.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the final frames get to reach a host that stopped reading.
pub const WRITE_WAIT: Duration = Duration::from_secs(5);
/// One read of the process's output.
const READ_CHUNK: usize = 32 * 1024;
/// Frames queued towards the host (or stdin chunks towards the process) before the
/// producer waits: flow control end to end, with bounded memory per session.
const QUEUE: usize = 16;
/// What an empty stdin frame writes to a terminal: the VEOF character (^D).
const TERMINAL_EOF: u8 = 0x04;

/// How the host side of a session ended, if it did first.
enum HostEnd {
    /// The connection closed (even half: stdin ends with an empty stdin frame) or
    /// failed.
    Gone,
    ProtocolError(String),
}

/// Where stdin frames go.
struct Input {
    tx: mpsc::Sender<Vec<u8>>,
    /// The terminal, for resize frames.
    terminal: Option<OwnedFd>,
}

/// Run the session to its end on `io` (the upgraded connection).
pub async fn serve<IO>(io: IO, spawned: Spawned, timeout: Option<Duration>, ticket: Ticket)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let Spawned { pid, exit, streams } = spawned;
    let mut exit = exit;
    let (host_rd, host_wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mut writer = tokio::spawn(write_frames(host_wr, out_rx));
    let progress = Arc::new(Progress::new());
    let mut readers = JoinSet::new();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let plumbing = plumb(streams, &mut readers, &out_tx, &progress, stdin_rx);
    let (input, stdin_task) = match plumbing {
        Ok((terminal, stdin_task)) => (
            Input {
                tx: stdin_tx,
                terminal,
            },
            Some(stdin_task),
        ),
        Err(e) => {
            tracing::error!(pid, "exec session plumbing: {e}");
            (
                Input {
                    tx: stdin_tx,
                    terminal: None,
                },
                None,
            )
        }
    };
    let mut host = tokio::spawn(read_frames(host_rd, input, pid));
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let timed_out = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let (reason, message, status) = tokio::select! {
        status = &mut exit => (EndReason::Exited, None, status.ok()),
        _ = timed_out => (EndReason::Timeout, None, None),
        reason = ticket.ended() => (reason, None, None),
        h = &mut host => match h {
            Ok(HostEnd::ProtocolError(m)) => (EndReason::ProtocolError, Some(m), None),
            _ => return gone(pid, exit, readers, writer, stdin_task).await,
        },
        // The writer ends early only when the host stopped taking frames.
        _ = &mut writer => return gone(pid, exit, readers, host, stdin_task).await,
    };
    let status = match status {
        Some(s) => s,
        None => {
            kill_group(pid);
            match tokio::time::timeout(KILL_WAIT, &mut exit).await {
                Ok(Ok(s)) => s,
                _ => Exit::Signal(Signal::SIGKILL as i32),
            }
        }
    };
    // The host is still watched while output drains (it may hang up then too); its
    // task already ended on a protocol error.
    let host = (reason != EndReason::ProtocolError).then_some(host);
    let hung_up = drain(&mut readers, &progress, &ticket.end, host, pid).await;
    if let Some(t) = stdin_task {
        t.abort();
    }
    if hung_up {
        // Nobody is there for the exit frame.
        writer.abort();
        tracing::info!(
            pid,
            "exec session: the host went away after the exit; process group killed"
        );
        return;
    }
    let frame = exit_frame(status, reason, message);
    tracing::info!(pid, ?frame, "exec session ended");
    let body = serde_json::to_vec(&frame).unwrap_or_default();
    let _ = tokio::time::timeout(WRITE_WAIT, out_tx.send(exec::frame(Kind::Exit, &body))).await;
    drop(out_tx);
    if tokio::time::timeout(WRITE_WAIT, writer).await.is_err() {
        tracing::warn!(pid, "exec session: the host did not take its final frame");
    }
    drop(ticket);
}

/// Nobody is listening: kill, reap, and let nothing linger.
async fn gone(
    pid: i32,
    mut exit: tokio::sync::oneshot::Receiver<Exit>,
    mut readers: JoinSet<()>,
    other: tokio::task::JoinHandle<impl Send + 'static>,
    stdin_task: Option<tokio::task::JoinHandle<()>>,
) {
    kill_group(pid);
    let _ = tokio::time::timeout(KILL_WAIT, &mut exit).await;
    readers.abort_all();
    other.abort();
    if let Some(t) = stdin_task {
        t.abort();
    }
    tracing::info!(
        pid,
        "exec session: the host went away; process group killed"
    );
}

/// The exit frame for how the process ended and why the session did.
pub fn exit_frame(status: Exit, reason: EndReason, message: Option<String>) -> ExitFrame {
    let (exit_code, signal) = match status {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(signal_name(s))),
    };
    ExitFrame {
        exit_code,
        signal,
        reason,
        message,
    }
}

pub fn kill_group(pgid: i32) {
    if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pgid, "killing an exec process group: {e}");
        }
    }
}

type Plumbed = (Option<OwnedFd>, tokio::task::JoinHandle<()>);

/// Readers of the process's output into `readers`, and the stdin writer.
fn plumb(
    streams: Streams,
    readers: &mut JoinSet<()>,
    out: &mpsc::Sender<Vec<u8>>,
    progress: &Arc<Progress>,
    stdin_rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<Plumbed> {
    let receiver = |fd: OwnedFd| -> std::io::Result<pipe::Receiver> {
        pty::set_nonblocking(&fd)?;
        pipe::Receiver::from_owned_fd_unchecked(fd)
    };
    let sender = |fd: OwnedFd| -> std::io::Result<pipe::Sender> {
        pty::set_nonblocking(&fd)?;
        pipe::Sender::from_owned_fd_unchecked(fd)
    };
    let mut read = |kind: Kind, rx: pipe::Receiver| {
        readers.spawn(read_output(kind, rx, out.clone(), progress.clone()));
    };
    match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            read(Kind::Stdout, receiver(stdout)?);
            read(Kind::Stderr, receiver(stderr)?);
            let tx = sender(stdin)?;
            Ok((None, tokio::spawn(write_stdin(tx, stdin_rx, false))))
        }
        Streams::Pty { master } => {
            let (writing, resizing) = (master.try_clone()?, master.try_clone()?);
            read(Kind::Stdout, receiver(master)?);
            let tx = sender(writing)?;
            Ok((
                Some(resizing),
                tokio::spawn(write_stdin(tx, stdin_rx, true)),
            ))
        }
    }
}

/// When the process's output last moved, and how many readers wait for the host to
/// take a frame: a reader held up by a slow host is not a quiet pipe.
struct Progress {
    started: Instant,
    last_ms: AtomicU64,
    sending: AtomicUsize,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            sending: AtomicUsize::new(0),
        }
    }

    fn mark(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// Counts a reader as sending for as long as it lives (an aborted send included).
struct Sending<'a>(&'a Progress);

impl<'a> Sending<'a> {
    fn new(p: &'a Progress) -> Sending<'a> {
        p.sending.fetch_add(1, Ordering::Relaxed);
        Sending(p)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn read_output(
    kind: Kind,
    mut rx: pipe::Receiver,
    out: mpsc::Sender<Vec<u8>>,
    progress: Arc<Progress>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // EOF, or EIO from a terminal whose every slave descriptor closed.
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        progress.mark();
        let sending = Sending::new(&progress);
        if out.send(exec::frame(kind, &buf[..n])).await.is_err() {
            return;
        }
        drop(sending);
        progress.mark();
    }
}

/// Forward output until every reader is done, or nothing moved for [`DRAIN_QUIET`]
/// while no reader was waiting on the host. A reader held up by a slow host is flow
/// control, not a quiet pipe (the process itself would have waited on the same host);
/// only a session that must end (`ending`: suspend, terminate) or a host that hangs
/// up (which kills the group, as during the run) stops waiting on it. True when the
/// host hung up.
async fn drain(
    readers: &mut JoinSet<()>,
    progress: &Progress,
    ending: &tokio::sync::watch::Receiver<Option<EndReason>>,
    host: Option<tokio::task::JoinHandle<HostEnd>>,
    pgid: i32,
) -> bool {
    let stop = host.as_ref().map(|h| h.abort_handle());
    let hung_up = async move {
        match host {
            Some(h) => {
                let _ = h.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hung_up);
    let mut gone = false;
    loop {
        let last = progress.last();
        let until = tokio::time::Instant::now() + DRAIN_QUIET;
        let give_up = tokio::select! {
            _ = &mut hung_up => {
                kill_group(pgid);
                gone = true;
                true
            }
            r = tokio::time::timeout_at(until, readers.join_next()) => match r {
                Ok(None) => break,
                Ok(Some(_)) => false,
                Err(_) if progress.last() != last => false,
                Err(_) => {
                    progress.sending.load(Ordering::Relaxed) == 0 || ending.borrow().is_some()
                }
            },
        };
        if give_up {
            readers.abort_all();
            break;
        }
    }
    if let Some(stop) = stop {
        stop.abort();
    }
    gone
}

async fn write_stdin(tx: pipe::Sender, mut rx: mpsc::Receiver<Vec<u8>>, terminal: bool) {
    // None once the process's stdin is closed: what the host still sends is dropped,
    // so its control frames behind it are never held up.
    let mut tx = Some(tx);
    while let Some(chunk) = rx.recv().await {
        let Some(pipe) = tx.as_mut() else { continue };
        let r = if chunk.is_empty() {
            if terminal {
                pipe.write_all(&[TERMINAL_EOF]).await
            } else {
                // Only dropping the descriptor ends input: a pipe's shutdown is a no-op.
                tx = None;
                continue;
            }
        } else {
            pipe.write_all(&chunk).await
        };
        if r.is_err() {
            tx = None;
        }
    }
}

async fn write_frames<W: AsyncWrite>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = std::pin::pin!(w);
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Frames from the host, until it closes (or breaks the protocol).
async fn read_frames<R: AsyncRead>(r: R, input: Input, pgid: i32) -> HostEnd {
    let mut r = std::pin::pin!(r);
    let mut stdin_closed = false;
    let mut payload = Vec::new();
    loop {
        let mut h = [0u8; HEADER_LEN];
        match r.read_exact(&mut h).await {
            Ok(_) => {}
            // The protocol ends stdin with an empty frame, so a closed connection
            // (clean or not) means the host hung up: a silent process would
            // otherwise hold its session slot until it wrote something.
            Err(_) => return HostEnd::Gone,
        }
        let (kind, len) = match exec::parse_header(h) {
            Ok(k) => k,
            Err(e) => return HostEnd::ProtocolError(e),
        };
        payload.resize(len, 0);
        if r.read_exact(&mut payload).await.is_err() {
            return HostEnd::Gone;
        }
        match kind {
            Kind::Stdin => {
                if stdin_closed && input.terminal.is_none() {
                    continue;
                }
                stdin_closed = payload.is_empty();
                // The writer never stops receiving, so this waits only for room.
                if input.tx.send(std::mem::take(&mut payload)).await.is_err() {
                    return HostEnd::Gone;
                }
            }
            Kind::Resize => {
                let Some(size) = exec::parse_resize(&payload) else {
                    return HostEnd::ProtocolError(format!(
                        "a resize frame carries 4 bytes, not {len}"
                    ));
                };
                // Without a terminal there is nothing to resize: ignored.
                if let Some(t) = &input.terminal {
                    if let Err(e) = pty::resize(t, size) {
                        tracing::warn!(pgid, "resizing an exec terminal: {e}");
                    }
                }
            }
            Kind::Signal => {
                let sig = exec::parse_signal(&payload).and_then(|n| Signal::try_from(n).ok());
                let Some(sig) = sig else {
                    return HostEnd::ProtocolError(format!(
                        "a signal frame carries a signal number (4 bytes), not {payload:?}"
                    ));
                };
                if let Err(e) = killpg(Pid::from_raw(pgid), sig) {
                    tracing::debug!(pgid, "signal {sig} to an exec process group: {e}");
                }
            }
            Kind::Stdout | Kind::Stderr | Kind::Exit => {
                return HostEnd::ProtocolError(format!(
                    "{kind:?} frames go from the guest to the host"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_frames_say_how_and_why() {
        let f = exit_frame(Exit::Code(3), EndReason::Exited, None);
        assert_eq!((f.exit_code, f.signal.as_deref()), (Some(3), None));
        let f = exit_frame(Exit::Signal(9), EndReason::Timeout, None);
        assert_eq!((f.exit_code, f.signal.as_deref()), (None, Some("SIGKILL")));
        assert_eq!(f.reason, EndReason::Timeout);
    }
}
