//! Ingress: the agent's ingress on a Unix socket in place of vsock, the echo app
//! behind it (on a free port, and on 8080, where byte streams go); each figure
//! against the same traffic straight to the app over TCP.

use crate::agent::free_port;
use crate::client::{Conn, CHUNK};
use crate::report::{lat_table, median, proc_kib, thousands, thr_table, Lat, Thr};
use crate::Opts;
use microvm_tests::{read_reply, HOOK_PREFIX};
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the agent sends byte streams (`DEFAULT_APP`).
pub const RAW_PORT: u16 = 8080;
/// Bytes per streaming figure.
const TOTAL: usize = 256 * 1024 * 1024;
const WARM_UP: usize = 20;
/// Streams are repeated until each way has run this long, within a bound of runs.
const STREAM_MIN_SECS: f64 = 2.0;
const STREAM_MAX_RUNS: usize = 25;
/// Targets.
const SPLICED_MIN: f64 = 0.8;
const HTTP_BODY_MIN: f64 = 0.6;
const FRESH_P50: f64 = 2.0;
const KEEP_ALIVE_P50: f64 = 1.5;
const IDLE_WANTED: usize = 10_000;
const IDLE_MAX_KIB: f64 = 14.0;
/// `agent/src/fdbudget.rs`: descriptors kept aside before ingress gets a quarter of
/// the rest (as connections, each holding two).
const FD_RESERVE: u64 = 64;

/// Fail early when the raw-stream row cannot have port 8080.
pub fn check_raw_port() -> Result<(), String> {
    std::net::TcpListener::bind(("0.0.0.0", RAW_PORT))
        .map(drop)
        .map_err(|e| {
            format!(
                "port {RAW_PORT} is taken ({e}): the ingress raw-stream figure needs the echo app \
                 on {RAW_PORT}, where the agent sends byte streams; stop whatever listens there \
                 and run the bench again"
            )
        })
}

/// Either way to the app: through the agent's ingress socket or straight over TCP.
#[derive(Clone, Copy)]
enum Way<'a> {
    Agent(&'a Path),
    Direct,
}

/// A connected stream of either kind.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(b),
            Sock::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(b),
            Sock::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sock {
    fn try_clone(&self) -> Sock {
        match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone().unwrap()),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone().unwrap()),
        }
    }
}

impl Way<'_> {
    /// A new connection: to the ingress socket, or to `port` on the app.
    fn connect(self, port: u16) -> Sock {
        match self {
            Way::Agent(sock) => Sock::Unix(UnixStream::connect(sock).expect("connect ingress")),
            Way::Direct => {
                let s = TcpStream::connect(("127.0.0.1", port)).expect("connect app");
                s.set_nodelay(true).unwrap();
                Sock::Tcp(s)
            }
        }
    }
}

/// One GET on `c`; returns the round trip.
fn timed_get(c: &mut Conn<Sock>, port: &str) -> Duration {
    let t0 = Instant::now();
    let a = c
        .get("/x", &[("X-aws-proxy-port", port)], false)
        .expect("GET");
    assert_eq!(a.status, 200);
    t0.elapsed()
}

/// GET latency both ways, on a fresh connection each time or on one kept open;
/// warmed up, the two ways taking turns going first.
fn latency(n: usize, ingress: &Path, port: u16, fresh: bool) -> (Vec<Duration>, Vec<Duration>) {
    let p = port.to_string();
    let ways = [Way::Direct, Way::Agent(ingress)];
    let mut kept: Vec<Conn<Sock>> = ways.iter().map(|w| Conn::new(w.connect(port))).collect();
    let mut one = |k: usize| {
        if fresh {
            let t0 = Instant::now();
            let mut c = Conn::new(ways[k].connect(port));
            timed_get(&mut c, &p);
            t0.elapsed()
        } else {
            timed_get(&mut kept[k], &p)
        }
    };
    for _ in 0..WARM_UP {
        one(0);
        one(1);
    }
    let (mut via, mut direct) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let order = if i.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for k in order {
            let d = one(k);
            if k == 0 {
                direct.push(d);
            } else {
                via.push(d);
            }
        }
    }
    (via, direct)
}

