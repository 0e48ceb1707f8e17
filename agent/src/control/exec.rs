//! The control channel's exec and files requests: admission (shell ingress, state,
//! session bound), the upgrade to exec frames, and tar streams both ways.

use super::answer::Answer;
use super::lifecycle::Lifecycle;
use super::routes::{build, empty, read_body, request_error, Body};
use crate::config::{self, RequestError};
use crate::exec::files::{self, ChunkReader, ChunkWriter, FilesError};
use crate::exec::{session, spawn, Refusal, Ticket};
use crate::supervisor::privileges::read_user_db;
use http_body_util::{BodyExt, Either};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use microvm_protocol::exec::{ExecRequest, PID_HEADER, TYPE_HEADER, UPGRADE};
use microvm_protocol::{ApiError, ErrorCode};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Chunks queued between a tar stream's blocking side and the connection.
const CHUNKS: usize = 8;

/// A place for a session, or the answer that refuses it.
fn admit(lc: &Arc<Lifecycle>) -> Result<Ticket, Answer> {
    let exec = lc.exec();
    match lc.exec_phase_allows().and_then(|()| exec.admit().map_err(Some)) {
        Ok(t) => Ok(t),
        Err(Some(Refusal::Forbidden)) => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this run has no shell ingress: run the MicroVM with the SHELL_INGRESS network connector to exec or copy files",
        )
        .into()),
        Err(Some(Refusal::TooMany)) => Err(ApiError::new(
            ErrorCode::TooManySessions,
            format!(
                "{} exec sessions or transfers are running: wait for one to end",
                microvm_protocol::exec::MAX_SESSIONS
            ),
        )
        .into()),
        Err(_) => Err(lc.exec_conflict()),
    }
}

fn wants_upgrade(headers: &header::HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, UPGRADE)
}

/// `POST /v1/exec`: start the process, answer 101, then run the session.
pub async fn exec_request(lc: &Arc<Lifecycle>, mut req: Request<Incoming>) -> Response<Body> {
    if !wants_upgrade(req.headers()) {
        crate::http::drain(req.into_body()).await;
        return respond(
            ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "exec upgrades the connection: send Connection: Upgrade and Upgrade: {UPGRADE}"
                ),
            )
            .into(),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(a) => return respond(a),
    };
    let request: ExecRequest = match config::json::from_json(&body) {
        Ok(r) => r,
        Err(e) => return respond(request_error(RequestError::Invalid(e))),
    };
    let ticket = match admit(lc) {
        Ok(t) => t,
        Err(a) => return respond(a),
    };
    let exec = lc.exec();
    let (passwd, group) = (
        read_user_db("/etc/passwd").unwrap_or_default(),
        read_user_db("/etc/group").unwrap_or_default(),
    );
    let plan = match spawn::plan(request, &exec.base, &passwd, &group) {
        Ok(p) => p,
        Err(e) => return respond(e.into()),
    };
    let spawned = match spawn::spawn(&plan, &exec.base, &exec.reaper) {
        Ok(s) => s,
        Err(e) => return respond(e.into()),
    };
    let pid = spawned.pid;
    tracing::info!(pid, command = ?plan.command, uid = plan.identity.uid, tty = plan.tty.is_some(), "exec session started");
    let timeout = plan.timeout;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session::serve(TokioIo::new(upgraded), spawned, timeout, ticket).await,
            Err(e) => {
                // The host left before the upgrade: the process must not run on alone.
                tracing::warn!(pid, "exec upgrade failed ({e}); killing the process group");
                session::kill_group(pid);
                let _ = tokio::time::timeout(session::KILL_WAIT, spawned.exit).await;
                drop(ticket);
            }
        }
    });
    let head = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE)
        .header(PID_HEADER, pid.to_string());
    build(head, empty())
}

fn respond(a: Answer) -> Response<Body> {
    super::routes::respond(a, None)
}

fn files_error(e: FilesError) -> Response<Body> {
    respond(ApiError::from(e).into())
}

