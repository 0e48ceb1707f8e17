//! Ingress: the host forwards each client connection to the agent over vsock (port
//! [`INGRESS_VSOCK_PORT`]); the agent connects it to the application in the guest and
//! measures the traffic.
//!
//! HTTP/1.1 is proxied request by request (keep-alive and pipelining included): the
//! target port comes from `X-aws-proxy-port` (default 8080), and every `x-aws-proxy-*`
//! header is removed. A WebSocket upgrade takes its port from the subprotocol
//! `lambda-microvms.port.<n>`, and the `lambda-microvms`,
//! `lambda-microvms.authentication.*` and `lambda-microvms.port.*` subprotocols are
//! removed before forwarding. HTTP/2 with prior knowledge (h2c) and anything that is
//! not HTTP are forwarded as byte streams to port 8080. A port nobody listens on is
//! 502 for HTTP and a closed connection otherwise.

use crate::activity::Activity;
use crate::control::transport::{Listener, Stream};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub const INGRESS_VSOCK_PORT: u32 = 9080;
pub const DEFAULT_APP_PORT: u16 = 8080;
/// Loopback port where a held TCP connection is a keep-awake lease.
pub const LEASE_PORT: u16 = 9001;
const PORT_HEADER: &str = "x-aws-proxy-port";
const PROXY_HEADER_PREFIX: &str = "x-aws-proxy-";
const SUBPROTOCOL_PORT: &str = "lambda-microvms.port.";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// How long a client may take to send enough bytes to tell its protocol.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http1,
    H2c,
    Raw,
    /// Not enough bytes yet to tell.
    Unknown,
}

pub fn sniff(b: &[u8]) -> Kind {
    if b.is_empty() {
        return Kind::Unknown;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Kind::H2c
        } else {
            Kind::Unknown
        };
    }
    // An HTTP/1 request line starts with a method token: upper-case letters, a space.
    match b.iter().position(|c| !c.is_ascii_uppercase()) {
        Some(i) if i > 0 && b[i] == b' ' => Kind::Http1,
        Some(_) => Kind::Raw,
        None if b.len() < 8 => Kind::Unknown,
        None => Kind::Raw,
    }
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn is_platform_subprotocol(p: &str) -> bool {
    p == "lambda-microvms"
        || p.starts_with("lambda-microvms.authentication.")
        || p.starts_with(SUBPROTOCOL_PORT)
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

/// Where a request goes, and its headers as the application must see them.
pub fn route(h: &mut HeaderMap) -> Result<u16, String> {
    let mut port = match h.get(PORT_HEADER) {
        None => DEFAULT_APP_PORT,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_port)
            .ok_or_else(|| format!("{PORT_HEADER}: not a port (1-65535): {v:?}"))?,
    };
    if is_websocket(h) {
        let offered: Vec<String> = h
            .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(p) = offered
            .iter()
            .find_map(|p| p.strip_prefix(SUBPROTOCOL_PORT))
        {
            port = parse_port(p)
                .ok_or_else(|| format!("subprotocol {SUBPROTOCOL_PORT}{p}: not a port"))?;
        }
        let kept: Vec<&str> = offered
            .iter()
            .map(String::as_str)
            .filter(|p| !is_platform_subprotocol(p))
            .collect();
        h.remove(hyper::header::SEC_WEBSOCKET_PROTOCOL);
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
                h.insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
    }
    let platform: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with(PROXY_HEADER_PREFIX))
        .cloned()
        .collect();
    for k in platform {
        h.remove(k);
    }
    Ok(port)
}

/// Counts bytes both ways as activity.
struct Metered<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.traffic(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity.traffic(*n);
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Replays the bytes read while sniffing, then reads from the stream.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn plain(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn proxy(
    mut req: Request<Incoming>,
    activity: Arc<Activity>,
) -> Result<Response<Body>, Infallible> {
    // A request in flight is activity until its answer's head is back.
    let _busy = activity.busy();
    let port = match route(req.headers_mut()) {
        Ok(p) => p,
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, e)),
    };
    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_GATEWAY,
                format!("nothing is listening on port {port} in the MicroVM: {e}"),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return Ok(plain(StatusCode::BAD_GATEWAY, format!("port {port}: {e}"))),
    };
    tokio::spawn(conn.with_upgrades());
    let client_upgrade = is_websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Ok(plain(StatusCode::BAD_GATEWAY, format!("port {port}: {e}"))),
    };
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (resp.status(), client_upgrade) {
        let app = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(a)) = (client.await, app.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(a)).await;
            }
        });
    }
    Ok(resp.map(|b| b.boxed()))
}

