//! The one HTTP/1.1 client of the host tools (hyper), over a stream that is already
//! connected: the hybrid vsock socket after `CONNECT`/`OK`, a Unix socket, TCP.
//!
//! Callers are synchronous threads; each request is driven to its end by a shared
//! current-thread tokio runtime (`block_on` may be called from many threads at once:
//! one of them drives the I/O, the others are woken by it). Never call these from
//! inside an async context.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest a request may take, connection to last body byte: generous for everything
/// the host asks that is not a hook call.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// For a hook call: the agent answers within the hook's own timeout, up to an hour for
/// the image-build hooks, plus what a `/terminate` does after its hook (grace period,
/// log flush, sync).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(3600 + 120);

/// An answer, whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; `null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A connected stream a request can go over.
pub enum Stream {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl From<std::os::unix::net::UnixStream> for Stream {
    fn from(s: std::os::unix::net::UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl From<std::net::TcpStream> for Stream {
    fn from(s: std::net::TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

/// One request on `stream`, which it then closes (`Connection: close`). `Host`
/// defaults to `agent` and `Content-Type` to JSON; `headers` may set either.
pub fn send(
    stream: impl Into<Stream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    send_within(TIMEOUT, stream, method, path, headers, body)
}

/// [`send`] with its own bound on the whole exchange.
pub fn send_within(
    timeout: Duration,
    stream: impl Into<Stream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    let request = build(method, path, headers, body)?;
    let stream = stream.into();
    block_on(async move {
        match tokio::time::timeout(timeout, exchange(stream, request)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer within {timeout:?}"),
            )),
        }
    })?
}

fn build(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Request<Full<Bytes>>> {
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| invalid(&e))?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| invalid(&e))?;
    let h = request.headers_mut();
    h.insert(HOST, HeaderValue::from_static("agent"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Declared even when empty (hyper would leave it out of a bodiless GET): the
    // agent's strict body rules are tested against exactly what a host sends.
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| invalid(&e))?;
        let value = HeaderValue::from_str(v).map_err(|e| invalid(&e))?;
        h.insert(name, value);
    }
    Ok(request)
}

async fn exchange(stream: Stream, request: Request<Full<Bytes>>) -> io::Result<Reply> {
    match stream {
        Stream::Unix(s) => {
            s.set_nonblocking(true)?;
            over(tokio::net::UnixStream::from_std(s)?, request).await
        }
        Stream::Tcp(s) => {
            s.set_nonblocking(true)?;
            // Requests are small and answered at once: no Nagle delay.
            s.set_nodelay(true)?;
            over(tokio::net::TcpStream::from_std(s)?, request).await
        }
    }
}

async fn over<S>(io: S, request: Request<Full<Bytes>>) -> io::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = AnswerFirst::new(io);
    let write_error = io.write_error.clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        })
    };
    let mut answer = std::pin::pin!(answer);
    let mut conn = std::pin::pin!(conn);
    let r = tokio::select! {
        biased;
        r = &mut answer => r,
        _ = &mut conn => answer.await,
    };
    // No answer after the peer stopped taking the request: that is the error to tell.
    r.map_err(|e| write_error.take().unwrap_or(e))
}

/// A stream whose writes never fail because the peer closed: a server may answer
/// (413) and close before it took the whole request body, as the agent does for a
/// body it refuses by its Content-Length. The rest of the body is then discarded and
/// the answer, already on the socket, is read, as curl does. The write error is kept
/// for when no answer comes.
struct AnswerFirst<S> {
    inner: S,
    peer_gone: bool,
    write_error: WriteError,
}

#[derive(Clone, Default)]
struct WriteError(std::sync::Arc<std::sync::Mutex<Option<io::Error>>>);

impl WriteError {
    fn set(&self, e: io::Error) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
    }

    fn take(&self) -> Option<io::Error> {
        self.0.lock().ok()?.take()
    }
}

impl<S> AnswerFirst<S> {
    fn new(inner: S) -> Self {
        AnswerFirst {
            inner,
            peer_gone: false,
            write_error: WriteError::default(),
        }
    }

    /// A write result, with "the peer closed" turned into "written".
    fn lenient(&mut self, r: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.peer_gone = true;
                self.write_error.set(e);
                Poll::Ready(Ok(len))
            }
            r => r,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnswerFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnswerFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.peer_gone {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.lenient(r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.peer_gone {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.lenient(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.peer_gone {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.peer_gone {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn block_on<F: Future>(f: F) -> io::Result<F::Output> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt.block_on(f)),
        Err(e) => Err(io::Error::other(format!("HTTP client runtime: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;

    /// A server on the other end of a socket pair: reads one request head (and
    /// `read_body` bytes of body), writes `answer`, closes.
    fn serve(
        answer: &'static [u8],
        read_body: usize,
    ) -> (UnixStream, std::thread::JoinHandle<String>) {
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut r = BufReader::new(server.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; read_body];
            r.read_exact(&mut body).unwrap();
            (&server).write_all(answer).unwrap();
            head
        });
        (client, t)
    }

    #[test]
    fn a_request_and_its_answer() {
        let (c, t) = serve(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
            2,
        );
        let r = send(c, "POST", "/v1/x?a=1", &[("x-extra", "1")], b"{}").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["ok"], true);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let head = t.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /v1/x?a=1 http/1.1\r\n"), "{head}");
        for h in [
            "host: agent",
            "content-length: 2",
            "connection: close",
            "x-extra: 1",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
    }

    #[test]
    fn an_empty_get_still_declares_its_length() {
        let (c, t) = serve(b"HTTP/1.1 204 No Content\r\n\r\n", 0);
        assert_eq!(send(c, "GET", "/", &[], b"").unwrap().status, 204);
        assert!(t
            .join()
            .unwrap()
            .to_ascii_lowercase()
            .contains("content-length: 0"));
    }

    #[test]
    fn an_answer_before_the_whole_body_was_taken_still_counts() {
        // The server reads only the head, answers 413 and closes: the 4 MiB body
        // cannot all be written, yet the answer is what the caller gets.
        let (c, t) = serve(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            0,
        );
        let r = send(c, "POST", "/", &[], &vec![b'y'; 4 << 20]).unwrap();
        assert_eq!(r.status, 413);
        t.join().unwrap();
    }

    #[test]
    fn a_peer_that_closes_without_an_answer_is_an_error() {
        let (c, t) = serve(b"", 0);
        let e = send(c, "POST", "/", &[], &vec![b'y'; 4 << 20]).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::Other),
            "{e:?}"
        );
    }

    #[test]
    fn a_closed_connection_is_an_error() {
        let (c, s) = UnixStream::pair().unwrap();
        drop(s);
        assert!(send(c, "GET", "/", &[], b"").is_err());
    }
}
