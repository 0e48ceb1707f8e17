//! The endpoint's half of the shell over WebSocket (the protocol is in
//! [`crate::wsshell`]): the proxy has checked the shell token and the MicroVM's
//! state; this accepts the WebSocket, takes the exec request, starts it on the
//! agent's control channel (as `microvm-local exec` does for a local MicroVM) and
//! carries frames until the command exits or either side leaves.

use super::proxy::Body;
use crate::connect::{self, ConnectError};
use crate::exec::{ExecError, Session};
use crate::wsshell::{self, Side, PROTOCOL};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use microvm_protocol::exec::ExecRequest;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long the client has to send its exec request, and the agent to start it.
const FIRST_MESSAGE: Duration = Duration::from_secs(60);

/// Whether the request asks for the shell (it offers the shell's subprotocol).
pub fn asked(offered: &[String]) -> bool {
    offered.iter().any(|p| p == PROTOCOL)
}

/// Why the request is not a WebSocket opening the endpoint can accept.
fn not_a_websocket(req: &Request<Incoming>) -> Option<&'static str> {
    let has = |name, want: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    if req.method() != Method::GET {
        return Some("the shell is a WebSocket: GET with Upgrade: websocket");
    }
    if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") {
        return Some("the shell is a WebSocket: Upgrade: websocket and Connection: Upgrade");
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Some("Sec-WebSocket-Version must be 13");
    }
    if req.headers().get(SEC_WEBSOCKET_KEY).is_none() {
        return Some("Sec-WebSocket-Key is missing");
    }
    None
}

/// Accept the shell's WebSocket on MicroVM `id` (the token and state are checked)
/// and serve it on a task of its own.
pub fn accept(id: &str, mut req: Request<Incoming>) -> Response<Body> {
    if let Some(why) = not_a_websocket(&req) {
        return super::proxy::refuse(400, why);
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return super::proxy::refuse(400, "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = id.to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(wsshell::config()),
        )
        .await;
        let end = serve(&id, &mut ws).await;
        wsshell::close(&mut ws, end).await;
    });
    let answer = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL))
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Either::Right(Full::new(Bytes::new())));
    answer.unwrap_or_else(|_| super::proxy::refuse(500, "building the 101 answer"))
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The session, from the first message to its end.
async fn serve(id: &str, ws: &mut Ws) -> Result<(), wsshell::Broken> {
    let req = match tokio::time::timeout(FIRST_MESSAGE, first_request(ws)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err((
                CloseCode::Policy,
                format!("no exec request within {}s", FIRST_MESSAGE.as_secs()),
            ))
        }
    };
    let target = id.to_string();
    let started = tokio::task::spawn_blocking(move || start(&target, &req)).await;
    let session = match started {
        Ok(Ok(s)) => s,
        Ok(Err((status, body))) => {
            let _ = ws
                .send(Message::text(wsshell::refused(status, &body)))
                .await;
            return Ok(());
        }
        Err(e) => return Err((CloseCode::Error, format!("starting the command: {e}"))),
    };
    let pid = session.pid();
    if let Err(e) = ws.send(Message::text(wsshell::started(pid))).await {
        return Err((CloseCode::Away, e.to_string()));
    }
    let (stream, read_ahead) = session.into_stream();
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(stream))
        .map_err(|e| (CloseCode::Error, format!("the agent's session: {e}")))?;
    wsshell::carry(ws, stream, read_ahead, Side::Endpoint).await
}

/// The client's first message: the exec request.
async fn first_request(ws: &mut Ws) -> Result<ExecRequest, wsshell::Broken> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| {
                    (
                        CloseCode::Policy,
                        format!("the first message is not an exec request: {e}"),
                    )
                })
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => {
                return Err((CloseCode::Normal, String::new()));
            }
            Some(Ok(_)) => {
                return Err((
                    CloseCode::Policy,
                    "the first message must be text: an exec request".into(),
                ))
            }
            Some(Err(e)) => return Err((CloseCode::Protocol, e.to_string())),
        }
    }
}

/// Start `req` on the agent of MicroVM `id`: the session, or the refusal to send
/// (status and body).
fn start(id: &str, req: &ExecRequest) -> Result<Session, (u16, Value)> {
    let stream = connect::control(id).map_err(|e| {
        let status = match e {
            ConnectError::NotRunning { .. } => 404,
            ConnectError::Suspended { .. } | ConnectError::NoAnswer { .. } => 409,
            ConnectError::Failed { .. } => 502,
        };
        (status, json!({ "message": e.to_string() }))
    })?;
    let fail = |e: std::io::Error| (502, json!({ "message": e.to_string() }));
    stream.set_read_timeout(Some(FIRST_MESSAGE)).map_err(fail)?;
    let session = Session::start(stream, req).map_err(|e| match e {
        ExecError::Api { status, body } => (status, body),
        e => (
            502,
            json!({ "message": format!("the agent did not start the command: {e}") }),
        ),
    })?;
    session.set_read_timeout(None).map_err(fail)?;
    Ok(session)
}
