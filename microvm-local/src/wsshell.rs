//! The shell over WebSocket: how `microvm-local exec` and `shell` reach a MicroVM that
//! a `microvm-local serve` endpoint keeps, through the MicroVM's endpoint URL and a
//! shell auth token (CreateMicrovmShellAuthToken). The platform's own shell protocol
//! is not public; this one is ours, and the README's "The shell over WebSocket" is its
//! contract:
//!
//! 1. The client opens a WebSocket on the MicroVM's endpoint (`GET /`), offering the
//!    subprotocols `lambda-microvms.shell` and
//!    `lambda-microvms.authentication.<shell token>`. The endpoint answers `101`
//!    choosing `lambda-microvms.shell`, or refuses with an HTTP status (401, 403, 409,
//!    503) before anything reaches the guest.
//! 2. The client's first message is text: an exec request
//!    (`microvm_protocol::exec::ExecRequest`, the body of the agent's `POST /v1/exec`).
//! 3. The endpoint's first message is text: `{"pid": N}` once the command runs, or
//!    `{"status": S, "body": {...}}` when it could not start (the agent's refusal,
//!    404 for a command not found, or the endpoint's own), after which it closes.
//! 4. Then every binary message is exactly one exec frame of `microvm_protocol::exec`
//!    (5-byte header, payload): stdin, resize and signal from the client; stdout,
//!    stderr and exit from the endpoint, which closes (1000) after the exit frame.
//!    Anything else from the client closes the session (1008, with the reason); the
//!    client closing ends the command (the agent kills its process group).
//!
//! [`open`] is the client: it bridges the WebSocket onto one end of a Unix socket pair
//! and hands back an ordinary [`Session`] on the other, so `exec` and `shell` attach
//! to it exactly as they attach to a local MicroVM. [`carry`] moves frames between a
//! WebSocket and a stream, for both ends.

use crate::exec::{ExecError, Session};
use futures_util::{SinkExt, StreamExt};
use microvm_protocol::exec::{parse_header, ExecRequest, Kind, HEADER_LEN, MAX_FRAME};
use microvm_protocol::ingress::AUTH_SUBPROTOCOL;
use serde_json::{json, Value};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The subprotocol that asks a MicroVM's endpoint for the shell.
pub const PROTOCOL: &str = "lambda-microvms.shell";

/// Messages no larger than one whole exec frame.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(HEADER_LEN + MAX_FRAME))
        .max_frame_size(Some(HEADER_LEN + MAX_FRAME))
}

/// The endpoint's first message when the command runs.
pub fn started(pid: i32) -> String {
    json!({ "pid": pid }).to_string()
}

/// The endpoint's first message when the command could not start.
pub fn refused(status: u16, body: &Value) -> String {
    json!({ "status": status, "body": body }).to_string()
}

/// The endpoint's first message, read by the client: the pid, or the refusal.
pub fn parse_first(text: &str) -> Result<i32, ExecError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ExecError::Protocol(format!("the shell's first message {text:?}: {e}")))?;
    if let Some(pid) = v["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
        return Ok(pid);
    }
    match v["status"].as_u64().and_then(|s| u16::try_from(s).ok()) {
        Some(status) => Err(ExecError::Api {
            status,
            body: v["body"].clone(),
        }),
        None => Err(ExecError::Protocol(format!(
            "the shell's first message {text:?} has neither pid nor status"
        ))),
    }
}

/// Which end of the shell a [`carry`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The endpoint: the stream is the agent's exec session, the WebSocket's peer the
    /// client. Done after the exit frame.
    Endpoint,
    /// The client: the stream is the local session, the peer the endpoint. Done when
    /// the local session closes its end.
    Client,
}

impl Side {
    /// The frame kinds the WebSocket's peer may send.
    fn peer_sends(self, kind: Kind) -> bool {
        let from_host = matches!(kind, Kind::Stdin | Kind::Resize | Kind::Signal);
        match self {
            Side::Endpoint => from_host,
            Side::Client => !from_host,
        }
    }
}

