//! CloudWatch Logs for tests: a real wire-protocol server (moto, from the project's
//! venv), a reader that pages GetLogEvents, and a fault-injecting proxy in front of it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn moto_binary() -> Option<std::path::PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    p.is_file().then_some(p)
}

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let bin = moto_binary().expect("moto not installed: run `make setup`");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One CloudWatch Logs API call (moto checks no signature, only the scope).
    pub fn call(&self, action: &str, body: &Value) -> Value {
        self.call_in("us-east-1", action, body)
    }

    /// [`Moto::call`] in `region` (moto keeps each region's logs apart).
    pub fn call_in(&self, region: &str, action: &str, body: &Value) -> Value {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let target = format!("Logs_20140328.{action}");
        let auth = format!("AWS4-HMAC-SHA256 Credential=test/20260101/{region}/logs/aws4_request, SignedHeaders=host, Signature=0");
        let headers = [
            ("Host", "127.0.0.1"),
            ("X-Amz-Target", target.as_str()),
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Authorization", auth.as_str()),
        ];
        let r = microvm_local::http::send(s, "POST", "/", &headers, body.to_string().as_bytes())
            .unwrap();
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Every message in the stream, oldest first (GetLogEvents, paged).
    pub fn messages(&self, group: &str, stream: &str) -> Vec<String> {
        self.messages_in("us-east-1", group, stream)
    }

    /// [`Moto::messages`] in `region`.
    pub fn messages_in(&self, region: &str, group: &str, stream: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({"logGroupName": group, "logStreamName": stream,
                                 "startFromHead": true, "limit": 10000});
            if let Some(t) = &token {
                req["nextToken"] = json!(t);
            }
            let v = self.call_in(region, "GetLogEvents", &req);
            let events = v["events"].as_array().cloned().unwrap_or_default();
            out.extend(
                events
                    .iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string)),
            );
            let next = v["nextForwardToken"].as_str().map(str::to_string);
            if events.is_empty() || next.is_none() || next == token {
                return out;
            }
            token = next;
        }
    }

    pub fn streams(&self, group: &str) -> Vec<String> {
        self.call("DescribeLogStreams", &json!({"logGroupName": group}))["logStreams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["logStreamName"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Forward = 0,
    /// Answer 400 ThrottlingException without forwarding.
    Throttle = 1,
    /// Close the connection at once, like a server that is gone.
    Down = 2,
    /// Answer 400 ExpiredTokenException to every request: credentials the service
    /// no longer accepts.
    Expired = 3,
}

/// An HTTP/1.1 proxy in front of moto that can throttle or drop, one request per
/// connection. Counts what it did.
pub struct FaultProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    pub forwarded_puts: Arc<AtomicU64>,
    pub throttled: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    /// The access key of every signed request (from `Authorization: ... Credential=`).
    pub access_keys: Arc<std::sync::Mutex<Vec<String>>>,
    /// The credential scope of every signed request (`KEY/DATE/REGION/SERVICE/aws4_request`).
    pub scopes: Arc<std::sync::Mutex<Vec<String>>>,
    /// In `Expired` mode, requests signed with this access key are forwarded all the
    /// same: the service accepts new credentials and refuses the old ones.
    accept_key: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let p = FaultProxy {
            port,
            mode: Arc::new(AtomicU8::new(Mode::Forward as u8)),
            forwarded_puts: Arc::default(),
            throttled: Arc::default(),
            dropped: Arc::default(),
            access_keys: Arc::default(),
            scopes: Arc::default(),
            accept_key: Arc::default(),
            stop: Arc::default(),
        };
        let scopes = p.scopes.clone();
        let accept = p.accept_key.clone();
        let (mode, puts, thr, drp, stop, keys) = (
            p.mode.clone(),
            p.forwarded_puts.clone(),
            p.throttled.clone(),
            p.dropped.clone(),
            p.stop.clone(),
            p.access_keys.clone(),
        );
        std::thread::spawn(move || {
            // Bounded: stops with the proxy, and never runs past ten minutes.
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(600) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (mode, puts, thr, drp) = (mode.clone(), puts.clone(), thr.clone(), drp.clone());
                let seen = (keys.clone(), scopes.clone(), accept.clone());
                std::thread::spawn(move || {
                    let _ = client.set_nonblocking(false);
                    let _ = client.set_nodelay(true);
                    let _ = serve_one(client, upstream, &mode, &puts, &thr, &drp, &seen);
                });
            }
        });
        p
    }

    /// In `Expired` mode, accept requests signed with `key` (see `accept_key`).
    pub fn accept_key(&self, key: &str) {
        *self.accept_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.to_string());
    }

    pub fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Access keys and credential scopes seen, in order; the key accepted while expired.
type Seen = (
    Arc<std::sync::Mutex<Vec<String>>>,
    Arc<std::sync::Mutex<Vec<String>>>,
    Arc<std::sync::Mutex<Option<String>>>,
);

fn serve_one(
    client: TcpStream,
    upstream: u16,
    mode: &AtomicU8,
    puts: &AtomicU64,
    throttled: &AtomicU64,
    dropped: &AtomicU64,
    seen: &Seen,
) -> std::io::Result<()> {
    let mut r = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut len = 0usize;
    let mut is_put = false;
    let mut signed_by = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") && lower.contains("putlogevents") {
            is_put = true;
        }
        if lower.starts_with("authorization:") {
            if let Some((_, rest)) = line.split_once("Credential=") {
                let scope = rest.split([',', ' ']).next().unwrap_or("").to_string();
                let key = scope.split('/').next().unwrap_or("").to_string();
                signed_by = Some(key.clone());
                seen.0.lock().unwrap_or_else(|p| p.into_inner()).push(key);
                seen.1.lock().unwrap_or_else(|p| p.into_inner()).push(scope);
            }
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let mut client = client;
    let accepted =
        signed_by.is_some() && *seen.2.lock().unwrap_or_else(|p| p.into_inner()) == signed_by;
    match mode.load(Ordering::SeqCst) {
        1 => {
            throttled.fetch_add(1, Ordering::SeqCst);
            let b = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nx-amzn-ErrorType: ThrottlingException\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
            client.write_all(resp.as_bytes())
        }
        2 => {
            dropped.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        3 if !accepted => {
            throttled.fetch_add(1, Ordering::SeqCst);
            let b = r#"{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nx-amzn-ErrorType: ExpiredTokenException\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                b.len()
            );
            client.write_all(resp.as_bytes())
        }
        _ => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
            up.set_nodelay(true)?;
            up.write_all(&head)?;
            up.write_all(&body)?;
            let mut resp = Vec::new();
            up.read_to_end(&mut resp)?;
            if is_put {
                puts.fetch_add(1, Ordering::SeqCst);
            }
            client.write_all(&resp)
        }
    }
}
