//! A tiny ingress target for the examples and tests: it tells the client what arrived.
//!
//! - HTTP/1.1: answers JSON `{port, method, path, headers, bodyLen}`; `GET /lease?ms=N`
//!   takes a keep-awake lease, answers at once, and holds the lease in the background
//!   for N ms (background work: no request in flight); `POST /discard` reads the body
//!   frame by frame without keeping it and answers `{"bodyLen":N}`; `GET /bytes?n=N`
//!   answers N bytes (`x`, streamed 64 KiB at a time, Content-Length N): what the
//!   benchmark streams through ingress; a WebSocket upgrade answers
//!   101 (with the first subprotocol it was offered, and `x-echo-port` /
//!   `x-echo-subprotocols` telling what it saw), then echoes bytes.
//! - HTTP/2 prior knowledge (h2c): the same answers as HTTP/1.1, over HTTP/2; the JSON's
//!   `version` says which arrived (`HTTP/2.0`, `HTTP/1.1`).
//! - Anything else: answers `RAW port=<port>\n`, then echoes.

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(port: u16) -> std::io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(connection(s, port));
    }
}

async fn echo_rest(mut s: TcpStream, greeting: String) {
    if s.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

async fn connection(s: TcpStream, port: u16) {
    let _ = s.set_nodelay(true);
    let mut b = [0u8; 4];
    let n = match tokio::time::timeout(Duration::from_secs(10), s.peek(&mut b)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    let b = &b[..n];
    if b.starts_with(b"PRI") {
        let svc = hyper::service::service_fn(move |req| answer(req, port));
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    } else if b[0].is_ascii_uppercase() {
        let svc = hyper::service::service_fn(move |req| answer(req, port));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .with_upgrades()
            .await;
    } else {
        echo_rest(s, format!("RAW port={port}\n")).await;
    }
}

/// `GET /bytes?n=N`: N bytes of `x`, 64 KiB frames sharing one buffer.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

type Answer = Response<Either<Full<Bytes>, Repeat>>;

fn full(body: impl Into<Bytes>) -> Either<Full<Bytes>, Repeat> {
    Either::Left(Full::new(body.into()))
}

async fn answer(mut req: Request<Incoming>, port: u16) -> Result<Answer, hyper::Error> {
    let websocket = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if websocket {
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-echo-port", port.to_string())
            .header("x-echo-subprotocols", offered.join(", "));
        if let Some(first) = offered.first().filter(|p| !p.is_empty()) {
            r = r.header("sec-websocket-protocol", first.as_str());
        }
        return Ok(r
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| Response::new(full(Bytes::new()))));
    }
    if req.uri().path() == "/discard" && req.method() == hyper::Method::POST {
        let mut body = req.into_body();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                len += data.len() as u64;
            }
        }
        return Ok(Response::new(full(format!("{{\"bodyLen\":{len}}}"))));
    }
    if req.uri().path() == "/bytes" && req.method() == hyper::Method::GET {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        return Ok(Response::new(Either::Right(Repeat { left: n, chunk })));
    }
    if req.uri().path() == "/lease" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let lease = hook_sdk::keep_awake();
        let held = lease.is_ok();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(lease);
        });
        return Ok(Response::new(full(format!(
            "{{\"leaseMs\":{ms},\"leased\":{held}}}"
        ))));
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // The path as sent (an HTTP/2 request's URI also carries scheme and authority).
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.to_string());
    let version = format!("{:?}", req.version());
    // HTTP/2's :authority, or HTTP/1.1's Host.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let body_len = req.into_body().collect().await?.to_bytes().len();
    let v = serde_json::json!({"port": port, "method": method, "path": path, "version": version,
                               "authority": authority,
                               "headers": headers, "bodyLen": body_len});
    Ok(Response::new(full(v.to_string())))
}

/// Ports from a comma-separated list.
pub fn ports(var: &str) -> Vec<u16> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}
