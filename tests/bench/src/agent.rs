//! The agent as an ordinary process with the recorder as its application, and the
//! two ways to reach a hook: through the agent, or straight to the application.

use crate::report::proc_kib;
use crate::Opts;
use microvm_protocol::paths;
use microvm_tests::{http, Reply, HOOK_PREFIX};
use serde_json::json;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Wait until the agent's control socket answers (any answer: it is up).
pub fn wait_control(sock: &std::path::Path, within: Duration) {
    let t0 = Instant::now();
    while http(sock, "GET", paths::STATUS, b"").is_err() {
        assert!(t0.elapsed() < within, "agent never ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub struct Agent {
    pub child: Child,
    pub sock: PathBuf,
    port: u16,
}

impl Agent {
    /// Start agent number `n`; returns it and how long it took to answer status.
    pub fn start(o: &Opts, n: usize) -> (Agent, Duration) {
        let dir = o.out.join(format!("agent-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let t = 10;
        let cfg = json!({
            "imageName": "bench",
            "command": [std::fs::canonicalize(&o.app).expect("app binary").display().to_string()],
            "env": {"RECORDER_PORT": port.to_string()},
            "hooks": {"port": port,
                "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": t},
                "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": t,
                    "suspend": "ENABLED", "suspendTimeoutInSeconds": t,
                    "resume": "ENABLED", "resumeTimeoutInSeconds": t,
                    "terminate": "ENABLED", "terminateTimeoutInSeconds": t}},
        });
        let cfg_path = dir.join("image.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let sock = dir.join("control.sock");
        let t0 = Instant::now();
        let child = Command::new(&o.agent)
            .arg("--control")
            .arg(format!("unix:{}", sock.display()))
            // Never the default vsock ingress: no vsock on the machine running this.
            .arg("--ingress")
            .arg(format!("unix:{}", dir.join("ingress.sock").display()))
            .arg("--image-config")
            .arg(&cfg_path)
            .env("MICROVM_AGENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent");
        loop {
            if let Ok(r) = http(&sock, "GET", paths::STATUS, b"") {
                if r.status == 200 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
            assert!(t0.elapsed() < Duration::from_secs(10), "agent never ready");
        }
        let ready = t0.elapsed();
        (Agent { child, sock, port }, ready)
    }

    pub fn hook(&self, hook: &str, body: &str) -> (u16, Duration) {
        let (r, d) = self.hook_reply(hook, body);
        (r.status, d)
    }

    /// A hook through the agent, its whole answer and its round trip.
    pub fn hook_reply(&self, hook: &str, body: &str) -> (Reply, Duration) {
        let t0 = Instant::now();
        let r = http(
            &self.sock,
            "POST",
            &format!("{HOOK_PREFIX}{hook}"),
            body.as_bytes(),
        )
        .expect("hook through agent");
        (r, t0.elapsed())
    }

    /// The baseline: the same hook straight to the application, a fresh TCP connection
    /// each time, exactly as the agent itself calls it.
    pub fn direct(&self, hook: &str, body: &str) -> (u16, Duration) {
        let t0 = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect app");
        let r = microvm_local::http::send(
            s,
            "POST",
            &format!("{HOOK_PREFIX}{hook}"),
            &[("Host", "127.0.0.1")],
            body.as_bytes(),
        )
        .expect("app answer");
        (r.status, t0.elapsed())
    }

    /// Resident and peak resident set, KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let pid = self.child.id();
        (proc_kib(pid, "VmRSS:"), proc_kib(pid, "VmHWM:"))
    }

    pub fn wait_app(&self) {
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "app never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stop(mut self) {
        let _ = self.hook("terminate", "");
        reap(&mut self.child, Duration::from_secs(10));
    }
}

/// Wait up to `within` for an agent told to terminate to power off, then kill it.
pub fn reap(child: &mut std::process::Child, within: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}