/// One binary message as the exec frame it must be: its kind, if it is exactly one
/// whole frame of a kind `side`'s peer may send.
pub fn check_message(side: Side, message: &[u8]) -> Result<Kind, String> {
    let Some(head) = message.get(..HEADER_LEN) else {
        return Err(format!(
            "a binary message of {} bytes is shorter than a frame header",
            message.len()
        ));
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(head);
    let (kind, len) = parse_header(h)?;
    if message.len() != HEADER_LEN + len {
        return Err(format!(
            "a binary message must be one whole frame: its header says {len} payload bytes, it has {}",
            message.len() - HEADER_LEN
        ));
    }
    if !side.peer_sends(kind) {
        return Err(format!("a {kind:?} frame does not go this way"));
    }
    Ok(kind)
}

/// The next whole frame (header and payload) from `r`; `None` at a clean end between
/// frames.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let (kind, len) = parse_header(h).map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
    let mut frame = vec![0u8; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&h);
    r.read_exact(&mut frame[HEADER_LEN..]).await?;
    Ok(Some((kind, frame)))
}

/// Why a [`carry`] ended other than normally: the close code and reason to send.
pub type Broken = (CloseCode, String);

/// Frames both ways between `ws` and `stream` (whose first bytes, already read, are
/// `read_ahead`) until `side` is done. The two directions run as independent futures:
/// one waiting to send (a peer slow to read) never stops the other from reading, so
/// a command that fills its stdout while its stdin is still coming cannot wedge the
/// session. The caller closes `ws` with what this returns.
pub async fn carry<S, T>(
    ws: &mut WebSocketStream<S>,
    stream: T,
    read_ahead: Vec<u8>,
    side: Side,
) -> Result<(), Broken>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let (mut sink, mut source) = StreamExt::split(&mut *ws);
    // The stream's frames, one binary message each.
    let to_peer = async {
        let mut rd = (&read_ahead[..]).chain(rd);
        loop {
            match read_frame(&mut rd).await {
                Ok(Some((kind, bytes))) => {
                    if let Err(e) = sink.send(Message::binary(bytes)).await {
                        return Err((CloseCode::Away, format!("sending a frame: {e}")));
                    }
                    if side == Side::Endpoint && kind == Kind::Exit {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    return match side {
                        Side::Client => Ok(()),
                        Side::Endpoint => Err((
                            CloseCode::Error,
                            "the agent closed the session without an exit status".into(),
                        )),
                    }
                }
                Err(e) => return Err((CloseCode::Error, format!("the session's stream: {e}"))),
            }
        }
    };
    // The peer's messages, each checked to be one frame going its way.
    let from_peer = async {
        loop {
            match source.next().await {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(why) = check_message(side, &b) {
                        return Err((CloseCode::Policy, why));
                    }
                    if let Err(e) = wr.write_all(&b).await {
                        return Err((CloseCode::Error, format!("the session's stream: {e}")));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Err((
                        CloseCode::Policy,
                        "after the first message, only binary messages (one exec frame each)"
                            .into(),
                    ))
                }
                Some(Ok(Message::Close(Some(f)))) if f.code != CloseCode::Normal => {
                    if side == Side::Client {
                        // Said before the local session sees its end, so the person
                        // reads why the endpoint broke it off.
                        eprintln!(
                            "microvm-local: the endpoint closed the shell ({}): {}",
                            u16::from(f.code),
                            f.reason
                        );
                    }
                    return Ok(());
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(WsError::Capacity(e))) => return Err((CloseCode::Size, e.to_string())),
                Some(Err(e)) => return Err((CloseCode::Protocol, e.to_string())),
            }
        }
    };
    let result = tokio::select! {
        r = to_peer => r,
        r = from_peer => r,
    };
    let _ = wr.shutdown().await;
    result
}

/// How long a closing WebSocket waits for the peer's Close.
const CLOSING: Duration = Duration::from_secs(5);

/// Close `ws` with what [`carry`] (or an earlier step) returned, then wait (a few
/// seconds at most) for the peer's Close: dropping the connection with the peer's
/// data unread would reset it and could lose the last frames still on their way. A
/// close reason is at most 123 bytes: a longer one is cut at a character boundary.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    end: Result<(), Broken>,
) {
    let (code, mut reason) = match end {
        Ok(()) => (CloseCode::Normal, String::new()),
        Err(b) => b,
    };
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSING, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                return;
            }
        }
    })
    .await;
}

/// The WebSocket URL of a MicroVM's endpoint URL (`http://127.0.0.1:P` as
/// get-microvm gives it, or already `ws://`).
pub fn ws_url(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("ws://"))
        .ok_or_else(|| {
            format!("--endpoint-url {endpoint:?}: expected http://HOST:PORT (the local endpoint speaks no TLS)")
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("--endpoint-url {endpoint:?}: no host"));
    }
    Ok(format!("ws://{authority}/"))
}

