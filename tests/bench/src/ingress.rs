//! Ingress: the agent's ingress on a Unix socket in place of vsock, the echo app
//! behind it; each figure against the same traffic straight to the app.

use crate::agent::free_port;
use crate::report::{ms, pct, proc_kib};
use crate::Opts;
use microvm_local::http::{self, Stream};
use microvm_tests::{read_reply, HOOK_PREFIX};
use serde_json::json;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One GET on a fresh connection; returns the round trip.
fn timed_get(s: impl Into<Stream>, port: u16) -> Duration {
    let t0 = Instant::now();
    let port = port.to_string();
    let headers = [("Host", "b"), ("X-aws-proxy-port", port.as_str())];
    let r = http::send(s, "GET", "/x", &headers, b"").unwrap();
    assert_eq!(r.status, 200);
    t0.elapsed()
}

/// Upgrade to the echo app's WebSocket echo, then push `total` bytes through and read
/// them back; returns MB/s (both directions counted once).
fn stream_mbps<S: Read + Write + Send + 'static>(
    mut s: S,
    mut back: S,
    port: u16,
    total: usize,
) -> f64 {
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-aws-proxy-port: {port}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    // The 101 head ends with an empty line; read it byte by byte so no echo is eaten.
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
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            s.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        s
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < total {
        let n = back.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early");
        got += n;
    }
    let _ = writer.join();
    total as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

pub fn bench(o: &Opts) -> String {
    let echo = o.app.with_file_name("echo");
    if !echo.exists() {
        return format!("\ningress: skipped ({} missing)\n", echo.display());
    }
    let dir = o.out.join("ingress");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let cfg = json!({"imageName": "bench", "command": [std::fs::canonicalize(&echo).unwrap().display().to_string()],
                     "env": {"ECHO_PORTS": port.to_string()}});
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
    while TcpStream::connect(("127.0.0.1", port)).is_err() || UnixStream::connect(&ingress).is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ingress bench: app never up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = o.calls;
    let (mut via, mut direct) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        direct.push(timed_get(
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
            port,
        ));
        via.push(timed_get(UnixStream::connect(&ingress).unwrap(), port));
    }
    let total = 256 * 1024 * 1024;
    let d = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let direct_mbps = stream_mbps(d.try_clone().unwrap(), d, port, total);
    let v = UnixStream::connect(&ingress).unwrap();
    let via_mbps = stream_mbps(v.try_clone().unwrap(), v, port, total);
    // 1,000 idle keep-alive connections: each has served one request and stays open
    // (written by hand: the client closes after each request).
    let before = proc_kib(child.id(), "VmRSS:");
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = UnixStream::connect(&ingress).unwrap();
        let req = format!("GET /k HTTP/1.1\r\nHost: b\r\nX-aws-proxy-port: {port}\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_reply(&mut r).unwrap().status, 200);
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = proc_kib(child.id(), "VmRSS:");
    drop(idle);
    let _ = microvm_tests::http(
        &dir.join("control.sock"),
        "POST",
        &format!("{HOOK_PREFIX}terminate"),
        b"",
    );
    let _ = child.wait();
    let (v50, v99) = (pct(&mut via.clone(), 0.5), pct(&mut via, 0.99));
    let (d50, d99) = (pct(&mut direct.clone(), 0.5), pct(&mut direct, 0.99));
    format!(
        "\ningress (agent as a process, ingress on a Unix socket in place of vsock, echo app):\n\n\
         | figure | through agent | direct to app | ratio |\n|---|---|---|---|\n\
         | GET on a fresh connection, p50 | {:.3} ms | {:.3} ms | {:.2}x |\n\
         | GET on a fresh connection, p99 | {:.3} ms | {:.3} ms | {:.2}x |\n\
         | stream throughput (WebSocket echo, 256 MiB) | {:.0} MB/s | {:.0} MB/s | {:.2}x |\n\
         | agent RSS, 1,000 idle keep-alive connections | +{} KiB ({:.1} KiB each) | - | - |\n",
        ms(v50),
        ms(d50),
        ms(v50) / ms(d50),
        ms(v99),
        ms(d99),
        ms(v99) / ms(d99),
        via_mbps,
        direct_mbps,
        via_mbps / direct_mbps,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / 1000.0,
    )
}
