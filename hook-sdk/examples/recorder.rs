//! An example application: records every hook call and forwarded signal it receives
//! as one JSON line in `$RECORDER_LOG`, so tests can compare exactly what arrived.
//!
//! Behaviour knobs, for tests (all optional):
//! - `RECORDER_PORT`: hooks port (default 9000)
//! - `RECORDER_NOT_READY=N`: `/ready` answers 503 N times, then 200
//! - `RECORDER_FAIL=hook,...`: those hooks answer 500
//! - `RECORDER_HANG=hook,...`: those hooks never answer
//! - `RECORDER_NO_LISTEN=1`: never open the hooks port
//! - `RECORDER_CONTROL=path`: read at every hook call; lines `fail HOOK`, `hang HOOK`,
//!   `delay HOOK MS` change behaviour while the application runs; a call's record
//!   lists those that applied to it (`"with": ["fail"]`)
//!
//! - `RECORDER_HTTP_PORTS=8080,...`: also serve the echo ingress target on those ports
//! - `RECORDER_VSOCK_PROBE=port`: inside a guest, connect to the agent's control port
//!   from the loopback CID (1), i.e. not from the host, and record whether it answered
//! - `RECORDER_ALLOCATE_ON=word`: a `/run` whose payload is `word` answers, then
//!   allocates and touches memory, 4 MiB at a time, until the kernel kills it
//! - `RECORDER_ACTIONS=1`: a `/run` payload of space-separated words acts on them
//!   before answering: `lines:N` prints N numbered lines (`line <i> of <N>`) to stdout;
//!   `connect:HOST:PORT` tries a TCP connection (1 s) and records
//!   `{"connect": ..., "ok": bool, "error": ...}`; `tick:MS` prints `tick <i>` every
//!   MS milliseconds from then on, from a thread of its own (at most 100,000 lines)
//!
//! Every record carries `t`, this process's wall clock in Unix milliseconds, and is
//! also printed to stdout as `recorder: {json}` so a guest's console carries it.
//!
//! SIGTERM and SIGINT are recorded, then the process exits 0; SIGHUP, SIGUSR1 and
//! SIGUSR2 are recorded and ignored.

#[path = "common/echo.rs"]
mod echo;

use hook_sdk::{HookResponse, Hooks, RunRequest};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

struct Recorder {
    log: Mutex<Option<std::fs::File>>,
    not_ready_left: AtomicU32,
    fail: Vec<String>,
    hang: Vec<String>,
    control: Option<std::path::PathBuf>,
}

impl Recorder {
    /// One `RECORDER_ACTIONS` word from a `/run` payload.
    fn act(&self, word: &str) {
        if let Some(n) = word.strip_prefix("lines:") {
            let n: u64 = n.parse().unwrap_or(0);
            let out = std::io::stdout();
            let mut out = out.lock();
            for i in 0..n {
                let _ = writeln!(out, "line {i} of {n}");
            }
            let _ = out.flush();
        } else if let Some(ms) = word.strip_prefix("tick:") {
            let every = std::time::Duration::from_millis(ms.parse().unwrap_or(10).max(1));
            std::thread::spawn(move || {
                for i in 0..100_000u64 {
                    println!("tick {i}");
                    std::thread::sleep(every);
                }
            });
        } else if let Some(addr) = word.strip_prefix("connect:") {
            use std::net::ToSocketAddrs;
            let result = addr
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
                .and_then(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1))
                        .map_err(|e| e.to_string())
                });
            self.record(serde_json::json!({
                "connect": addr,
                "ok": result.is_ok(),
                "error": result.err(),
            }));
        }
    }

    fn record(&self, mut event: serde_json::Value) {
        event["pid"] = std::process::id().into();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        event["t"] = now.into();
        println!("recorder: {event}");
        if let Ok(mut guard) = self.log.lock() {
            if let Some(f) = guard.as_mut() {
                // One write per line keeps lines whole when read concurrently.
                let _ = f.write_all(format!("{event}\n").as_bytes());
            }
        }
    }

    async fn answer(&self, hook: &str) -> HookResponse {
        let directives = self.directives(hook);
        self.record(with(serde_json::json!({"hook": hook}), &directives));
        self.behave(hook, directives).await
    }

    /// Directives (`fail`, `hang`, `delay MS`) that apply to `hook` right now.
    fn directives(&self, hook: &str) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        out.extend(
            self.fail
                .iter()
                .filter(|h| *h == hook)
                .map(|_| ("fail".into(), 0)),
        );
        out.extend(
            self.hang
                .iter()
                .filter(|h| *h == hook)
                .map(|_| ("hang".into(), 0)),
        );
        let text = self
            .control
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.get(1) == Some(&hook) {
                let n = w.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
                out.push((w[0].to_string(), n));
            }
        }
        out
    }

    async fn behave(&self, hook: &str, directives: Vec<(String, u64)>) -> HookResponse {
        let mut response = HookResponse::Ok;
        for (what, n) in directives {
            match what.as_str() {
                "hang" => std::future::pending::<()>().await,
                "delay" => tokio::time::sleep(std::time::Duration::from_millis(n)).await,
                "fail" => response = HookResponse::error(500, format!("{hook} failed on purpose")),
                _ => {}
            }
        }
        response
    }
}

