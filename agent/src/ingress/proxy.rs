//! Forwarding to the application: HTTP/1.1 request by request (WebSocket upgrades
//! spliced), everything else as a byte stream to the default port.

use super::borders::Borders;
use super::route::{is_websocket, route};
use super::stream::ClientStream;
use crate::activity::Activity;
use crate::http::drain;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// `share` is the connection's place in the descriptor budget: an upgraded stream
/// outlives the HTTP connection and keeps it.
pub async fn proxy(
    mut req: Request<Incoming>,
    activity: Arc<Activity>,
    borders: Arc<Borders>,
    share: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response<Body>, Infallible> {
    // A request in flight is activity until its answer's head is back.
    let _busy = activity.busy();
    let port = match route(req.headers_mut()) {
        Ok(p) => p,
        Err(e) => return Ok(refuse(req, StatusCode::BAD_REQUEST, e).await),
    };
    if let Some(why) = borders.refusal(req.uri().path(), port) {
        return Ok(refuse(req, StatusCode::FORBIDDEN, why).await);
    }
    let stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("nothing is listening on port {port} in the MicroVM: {e}");
            return Ok(refuse(req, StatusCode::BAD_GATEWAY, msg).await);
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("port {port}: {e}");
            return Ok(refuse(req, StatusCode::BAD_GATEWAY, msg).await);
        }
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
            drop(share);
        });
    }
    Ok(resp.map(|b| b.boxed()))
}

pub async fn stream_to_app(mut client: ClientStream) {
    if let Ok(mut app) = TcpStream::connect(("127.0.0.1", DEFAULT_APP)).await {
        let _ = app.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
    }
    // Not listening: dropping the client closes it, which is the answer for a stream.
}
