//! Each MicroVM's ingress endpoint, as the platform's proxy keeps it: a request gets
//! through only with a valid, unexpired token (`X-aws-proxy-auth`, or the WebSocket
//! subprotocol `lambda-microvms.authentication.<token>`) that allows its port
//! (`X-aws-proxy-port` or `lambda-microvms.port.<n>`, default 8080). A refused
//! request never reaches the guest. The token is removed before forwarding; the port
//! and `X-aws-proxy-force-h2` go on to the agent's ingress, which acts on them.

use super::microvms::{self, State};
use super::Server;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use microvm_protocol::ingress::{
    self, AUTH_HEADER, AUTH_SUBPROTOCOL, PORT_HEADER, PORT_SUBPROTOCOL,
};

pub type Body = Either<Incoming, Full<Bytes>>;

/// Bind the MicroVM's endpoint on 127.0.0.1 and serve it until aborted.
pub async fn start(
    server: Arc<Server>,
    id: &str,
) -> std::io::Result<(tokio::task::AbortHandle, String)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let id = id.to_string();
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (server, id) = (server.clone(), id.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (server, id) = (server.clone(), id.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(server, &id, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok((task.abort_handle(), url))
}

pub fn refuse(status: u16, message: &str) -> Response<Body> {
    let body = serde_json::json!({"message": message}).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Either::Right(Full::new(Bytes::from(body))))
        .unwrap_or_else(|_| Response::new(Either::Right(Full::new(Bytes::new()))))
}

/// The subprotocols offered, in order.
fn protocols(req: &Request<Incoming>) -> Vec<String> {
    ingress::offered(
        req.headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The token and port a request presents, the port read as the agent reads it
/// ([`ingress::target_port`]); a malformed port is refused.
pub fn credentials(req: &Request<Incoming>) -> Result<(Option<String>, u16), String> {
    let offered = protocols(req);
    let token = req
        .headers()
        .get(AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            offered
                .iter()
                .find_map(|p| p.strip_prefix(AUTH_SUBPROTOCOL).map(str::to_string))
        });
    let header = req.headers().get(PORT_HEADER).map(|v| v.to_str().ok());
    let port = ingress::target_port(header, is_websocket(req), &offered)?;
    Ok((token, port))
}

async fn handle(server: Arc<Server>, id: &str, mut req: Request<Incoming>) -> Response<Body> {
    let (token, port) = match credentials(&req) {
        Ok(c) => c,
        Err(m) => return refuse(400, &m),
    };
    // The shell: a shell token, and the agent's control channel rather than a port.
    let shell = super::shell::asked(&protocols(&req));
    {
        let reg = server.reg();
        let Ok(r) = reg.get(id) else {
            return refuse(404, "no such MicroVM");
        };
        let now = super::wire::now_ms();
        if let Err((status, m)) = microvms::authorize(&r.tokens, token.as_deref(), port, shell, now)
        {
            return refuse(status, &m);
        }
        match r.state {
            State::Running => {}
            // Traffic to a port wakes it through the runner; the shell has no port.
            State::Suspended if r.auto_resume && !shell => {}
            State::Suspended => {
                return refuse(409, "the MicroVM is SUSPENDED and its idle policy does not resume it on traffic: ResumeMicrovm first")
            }
            s => return refuse(503, &format!("the MicroVM is {}", s.as_str())),
        }
    }
    if shell {
        return super::shell::accept(id, req);
    }
    // The token stays here: the guest never sees it. The port goes on as the one
    // header the agent reads, whatever else the request said: the agent connects to
    // the port that was authorized, and no other.
    req.headers_mut().remove(AUTH_HEADER);
    req.headers_mut().remove(PORT_HEADER);
    req.headers_mut()
        .insert(PORT_HEADER, HeaderValue::from(port));
    let kept: Vec<String> = protocols(&req)
        .into_iter()
        .filter(|p| !p.starts_with(AUTH_SUBPROTOCOL) && !p.starts_with(PORT_SUBPROTOCOL))
        .collect();
    req.headers_mut().remove(SEC_WEBSOCKET_PROTOCOL);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    forward(id, req).await
}

async fn forward(id: &str, mut req: Request<Incoming>) -> Response<Body> {
    let sock = super::endpoint_socket(id);
    let stream = match tokio::net::UnixStream::connect(&sock).await {
        Ok(s) => s,
        Err(e) => return refuse(502, &format!("the MicroVM's endpoint: {e}")),
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return refuse(502, &format!("the MicroVM's endpoint: {e}")),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return refuse(502, &format!("the MicroVM did not answer: {e}")),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let guest_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(g)) = (client_upgrade.await, guest_upgrade.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(g)).await;
            }
        });
    }
    resp.map(Either::Left)
}
