//! A fast local CloudWatch Logs endpoint for the log figures (moto, in Python, was
//! the bottleneck it was meant to measure around): HTTP/1.1 on 127.0.0.1, keep-alive,
//! Content-Length or chunked bodies, a thread per connection. `PutLogEvents` bodies
//! are parsed with serde_json (every event's message length counted, nothing kept)
//! and answered `{}`; `CreateLogGroup` and `CreateLogStream` answer `{}`. In stall
//! mode `PutLogEvents` is throttled (400 `ThrottlingException`, retried by the agent
//! with backoff), so the agent's buffer fills.

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const TARGET_PREFIX: &str = "Logs_20140328.";
const THROTTLED: &str = r#"{"__type":"ThrottlingException","message":"slow down"}"#;

#[derive(Default)]
struct Shared {
    events: AtomicU64,
    bytes: AtomicU64,
    puts: AtomicU64,
    throttled: AtomicU64,
    refused: AtomicU64,
    stall: AtomicBool,
    stop: AtomicBool,
}

pub struct CwServer {
    port: u16,
    shared: Arc<Shared>,
}

/// A message's length in bytes, decoded (escapes resolved) but never stored.
struct MsgLen(u64);

impl<'de> Deserialize<'de> for MsgLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MsgLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> Result<MsgLen, E> {
                Ok(MsgLen(v.len() as u64))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct Event {
    message: MsgLen,
}

#[derive(Deserialize)]
struct Put {
    #[serde(rename = "logEvents")]
    log_events: Vec<Event>,
}

/// Events and message bytes of a PutLogEvents body.
fn count(body: &[u8]) -> Result<(u64, u64), serde_json::Error> {
    let p: Put = serde_json::from_slice(body)?;
    let bytes = p.log_events.iter().map(|e| e.message.0).sum();
    Ok((p.log_events.len() as u64, bytes))
}

impl CwServer {
    pub fn start() -> CwServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the CloudWatch endpoint");
        let port = l.local_addr().expect("its address").port();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || {
                    let _ = serve(s, &sh);
                });
            }
        });
        CwServer { port, shared }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_stall(&self, on: bool) {
        self.shared.stall.store(on, Ordering::SeqCst);
    }

    /// Events and message bytes accepted so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.shared.events.load(Ordering::SeqCst),
            self.shared.bytes.load(Ordering::SeqCst),
        )
    }

    /// PutLogEvents calls accepted, throttled, and refused as unreadable.
    pub fn calls(&self) -> (u64, u64, u64) {
        (
            self.shared.puts.load(Ordering::SeqCst),
            self.shared.throttled.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CwServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Requests on one connection, one after another, until it closes.
fn serve(s: TcpStream, sh: &Shared) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::with_capacity(256 * 1024, s.try_clone()?);
    let mut w = s;
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let (mut len, mut chunked, mut target, mut expect, mut close) =
            (0usize, false, String::new(), false, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((k, v)) = h.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse().map_err(io::Error::other)?,
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "x-amz-target" => target = v.to_string(),
                "expect" => expect = v.eq_ignore_ascii_case("100-continue"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        if expect {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        body.clear();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let hex = size.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(hex, 16).map_err(io::Error::other)?;
                if n == 0 {
                    loop {
                        let mut t = String::new();
                        if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = body.len();
                body.resize(at + n, 0);
                r.read_exact(&mut body[at..])?;
                let mut crlf = [0u8; 2];
                r.read_exact(&mut crlf)?;
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        }
        let (status, answer) = handle(sh, &target, &body);
        let reason = if status == 200 { "OK" } else { "Bad Request" };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        w.write_all(head.as_bytes())?;
        w.write_all(answer.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn handle(sh: &Shared, target: &str, body: &[u8]) -> (u16, &'static str) {
    match target.strip_prefix(TARGET_PREFIX).unwrap_or(target) {
        "PutLogEvents" if sh.stall.load(Ordering::SeqCst) => {
            sh.throttled.fetch_add(1, Ordering::SeqCst);
            (400, THROTTLED)
        }
        "PutLogEvents" => match count(body) {
            Ok((events, bytes)) => {
                sh.events.fetch_add(events, Ordering::SeqCst);
                sh.bytes.fetch_add(bytes, Ordering::SeqCst);
                sh.puts.fetch_add(1, Ordering::SeqCst);
                (200, "{}")
            }
            Err(_) => {
                sh.refused.fetch_add(1, Ordering::SeqCst);
                (
                    400,
                    r#"{"__type":"SerializationException","message":"unreadable body"}"#,
                )
            }
        },
        "CreateLogGroup" | "CreateLogStream" => (200, "{}"),
        _ => (
            400,
            r#"{"__type":"UnknownOperationException","message":"not served here"}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Conn;

    const PUT: &str = "Logs_20140328.PutLogEvents";

    #[test]
    fn messages_are_counted_with_escapes_resolved() {
        let body = br#"{"logGroupName":"g","logStreamName":"s","logEvents":[
            {"timestamp":1,"message":"a \"quoted\" word"},{"timestamp":2,"message":"\u00e9"}]}"#;
        assert_eq!(count(body).unwrap(), (2, 15 + 2));
        assert!(count(b"{}").is_err());
    }

    #[test]
    fn keep_alive_puts_are_counted_and_stall_throttles() {
        let cw = CwServer::start();
        let s = TcpStream::connect(("127.0.0.1", cw.port)).unwrap();
        let mut c = Conn::new(s);
        let t = [("X-Amz-Target", "Logs_20140328.CreateLogGroup")];
        let a = c.head("POST", "/", &t, Some(2)).and_then(|_| {
            c.get_mut().write_all(b"{}")?;
            c.answer(true)
        });
        assert_eq!(a.unwrap().status, 200);
        let body = r#"{"logEvents":[{"timestamp":1,"message":"hello"}]}"#;
        let put = |c: &mut Conn<TcpStream>, expect: bool| {
            let mut h = vec![("X-Amz-Target", PUT)];
            if expect {
                h.push(("Expect", "100-continue"));
            }
            c.head("POST", "/", &h, Some(body.len() as u64)).unwrap();
            c.get_mut().write_all(body.as_bytes()).unwrap();
            let a = c.answer(true).unwrap();
            (a.status, String::from_utf8(a.body).unwrap())
        };
        assert_eq!(put(&mut c, false), (200, "{}".to_string()));
        assert_eq!(cw.received(), (1, 5));
        cw.set_stall(true);
        let (status, body) = put(&mut c, false);
        assert_eq!(status, 400);
        assert!(body.contains("ThrottlingException"));
        cw.set_stall(false);
        // 100 Continue first, then the answer, on the same connection.
        let a = put(&mut c, true);
        assert_eq!(a.0, 100);
        let a = c.answer(true).unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(cw.received(), (2, 10));
        assert_eq!(cw.calls(), (2, 1, 0));
    }
}