/// Start `req` in the MicroVM behind `endpoint` with the shell auth token `token`:
/// a [`Session`] as [`Session::start`] gives for a local MicroVM. The WebSocket runs
/// on a thread of its own until the session ends; `answer` bounds the wait for the
/// command to start.
pub fn open(
    endpoint: &str,
    token: &str,
    req: &ExecRequest,
    answer: Duration,
) -> Result<Session, ExecError> {
    let url = ws_url(endpoint).map_err(ExecError::Protocol)?;
    let body = serde_json::to_string(req).map_err(|e| ExecError::Protocol(e.to_string()))?;
    let protocols = HeaderValue::from_str(&format!("{PROTOCOL}, {AUTH_SUBPROTOCOL}{token}"))
        .map_err(|_| ExecError::Protocol("the auth token is not a header value".into()))?;
    let (local, bridged) = std::os::unix::net::UnixStream::pair()?;
    bridged.set_nonblocking(true)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(ExecError::Io(e)));
                return;
            }
        };
        runtime.block_on(async move {
            let started = tokio::time::timeout(answer, handshake(&url, protocols, body)).await;
            let mut ws = match started {
                Ok(Ok((ws, pid))) => {
                    if tx.send(Ok(pid)).is_err() {
                        return;
                    }
                    ws
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = tx.send(Err(ExecError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the endpoint did not start the command within {answer:?}"),
                    ))));
                    return;
                }
            };
            let end = match tokio::net::UnixStream::from_std(bridged) {
                Ok(s) => carry(&mut ws, s, Vec::new(), Side::Client).await,
                Err(e) => Err((CloseCode::Error, e.to_string())),
            };
            close(&mut ws, end).await;
        });
    });
    let pid = rx.recv().map_err(|_| {
        ExecError::Protocol("the WebSocket's thread ended before the command started".into())
    })??;
    Ok(Session::upgraded(local, pid)?)
}

type ClientWs = WebSocketStream<tokio::net::TcpStream>;

