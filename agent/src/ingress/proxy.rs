//! Forwarding to the application: HTTP/1.1 request by request (WebSocket upgrades
//! spliced; HTTP/2 cleartext to the application when `X-aws-proxy-force-h2: true`),
//! everything else as a byte stream to the default port.

use super::borders::Borders;
use super::route::{is_websocket, route};
use super::stream::ClientStream;
use crate::activity::Activity;
use crate::http::drain;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use microvm_protocol::ingress;
use microvm_protocol::ports::DEFAULT_APP;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpStream;

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

/// An error answer, once the client has finished sending its body.
async fn refuse(req: Request<Incoming>, status: StatusCode, msg: String) -> Response<Body> {
    drain(req.into_body()).await;
    plain(status, msg)
}

/// Bytes each way a spliced stream (a WebSocket after its upgrade, a raw stream)
/// copies per read: large enough that a bulk transfer costs few system calls, small
/// enough that a thousand open streams cost tens of MiB, not hundreds.
pub const STREAM_BUFFER: usize = 32 * 1024;

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// The application connection of one client connection: the next request to the same
/// port within [`crate::keep::KEEP_IDLE`] goes over it, as the client's own
/// keep-alive would. One at most, so a client connection costs the two descriptors
/// the budget counts (its own and one to the app). The server side hands this
/// connection one request at a time, so a kept connection is never shared by two.
pub type Upstreams = crate::keep::Slot<Sender>;

/// A kept connection to `port` that can take a request now, else a new one; the flag
/// says whether it is new.
async fn upstream(upstreams: &Upstreams, port: u16) -> Result<(Sender, bool), String> {
    // Taken for another port, the kept one is dropped: its connection task closes it
    // at its next poll, so a client connection briefly holds one descriptor more.
    if let Some(mut s) = upstreams.take(port) {
        // Ready once the last answer's body is through; an error means the app closed it.
        if !s.is_closed() && s.ready().await.is_ok() {
            return Ok((s, false));
        }
    }
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("nothing is listening on port {port} in the MicroVM: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("port {port}: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    Ok((sender, true))
}

/// `share` is the connection's place in the descriptor budget: an upgraded stream
/// outlives the HTTP connection and keeps it.
pub async fn proxy(
    mut req: Request<Incoming>,
    activity: Arc<Activity>,
    borders: Arc<Borders>,
    share: Arc<tokio::sync::OwnedSemaphorePermit>,
    upstreams: Arc<Upstreams>,
) -> Result<Response<Body>, Infallible> {
    // A request in flight is activity until its answer's head is back.
    let _busy = activity.busy();
    // Read before route() strips the platform's headers.
    let h2 = ingress::force_h2(
        req.headers()
            .get(ingress::FORCE_H2_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    let port = match route(req.headers_mut()) {
        Ok(p) => p,
        Err(e) => return Ok(refuse(req, StatusCode::BAD_REQUEST, e).await),
    };
    if let Some(why) = borders.refusal(req.uri().path(), port) {
        return Ok(refuse(req, StatusCode::FORBIDDEN, why).await);
    }
    if h2 {
        if is_websocket(req.headers()) {
            let why = "X-aws-proxy-force-h2: true cannot carry a WebSocket upgrade (HTTP/2 has no Upgrade)";
            return Ok(refuse(req, StatusCode::BAD_REQUEST, why.into()).await);
        }
        // The kept HTTP/1.1 connection goes: a client connection holds two
        // descriptors at most (its own and one to the app).
        drop(upstreams.take(port));
        return Ok(forward_h2(req, port).await);
    }
    let client_upgrade = is_websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let mut resp = loop {
        let (mut sender, fresh) = match upstream(&upstreams, port).await {
            Ok(s) => s,
            Err(msg) => return Ok(refuse(req, StatusCode::BAD_GATEWAY, msg).await),
        };
        match sender.try_send_request(req).await {
            Ok(r) => {
                if r.status() != StatusCode::SWITCHING_PROTOCOLS {
                    upstreams.keep(port, sender);
                }
                break r;
            }
            Err(mut e) => match e.take_message() {
                // A kept connection the app closed as the request went: nothing was
                // sent, so it goes again on a new connection.
                Some(r) if !fresh => req = r,
                Some(r) => {
                    let msg = format!("port {port}: {}", e.into_error());
                    return Ok(refuse(r, StatusCode::BAD_GATEWAY, msg).await);
                }
                None => {
                    let msg = format!("port {port}: {}", e.into_error());
                    return Ok(plain(StatusCode::BAD_GATEWAY, msg));
                }
            },
        }
    };
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (resp.status(), client_upgrade) {
        let app = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(a)) = (client.await, app.await) {
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut TokioIo::new(c),
                    &mut TokioIo::new(a),
                    STREAM_BUFFER,
                    STREAM_BUFFER,
                )
                .await;
            }
            drop(share);
        });
    }
    Ok(resp.map(|b| b.boxed()))
}

/// Headers HTTP/2 forbids (RFC 9113, 8.2.2): they describe an HTTP/1.1 connection.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The request as HTTP/2 over cleartext with prior knowledge, on a connection of
/// its own, and the answer back as HTTP/1.1.
async fn forward_h2(req: Request<Incoming>, port: u16) -> Response<Body> {
    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("nothing is listening on port {port} in the MicroVM: {e}");
            return refuse(req, StatusCode::BAD_GATEWAY, msg).await;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("port {port}: no HTTP/2 (X-aws-proxy-force-h2): {e}");
                return refuse(req, StatusCode::BAD_GATEWAY, msg).await;
            }
        };
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    // Headers that `Connection` names are this hop's too (RFC 9110, 7.6.1).
    let named: Vec<String> = parts
        .headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for n in &named {
        parts.headers.remove(n.as_str());
    }
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if parts
        .headers
        .get(hyper::header::TE)
        .is_some_and(|v| v != "trailers")
    {
        parts.headers.remove(hyper::header::TE);
    }
    // :authority is the Host the client named; :scheme is http (cleartext).
    let authority = parts
        .headers
        .remove(hyper::header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| format!("127.0.0.1:{port}"));
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = match hyper::Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("Host {authority:?}: not an authority: {e}"),
            )
        }
    };
    parts.version = hyper::Version::HTTP_2;
    match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(mut resp) => {
            *resp.version_mut() = hyper::Version::HTTP_11;
            resp.map(|b| b.boxed())
        }
        Err(e) => plain(
            StatusCode::BAD_GATEWAY,
            format!("port {port} (HTTP/2): {e}"),
        ),
    }
}

pub async fn stream_to_app(mut client: ClientStream) {
    if let Ok(mut app) = TcpStream::connect(("127.0.0.1", DEFAULT_APP)).await {
        let _ = app.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut app,
            STREAM_BUFFER,
            STREAM_BUFFER,
        )
        .await;
    }
    // Not listening: dropping the client closes it, which is the answer for a stream.
}