/// Push `TOTAL` bytes through an echo and read them back, the writer on a thread of
/// its own; returns MB/s (each byte counted once). `greeting` is what the app says
/// first (the raw echo's `RAW port=8080\n`).
fn echo_mbps(mut s: Sock, mut back: Sock, fill: u8, greeting: &[u8], t0: Instant) -> f64 {
    let writer = std::thread::spawn(move || {
        let chunk = vec![fill; CHUNK];
        let mut sent = 0;
        while sent < TOTAL {
            s.write_all(&chunk).expect("stream write");
            sent += chunk.len();
        }
        s
    });
    let mut g = vec![0u8; greeting.len()];
    back.read_exact(&mut g).expect("greeting");
    assert_eq!(g, greeting, "{}", String::from_utf8_lossy(&g));
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < TOTAL {
        let n = back.read(&mut buf).expect("stream read");
        assert!(n > 0, "stream closed early");
        got += n;
    }
    let _ = writer.join();
    TOTAL as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

/// WebSocket: upgrade, then the echo; timed from the 101.
fn websocket(way: Way, port: u16) -> f64 {
    let mut s = way.connect(port);
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-aws-proxy-port: {port}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    // The 101 head ends with an empty line; read it byte by byte so no echo is eaten.
    let mut back = s.try_clone();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        back.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    echo_mbps(s, back, 0x5a, b"", Instant::now())
}

/// A raw byte stream (not HTTP: the first byte is no capital letter) to port 8080.
fn raw(way: Way) -> f64 {
    let t0 = Instant::now();
    let s = way.connect(RAW_PORT);
    let back = s.try_clone();
    echo_mbps(
        s,
        back,
        0xa5,
        format!("RAW port={RAW_PORT}\n").as_bytes(),
        t0,
    )
}

/// POST `TOTAL` bytes (Content-Length) to `/discard`; MB/s to its answer.
fn upload(way: Way, port: u16) -> f64 {
    let p = port.to_string();
    let t0 = Instant::now();
    let mut c = Conn::new(way.connect(port));
    let a = c
        .post_fill("/discard", &[("X-aws-proxy-port", &p)], TOTAL as u64, b'u')
        .expect("upload");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    assert_eq!(v["bodyLen"].as_u64(), Some(TOTAL as u64), "{v}");
    TOTAL as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

/// GET `TOTAL` bytes from `/bytes`; MB/s to its last byte.
fn download(way: Way, port: u16) -> f64 {
    let p = port.to_string();
    let t0 = Instant::now();
    let mut c = Conn::new(way.connect(port));
    let a = c
        .get(
            &format!("/bytes?n={TOTAL}"),
            &[("X-aws-proxy-port", &p)],
            false,
        )
        .expect("download");
    assert_eq!((a.status, a.len), (200, TOTAL as u64));
    TOTAL as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

/// How many idle connections fit the agent's ingress share of the descriptor limit
/// the agent inherits (raised to the hard limit, as the agent itself does), with a
/// margin; and that limit and share.
fn idle_count() -> (usize, u64, usize) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let limit = r.rlim_max;
    let share = (limit.saturating_sub(FD_RESERVE) / 4) as usize;
    (IDLE_WANTED.min(share.saturating_sub(16)), limit, share)
}

pub fn bench(o: &Opts) -> String {
    let echo = o.app.with_file_name("echo");
    if !echo.exists() {
        return format!("\n## Ingress\n\nskipped ({} missing)\n", echo.display());
    }
    if let Err(e) = check_raw_port() {
        panic!("{e}");
    }
    let dir = o.out.join("ingress");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = json!({"imageName": "bench", "command": [std::fs::canonicalize(&echo).unwrap().display().to_string()],
                     "env": {"ECHO_PORTS": format!("{port},{RAW_PORT}")}});
    std::fs::write(dir.join("image.json"), cfg.to_string()).unwrap();
    let ingress = dir.join("ingress.sock");
    let mut child = Command::new(&o.agent)
        .arg("--control")
        .arg(format!("unix:{}", dir.join("control.sock").display()))
        .arg("--ingress")
        .arg(format!("unix:{}", ingress.display()))
        .arg("--image-config")
        .arg(dir.join("image.json"))
        .env("MICROVM_AGENT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err()
        || TcpStream::connect(("127.0.0.1", RAW_PORT)).is_err()
        || UnixStream::connect(&ingress).is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ingress bench: app never up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let via = Way::Agent(&ingress);

    // 1. Idle keep-alive connections first, on a fresh agent (after a few requests),
    // so no buffer freed by the streams below is reused for them. Each has served one
    // request and stays open (the agent holds its upstream connection too).
    for _ in 0..WARM_UP {
        let mut c = Conn::new(via.connect(port));
        timed_get(&mut c, &port.to_string());
    }
    std::thread::sleep(Duration::from_millis(300));
    let (n_idle, limit, share) = idle_count();
    let before = proc_kib(child.id(), "VmRSS:");
    let mut idle = Vec::with_capacity(n_idle);
    let req = format!("GET /k HTTP/1.1\r\nHost: b\r\nX-aws-proxy-port: {port}\r\n\r\n");
    for _ in 0..n_idle {
        let mut s = UnixStream::connect(&ingress).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_reply(&mut r).unwrap().status, 200);
        idle.push(s);
    }
    // Past the agent's 1 s keep (crate::keep::KEEP_IDLE in the agent): the steady
    // state of idle client connections, their app connections closed.
    std::thread::sleep(Duration::from_millis(1500));
    let after = proc_kib(child.id(), "VmRSS:");
    // Still open and serving: one more request on the first and the last.
    for s in [idle.first(), idle.last()].into_iter().flatten() {
        let mut s = s;
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        assert_eq!(read_reply(&mut r).unwrap().status, 200);
    }
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let each = after.saturating_sub(before) as f64 / n_idle as f64;

    // 2. GET latency.
    let (v, d) = latency(o.calls, &ingress, port, true);
    let mut lat =
        vec![Lat::new("GET, a fresh connection each", v, Some(d)).target(Some(FRESH_P50), None)];
    let (v, d) = latency(o.calls, &ingress, port, false);
    lat.push(
        Lat::new("GET, one keep-alive connection", v, Some(d)).target(Some(KEEP_ALIVE_P50), None),
    );

    // 3. Streams, medians of `repeats`, the two ways taking turns going first.
    type Figure<'a> = (&'a str, f64, Box<dyn Fn(Way) -> f64 + 'a>);
    let mib = TOTAL / (1024 * 1024);
    let figures: Vec<Figure> = vec![
        (
            "WebSocket echo after the upgrade (spliced)",
            SPLICED_MIN,
            Box::new(|w| websocket(w, port)),
        ),
        (
            "raw byte stream echo, to port 8080",
            SPLICED_MIN,
            Box::new(raw),
        ),
        (
            "HTTP upload: POST /discard, Content-Length",
            HTTP_BODY_MIN,
            Box::new(|w| upload(w, port)),
        ),
        (
            "HTTP download: GET /bytes, Content-Length",
            HTTP_BODY_MIN,
            Box::new(|w| download(w, port)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, min, f) in &figures {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // A transfer can take well under 100 ms: repeat until each way has streamed
        // for STREAM_MIN_SECS at least (or STREAM_MAX_RUNS), so one hiccup of a busy
        // machine cannot decide the median.
        let secs = |v: &[f64]| v.iter().map(|mbps| TOTAL as f64 / 1e6 / mbps).sum::<f64>();
        let mut i = 0;
        while i < o.repeats || (secs(&a).min(secs(&b)) < STREAM_MIN_SECS && i < STREAM_MAX_RUNS) {
            if i.is_multiple_of(2) {
                b.push(f(Way::Direct));
                a.push(f(via));
            } else {
                a.push(f(via));
                b.push(f(Way::Direct));
            }
            i += 1;
        }
        let (a, b) = (median(&a), median(&b));
        rows.push(Thr {
            figure: format!("{name}, {mib} MiB (median of {i})"),
            agent: format!("{a:.0} MB/s"),
            baseline: format!("{b:.0} MB/s"),
            ratio: format!("{:.2}x", a / b),
            target: format!(">= {min}x"),
            met: Some(a / b >= *min),
        });
    }
    rows.push(Thr {
        figure: format!(
            "{} idle keep-alive connections, each served one GET, 1.5 s later ({} wanted; \
             the agent's ingress share under RLIMIT_NOFILE {} is {})",
            thousands(n_idle as u64),
            thousands(IDLE_WANTED as u64),
            thousands(limit),
            thousands(share as u64)
        ),
        agent: format!(
            "+{} KiB RSS ({each:.1} KiB each)",
            thousands(after.saturating_sub(before))
        ),
        baseline: "-".into(),
        ratio: "-".into(),
        target: format!("<= {IDLE_MAX_KIB} KiB each"),
        met: Some(each <= IDLE_MAX_KIB),
    });

    let _ = microvm_tests::http(
        &dir.join("control.sock"),
        "POST",
        &format!("{HOOK_PREFIX}terminate"),
        b"",
    );
    let _ = child.wait();
    let mut out = format!(
        "\n## Ingress\n\nThe agent's ingress on a Unix socket in place of vsock, the echo app \
         behind it; baseline: the same traffic straight to the app over TCP (hand-written \
         HTTP/1.1 client both ways). Latency: {WARM_UP} untimed GETs each way first, the two ways \
         taking turns going first. Streams: medians of at least {} runs each way, taking turns, \
         and more until each way has streamed {STREAM_MIN_SECS} s (at most {STREAM_MAX_RUNS}).\n\n",
        o.repeats
    );
    out.push_str(&lat_table(lat));
    out.push('\n');
    out.push_str(&thr_table(&rows));
    out
}