/// Open the WebSocket, send the request, read the first answer.
async fn handshake(
    url: &str,
    protocols: HeaderValue,
    body: String,
) -> Result<(ClientWs, i32), ExecError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ExecError::Protocol(format!("{url}: {e}")))?;
    request
        .headers_mut()
        .insert(SEC_WEBSOCKET_PROTOCOL, protocols);
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config()))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => ExecError::Api {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null),
            },
            WsError::Io(e) => ExecError::Io(e),
            e => ExecError::Protocol(format!("the WebSocket handshake: {e}")),
        })?;
    ws.send(Message::text(body))
        .await
        .map_err(|e| ExecError::Protocol(format!("sending the exec request: {e}")))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return parse_first(&t).map(|pid| (ws, pid)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(Some(f)))) => {
                return Err(ExecError::Protocol(format!(
                    "the endpoint closed the shell ({}): {}",
                    u16::from(f.code),
                    f.reason
                )))
            }
            Some(Ok(other)) => {
                return Err(ExecError::Protocol(format!(
                    "the endpoint's first message is not text: {other:?}"
                )))
            }
            Some(Err(e)) => return Err(ExecError::Protocol(e.to_string())),
            None => {
                return Err(ExecError::Protocol(
                    "the endpoint closed the shell before the command started".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::exec::frame;

    #[test]
    fn messages_must_be_one_whole_frame_of_the_peers_kinds() {
        let stdin = frame(Kind::Stdin, b"ls\n");
        assert_eq!(check_message(Side::Endpoint, &stdin), Ok(Kind::Stdin));
        assert_eq!(
            check_message(Side::Endpoint, &frame(Kind::Resize, &[0, 5, 0, 6])),
            Ok(Kind::Resize)
        );
        assert_eq!(
            check_message(Side::Client, &frame(Kind::Stdout, b"x")),
            Ok(Kind::Stdout)
        );
        assert_eq!(
            check_message(Side::Endpoint, &frame(Kind::Stdout, b"x")),
            Err("a Stdout frame does not go this way".into())
        );
        assert_eq!(
            check_message(Side::Client, &stdin),
            Err("a Stdin frame does not go this way".into())
        );
        assert_eq!(
            check_message(Side::Endpoint, &stdin[..4]),
            Err("a binary message of 4 bytes is shorter than a frame header".into())
        );
        assert_eq!(
            check_message(Side::Endpoint, &stdin[..7]),
            Err("a binary message must be one whole frame: its header says 3 payload bytes, it has 2".into())
        );
        let mut two = stdin.clone();
        two.extend_from_slice(&stdin);
        assert!(check_message(Side::Endpoint, &two).is_err());
        assert!(check_message(Side::Endpoint, &[0xEE, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn first_messages_carry_the_pid_or_the_refusal() {
        assert_eq!(parse_first(&started(42)).unwrap(), 42);
        let body = json!({"error": "NotFound", "message": "command \"nope\" not found"});
        let e = parse_first(&refused(404, &body)).unwrap_err();
        assert_eq!(e.api(), Some((404, body)));
        assert_eq!(e.message(), "command \"nope\" not found");
        let e = parse_first(&refused(409, &json!({"message": "suspended"}))).unwrap_err();
        assert_eq!(e.message(), "suspended");
        for bad in ["", "{}", "[1]", r#"{"pid": "7"}"#, r#"{"status": 70000}"#] {
            assert!(
                matches!(parse_first(bad), Err(ExecError::Protocol(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn endpoint_urls_become_websocket_urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:4000").unwrap(),
            "ws://127.0.0.1:4000/"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:4000/some/path").unwrap(),
            "ws://127.0.0.1:4000/"
        );
        assert_eq!(ws_url("ws://localhost:9/").unwrap(), "ws://localhost:9/");
        assert!(ws_url("https://x.lambda-microvms.aws").is_err());
        assert!(ws_url("http://").is_err());
        assert!(ws_url("127.0.0.1:4000").is_err());
    }

    /// Both ends of `carry` over a real WebSocket on a socket pair: frames cross whole
    /// both ways, the endpoint stops after the exit frame, and a frame going the
    /// wrong way closes the session with 1008 and the reason.
    #[test]
    fn carry_moves_frames_and_refuses_the_wrong_ones() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // One WebSocket between "client" and "endpoint"; the endpoint's stream is
            // a fake agent that echoes stdin as stdout, then exits.
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
            let mut endpoint = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
            let (agent, mut agent_side) = tokio::io::duplex(1 << 20);
            let carried = tokio::spawn(async move {
                // The first frame arrived with the 101: it is read ahead.
                let ahead = frame(Kind::Stderr, b"ready");
                let end = carry(&mut endpoint, agent, ahead, Side::Endpoint).await;
                close(&mut endpoint, end).await;
            });
            let msg = |m: Option<Result<Message, WsError>>| match m {
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                other => panic!("{other:?}"),
            };
            assert_eq!(msg(client.next().await), frame(Kind::Stderr, b"ready"));
            client
                .send(Message::binary(frame(Kind::Stdin, b"hi")))
                .await
                .unwrap();
            let mut got = [0u8; 7];
            agent_side.read_exact(&mut got).await.unwrap();
            assert_eq!(got.to_vec(), frame(Kind::Stdin, b"hi"));
            let exit = frame(Kind::Exit, br#"{"exitCode":0,"reason":"exited"}"#);
            let mut out = frame(Kind::Stdout, b"hi");
            out.extend_from_slice(&exit);
            agent_side.write_all(&out).await.unwrap();
            assert_eq!(msg(client.next().await), frame(Kind::Stdout, b"hi"));
            assert_eq!(msg(client.next().await), exit);
            match client.next().await {
                Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
                other => panic!("{other:?}"),
            }
            // Reading on sends our Close back: the endpoint's closing handshake ends
            // without waiting out its time limit.
            assert!(client.next().await.is_none());
            carried.await.unwrap();

            // A stdout frame from the client: refused with the reason.
            let (a, b) = tokio::io::duplex(1 << 20);
            let mut client = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
            let mut endpoint = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
            let (agent, _agent_side) = tokio::io::duplex(1 << 20);
            let carried = tokio::spawn(async move {
                let end = carry(&mut endpoint, agent, Vec::new(), Side::Endpoint).await;
                close(&mut endpoint, end).await;
            });
            client
                .send(Message::binary(frame(Kind::Stdout, b"no")))
                .await
                .unwrap();
            match client.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(f.code, CloseCode::Policy);
                    assert_eq!(f.reason.as_str(), "a Stdout frame does not go this way");
                }
                other => panic!("{other:?}"),
            }
            assert!(client.next().await.is_none());
            carried.await.unwrap();
        });
    }
}