/// `GET`, `HEAD` and `PUT /v1/files?path=`.
pub async fn files_request(lc: &Arc<Lifecycle>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::PUT) {
        crate::http::drain(body).await;
        return super::routes::respond(
            ApiError::new(ErrorCode::MethodNotAllowed, "use GET, HEAD or PUT").into(),
            Some("GET, HEAD, PUT"),
        );
    }
    let path = match files::query_path(parts.uri.query()) {
        Ok(p) => p,
        Err(e) => {
            crate::http::drain(body).await;
            return files_error(e);
        }
    };
    let ticket = match admit(lc) {
        Ok(t) => t,
        Err(a) => {
            crate::http::drain(body).await;
            return respond(a);
        }
    };
    match parts.method {
        Method::HEAD => match files::file_type(&path) {
            Ok(t) => build(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(TYPE_HEADER, t),
                empty(),
            ),
            Err(e) => files_error(e),
        },
        Method::GET => download(path, ticket),
        _ => upload(path, body, ticket).await,
    }
}

fn download(path: std::path::PathBuf, ticket: Ticket) -> Response<Body> {
    if let Err(e) = files::check_source(&path) {
        return files_error(e);
    }
    let (tx, rx) = mpsc::channel(CHUNKS);
    let done = tx.clone();
    let (end, runtime) = (ticket.end.clone(), tokio::runtime::Handle::current());
    let job = tokio::task::spawn_blocking(move || {
        let out = ChunkWriter::new(tx, end, runtime);
        let out = std::io::BufWriter::with_capacity(64 * 1024, out);
        files::pack(&path, out).map_err(|e| format!("packing {}: {e}", path.display()))
    });
    tokio::spawn(async move {
        // The packer gives up on its own when the session must end, so this wait is
        // bounded by the host's reading or by the end.
        match job.await {
            Ok(Ok(())) => {
                tokio::select! {
                    _ = done.send(Ok(Bytes::new())) => {}
                    _ = ticket.ended() => {}
                }
            }
            Ok(Err(e)) => tracing::warn!("files: {e}"),
            Err(e) => tracing::warn!("files: the packer failed: {e}"),
        }
        drop(ticket);
    });
    let head = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar");
    build(
        head,
        Either::Right(ChunkBody {
            rx,
            complete: false,
        }),
    )
}

async fn upload(path: std::path::PathBuf, body: Incoming, ticket: Ticket) -> Response<Body> {
    let (tx, rx) = mpsc::channel(CHUNKS);
    let dest = path.clone();
    let job = tokio::task::spawn_blocking(move || files::unpack(&dest, ChunkReader::new(rx)));
    // True when the session had to end: the unpacker is then told the stream is cut
    // (an end between two entries would otherwise read as a whole archive).
    // Moves `tx` in: the unpacker sees the end of input when the feed is done.
    let ended = ticket.ended();
    let feed = async move {
        let mut body = body;
        tokio::pin!(ended);
        loop {
            let chunk = tokio::select! {
                f = body.frame() => match f {
                    None => return false,
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue,
                    },
                    Some(Err(e)) => Err(std::io::Error::other(format!("reading the body: {e}"))),
                },
                // The unpacker is done (the archive's end, or an error): the rest
                // of the body (tar's padding) is not waited for.
                _ = tx.closed() => return false,
                reason = &mut ended => {
                    let cut = format!("cut short: the MicroVM is ending the session ({reason:?})");
                    let _ = tx.send(Err(std::io::Error::other(cut))).await;
                    return true;
                }
            };
            let failed = chunk.is_err();
            // The unpacker stopped (an error): what is left of the body is not read.
            if tx.send(chunk).await.is_err() || failed {
                return false;
            }
        }
    };
    // The ticket is held until the unpacker is done: a suspension waits for it.
    let (cut, result) = tokio::join!(feed, job);
    drop(ticket);
    // An unpacker that finished before the cut did the whole archive.
    if cut && !matches!(result, Ok(Ok(_))) {
        return respond(lc_conflict_suspended());
    }
    match result {
        Ok(Ok(put)) => {
            tracing::info!(path = %path.display(), ?put, "files unpacked");
            respond(Answer::ok(&put))
        }
        Ok(Err(e)) => files_error(e),
        Err(e) => {
            respond(ApiError::new(ErrorCode::InternalError, format!("unpacking: {e}")).into())
        }
    }
}

fn lc_conflict_suspended() -> Answer {
    ApiError::new(
        ErrorCode::InvalidState,
        "the MicroVM is being suspended or terminated: the transfer was cut short",
    )
    .into()
}

/// A response body fed by a channel of chunks (a tar stream being packed). An empty
/// chunk marks the whole stream; a channel that closes without it was cut short, and
/// the body fails so the host never takes a cut archive for a whole one.
pub struct ChunkBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    complete: bool,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.complete {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                self.complete = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map(Frame::data))),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other(
                "the tar stream was cut short",
            )))),
        }
    }
}