async fn stream_to_app(mut client: Prefixed<Metered<Stream>>) {
    if let Ok(mut app) = TcpStream::connect(("127.0.0.1", DEFAULT_APP_PORT)).await {
        let _ = app.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
    }
    // Not listening: dropping the client closes it, which is the answer for a stream.
}

async fn connection(stream: Stream, activity: Arc<Activity>) {
    let mut metered = Metered {
        inner: stream,
        activity: activity.clone(),
    };
    let mut prefix = Vec::new();
    let mut buf = [0u8; 64];
    let kind = loop {
        let k = sniff(&prefix);
        if k != Kind::Unknown {
            break k;
        }
        match tokio::time::timeout(SNIFF_TIMEOUT, metered.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => prefix.extend_from_slice(&buf[..n]),
        }
    };
    let io = Prefixed {
        prefix,
        pos: 0,
        inner: metered,
    };
    match kind {
        Kind::Http1 => {
            let svc = hyper::service::service_fn(move |req| proxy(req, activity.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await;
        }
        _ => stream_to_app(io).await,
    }
}

/// Accept forwarded client connections for as long as the agent lives.
pub async fn serve(listener: Listener, activity: Arc<Activity>) {
    loop {
        match listener.accept().await {
            Ok(s) => {
                tokio::spawn(connection(s, activity.clone()));
            }
            Err(e) => {
                tracing::warn!("ingress accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Keep-awake leases: a TCP connection to 127.0.0.1:[`LEASE_PORT`] held open is one.
pub async fn serve_leases(activity: Arc<Activity>) {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", LEASE_PORT)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("keep-awake lease endpoint 127.0.0.1:{LEASE_PORT}: {e}");
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let busy = activity.busy();
        tokio::spawn(async move {
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            drop(busy);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Kind::Http1);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Kind::Http1);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Kind::H2c);
        assert_eq!(sniff(b"PRI * HT"), Kind::Unknown);
        assert_eq!(sniff(b"GE"), Kind::Unknown);
        assert_eq!(sniff(b""), Kind::Unknown);
        assert_eq!(sniff(b"\x16\x03\x01"), Kind::Raw);
        assert_eq!(sniff(b"hello"), Kind::Raw);
        assert_eq!(sniff(b"ABCDEFGHIJ"), Kind::Raw);
        assert_eq!(sniff(b"SSH-2.0-OpenSSH"), Kind::Raw);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn port_from_the_header_and_platform_headers_stripped() {
        let mut h = headers(&[
            ("X-aws-proxy-port", "8081"),
            ("x-aws-proxy-auth", "token"),
            ("X-AWS-PROXY-Whatever", "1"),
            ("x-aws-proxyish", "kept"),
            ("accept", "*/*"),
        ]);
        assert_eq!(route(&mut h), Ok(8081));
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["accept", "x-aws-proxyish"]);
        let mut h = headers(&[]);
        assert_eq!(route(&mut h), Ok(8080));
        for bad in ["0", "65536", "http", ""] {
            let mut h = headers(&[("x-aws-proxy-port", bad)]);
            assert!(route(&mut h).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_port_from_the_subprotocol_and_platform_ones_removed() {
        let mut h = headers(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "lambda-microvms, lambda-microvms.authentication.abc, chat",
            ),
            (
                "sec-websocket-protocol",
                "lambda-microvms.port.9090, v2.chat",
            ),
        ]);
        assert_eq!(route(&mut h), Ok(9090));
        assert_eq!(h.get_all("sec-websocket-protocol").iter().count(), 1);
        assert_eq!(h["sec-websocket-protocol"], "chat, v2.chat");
        let mut h = headers(&[
            ("upgrade", "WebSocket"),
            ("sec-websocket-protocol", "lambda-microvms.port.7000"),
        ]);
        assert_eq!(route(&mut h), Ok(7000));
        assert!(h.get("sec-websocket-protocol").is_none());
        // Without an upgrade the subprotocol header is the application's business.
        let mut h = headers(&[("sec-websocket-protocol", "lambda-microvms.port.7000")]);
        assert_eq!(route(&mut h), Ok(8080));
        assert!(h.get("sec-websocket-protocol").is_some());
    }
}