impl Hooks for Recorder {
    async fn ready(&self) -> HookResponse {
        let left = self.not_ready_left.load(Ordering::SeqCst);
        if left > 0 {
            self.not_ready_left.store(left - 1, Ordering::SeqCst);
            self.record(serde_json::json!({"hook": "ready", "answer": 503}));
            return HookResponse::NotReady;
        }
        self.answer("ready").await
    }
    async fn validate(&self) -> HookResponse {
        self.answer("validate").await
    }
    async fn run(&self, req: RunRequest) -> HookResponse {
        let directives = self.directives("run");
        let call = serde_json::json!({
            "hook": "run",
            "microvmId": req.microvm_id,
            "runHookPayload": req.run_hook_payload,
            "random": random_hex(),
        });
        self.record(with(call, &directives));
        if std::env::var_os("RECORDER_ACTIONS").is_some() {
            for word in req.run_hook_payload.split_whitespace() {
                self.act(word);
            }
        }
        if std::env::var("RECORDER_ALLOCATE_ON").ok() == Some(req.run_hook_payload.clone())
            && !req.run_hook_payload.is_empty()
        {
            std::thread::spawn(allocate_until_killed);
        }
        self.behave("run", directives).await
    }
    async fn resume(&self) -> HookResponse {
        self.answer("resume").await
    }
    async fn suspend(&self) -> HookResponse {
        self.answer("suspend").await
    }
    async fn terminate(&self) -> HookResponse {
        self.answer("terminate").await
    }
}

/// Grow the heap until the OOM killer ends the process, logging progress.
fn allocate_until_killed() {
    // Let the /run answer go out first.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        // Non-zero bytes: every page is really touched, none stays shared with zero.
        held.push(vec![0x5a; 4 << 20]);
        if held.len().is_multiple_of(8) {
            println!("recorder: allocated {} MiB", held.len() * 4);
        }
    }
}

/// A call's record names the directives that decided its answer (`"with": ["delay
/// 200"]`), so a test that changes them while requests are under way knows what each
/// call did; a call without any is recorded as before.
fn with(mut call: serde_json::Value, directives: &[(String, u64)]) -> serde_json::Value {
    if !directives.is_empty() {
        let d: Vec<String> = directives
            .iter()
            .map(|(what, n)| match what.as_str() {
                "delay" => format!("delay {n}"),
                _ => what.clone(),
            })
            .collect();
        call["with"] = d.into();
    }
    call
}

fn list(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let log = std::env::var_os("RECORDER_LOG").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let port = std::env::var("RECORDER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let rec = std::sync::Arc::new(Recorder {
        log: Mutex::new(log),
        not_ready_left: AtomicU32::new(
            std::env::var("RECORDER_NOT_READY")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        ),
        fail: list("RECORDER_FAIL"),
        hang: list("RECORDER_HANG"),
        control: std::env::var_os("RECORDER_CONTROL").map(Into::into),
    });
    rec.record(serde_json::json!({"started": std::process::id()}));
    if let Some(port) = std::env::var("RECORDER_VSOCK_PROBE")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        let rec = rec.clone();
        tokio::task::spawn_blocking(move || rec.record(vsock_probe(port)));
    }
    println!("recorder: started, hooks on port {port}");

    let signals = {
        let rec = rec.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                ("SIGTERM", SignalKind::terminate(), true),
                ("SIGINT", SignalKind::interrupt(), true),
                ("SIGHUP", SignalKind::hangup(), false),
                ("SIGUSR1", SignalKind::user_defined1(), false),
                ("SIGUSR2", SignalKind::user_defined2(), false),
            ];
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (name, kind, exits) in kinds {
                let mut s = signal(kind).expect("install signal handler");
                let tx = tx.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.send((name, exits));
                    }
                });
            }
            while let Some((name, exits)) = rx.recv().await {
                rec.record(serde_json::json!({"signal": name}));
                if exits {
                    println!("recorder: {name}, exiting");
                    return;
                }
            }
        }
    };

    for port in echo::ports("RECORDER_HTTP_PORTS") {
        tokio::spawn(echo::serve(port));
    }
    if std::env::var_os("RECORDER_NO_LISTEN").is_some() {
        signals.await;
        return;
    }
    let server = match hook_sdk::Server::bind(port).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("recorder: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = server.serve_with_shutdown(rec, signals).await {
        eprintln!("recorder: {e}");
        std::process::exit(1);
    }
}

/// Ask the agent's control channel for its status from CID 1 (vsock loopback): a peer
/// that is not the host. The agent must close such a connection without answering.
fn vsock_probe(port: u32) -> serde_json::Value {
    use std::io::{Read, Write};
    let addr = vsock::VsockAddr::new(vsock::VMADDR_CID_LOCAL, port);
    let mut s = match vsock::VsockStream::connect(&addr) {
        Ok(s) => s,
        Err(e) => {
            return serde_json::json!({"vsockProbe": {"cid": 1, "connectError": e.to_string()}})
        }
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        microvm_protocol::paths::STATUS
    );
    let _ = s.write_all(req.as_bytes());
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    serde_json::json!({"vsockProbe": {
        "cid": 1,
        "answered": !buf.is_empty(),
        "bytes": buf.len(),
        "readError": read.err().map(|e| e.to_string()),
    }})
}

/// 16 bytes from getrandom(2), hex: after `/run` reseeded the kernel, clones of one
/// snapshot must draw different ones.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most `b.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return format!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
