//! `make bench`: the agent's own costs, each against a baseline from the same run.
//!
//! The agent runs as an ordinary process here (not PID 1: no namespaces, so the
//! application's hooks port is reachable directly for the baseline), with the
//! release build of the example application as its command.

use microvm_tests::{http, read_reply, HOOK_PREFIX};
use serde_json::json;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    agent: PathBuf,
    app: PathBuf,
    out: PathBuf,
    boots: usize,
    calls: usize,
    image: Option<PathBuf>,
    vm_boots: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        agent: "target/x86_64-unknown-linux-musl/release/microvm-agent".into(),
        app: "target/release/examples/recorder".into(),
        out: "target/bench".into(),
        boots: 50,
        calls: 2000,
        image: None,
        vm_boots: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--agent" => o.agent = v.into(),
            "--app" => o.app = v.into(),
            "--out" => o.out = v.into(),
            "--boots" => o.boots = v.parse().expect("--boots N"),
            "--calls" => o.calls = v.parse().expect("--calls N"),
            "--image" => o.image = Some(v.into()),
            "--vm-boots" => o.vm_boots = v.parse().expect("--vm-boots N"),
            _ => panic!("unknown flag {a}"),
        }
    }
    o
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Agent {
    child: Child,
    sock: PathBuf,
    port: u16,
}

impl Agent {
    fn start(o: &Opts, n: usize) -> (Agent, Duration) {
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
            .arg("--image-config")
            .arg(&cfg_path)
            .env("MICROVM_AGENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent");
        loop {
            if let Ok(r) = http(&sock, "GET", "/v1/status", b"") {
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

    fn hook(&self, hook: &str, body: &str) -> (u16, Duration) {
        let t0 = Instant::now();
        let r = http(
            &self.sock,
            "POST",
            &format!("{HOOK_PREFIX}{hook}"),
            body.as_bytes(),
        )
        .expect("hook through agent");
        (r.status, t0.elapsed())
    }

    /// The baseline: the same hook straight to the application, a fresh TCP connection
    /// each time, exactly as the agent itself calls it.
    fn direct(&self, hook: &str, body: &str) -> (u16, Duration) {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect app");
        let _ = s.set_nodelay(true);
        let req = format!(
            "POST {HOOK_PREFIX}{hook} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let r = read_reply(&mut BufReader::new(s)).expect("app answer");
        (r.status, t0.elapsed())
    }

    fn rss_kib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn wait_app(&self) {
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "app never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(mut self) {
        let _ = self.hook("terminate", "");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row(String, Vec<Duration>, Option<Vec<Duration>>);

fn main() {
    let o = opts();
    std::fs::create_dir_all(&o.out).unwrap();
    let run = json!({"microvmId": "mvm-bench", "runHookPayload": "x".repeat(1024)}).to_string();

    // 1. Start to control-ready, and /run once per boot (/run happens once per VM).
    let mut ready = Vec::new();
    let mut runs = Vec::new();
    let mut runs_direct = Vec::new();
    let mut rss = (0, 0);
    for n in 0..o.boots {
        let (a, t) = Agent::start(&o, n);
        ready.push(t);
        a.wait_app();
        let (s, d) = a.direct("run", &run);
        assert_eq!(s, 200);
        runs_direct.push(d);
        let (s, d) = a.hook("run", &run);
        assert_eq!(s, 200, "run through agent");
        runs.push(d);
        if n == 0 {
            rss = a.rss_kib();
        }
        a.stop();
    }

    // 2. Repeated hook calls on one agent: ready (image build), then suspend/resume.
    let (a, _) = Agent::start(&o, o.boots);
    a.wait_app();
    let mut rows = vec![Row("/run (1 per boot)".into(), runs, Some(runs_direct))];
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..o.calls {
        direct.push(a.direct("ready", "").1);
        let (s, d) = a.hook("ready", "");
        assert_eq!(s, 200);
        through.push(d);
    }
    rows.push(Row("/ready".into(), through, Some(direct)));
    assert_eq!(a.hook("run", &run).0, 200);
    let (mut sus, mut res, mut sus_d, mut res_d) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.calls / 2 {
        sus_d.push(a.direct("suspend", "").1);
        let (s, d) = a.hook("suspend", "");
        assert_eq!(s, 200);
        sus.push(d);
        res_d.push(a.direct("resume", "").1);
        let (s, d) = a.hook("resume", "");
        assert_eq!(s, 200);
        res.push(d);
    }
    rows.push(Row("/suspend".into(), sus, Some(sus_d)));
    rows.push(Row("/resume".into(), res, Some(res_d)));
    let mut status = Vec::new();
    for _ in 0..o.calls {
        let t0 = Instant::now();
        let r = http(&a.sock, "GET", "/v1/status", b"").unwrap();
        assert_eq!(r.status, 200);
        status.push(t0.elapsed());
    }
    rows.push(Row("GET /v1/status (no app call)".into(), status, None));
    let rss_after_many = a.rss_kib();
    a.stop();

    let size = std::fs::metadata(&o.agent).map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "agent binary: {} ({} bytes = {:.2} MiB)\n\n",
        o.agent.display(),
        size,
        size as f64 / 1048576.0
    ));
    out.push_str(&format!(
        "start to control-ready ({} boots): p50 {:.2} ms, p99 {:.2} ms\n",
        o.boots,
        ms(pct(&mut ready.clone(), 0.5)),
        ms(pct(&mut ready, 0.99))
    ));
    out.push_str(&format!(
        "agent RSS after /run: {} KiB (peak {} KiB); after {} more hook calls: {} KiB (peak {} KiB)\n\n",
        rss.0,
        rss.1,
        o.calls * 2,
        rss_after_many.0,
        rss_after_many.1
    ));
    out.push_str("| request | through agent p50 | p99 | direct to app p50 | p99 | ratio p50 | ratio p99 |\n|---|---|---|---|---|---|---|\n");
    for Row(name, mut t, d) in rows {
        let (p50, p99) = (pct(&mut t, 0.5), pct(&mut t, 0.99));
        match d {
            Some(mut d) => {
                let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
                out.push_str(&format!(
                    "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.2}x | {:.2}x |\n",
                    ms(p50),
                    ms(p99),
                    ms(d50),
                    ms(d99),
                    ms(p50) / ms(d50),
                    ms(p99) / ms(d99)
                ));
            }
            None => out.push_str(&format!(
                "| {name} | {:.3} ms | {:.3} ms | - | - | - | - |\n",
                ms(p50),
                ms(p99)
            )),
        }
    }
    out.push_str(&logs_bench(&o));
    out.push_str(&ingress_bench(&o));
    if let Some(image) = &o.image {
        out.push_str(&vm_bench(image, &o));
    }
    print!("{out}");
    std::fs::write(o.out.join("report.md"), &out).unwrap();
}

/// Seconds on the guest's boot clock of the first console line containing `what`.
fn stamp(serial: &str, what: &str) -> Option<f64> {
    let line = serial.lines().find(|l| l.contains(what))?;
    let inner = line.split_once('[')?.1.split_once(']')?.0;
    inner.trim().parse().ok()
}

fn vm_bench(image: &std::path::Path, o: &Opts) -> String {
    use microvm_tests::vm::{tools_available, Image, Vm, VmOpts};
    if let Err(e) = tools_available() {
        return format!("\nreal guest: skipped ({e})\n");
    }
    let img = Image::open(image).expect("image");
    let (mut announce, mut first_rt, mut agent_share, mut kernel_to_agent) =
        (vec![], vec![], vec![], vec![]);
    let mut used_kib = 0;
    for n in 0..o.vm_boots {
        let dir = o.out.join(format!("vm-{n}"));
        let vm = Vm::boot(&img, &VmOpts::default(), &dir).expect("boot");
        announce.push(vm.boot_time);
        let s = vm.status().expect("status over vsock");
        first_rt.push(vm.started.elapsed());
        if n == 0 {
            let g = &s["guest"];
            used_kib =
                g["memTotalKiB"].as_u64().unwrap_or(0) - g["memAvailableKiB"].as_u64().unwrap_or(0);
        }
        let serial = vm.serial();
        if let (Some(a), Some(b)) = (
            stamp(&serial, "microvm-agent starting"),
            stamp(&serial, "control channel ready"),
        ) {
            agent_share.push(Duration::from_secs_f64(b - a));
            kernel_to_agent.push(Duration::from_secs_f64(a));
        }
        let _ = vm.hook("terminate", "");
    }
    let med = |v: &mut Vec<Duration>| ms(pct(v, 0.5));
    let size = std::fs::metadata(&img.rootfs).map(|m| m.len()).unwrap_or(0);
    let used = std::process::Command::new("du")
        .args(["-sk"])
        .arg(image.join("rootfs"))
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    format!(
        "\nreal guest (QEMU TCG, 128 MiB, 1 vCPU; median of {} boots):\n\
         - QEMU start to the agent's vsock announcement: {:.0} ms\n\
         - QEMU start to the first /v1/status answered over vsock: {:.0} ms\n\
         - guest boot clock at the agent's first log line (kernel + rootfs mount): {:.0} ms\n\
         - agent's own share, first log line to control-ready (guest CLOCK_BOOTTIME, includes loading 9 modules): {:.0} ms\n\
         - image: rootfs.ext4 {} KiB ({} KiB of files), agent + app + modules\n\
         - guest memory in use after boot (MemTotal - MemAvailable): {} KiB\n",
        o.vm_boots,
        med(&mut announce),
        med(&mut first_rt),
        med(&mut kernel_to_agent),
        med(&mut agent_share),
        size / 1024,
        used,
        used_kib
    )
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After ")": state is field 0, utime field 11, stime field 12.
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (t(11) + t(12)) / hz
}

struct Ingest {
    secs: f64,
    lines: u64,
    bytes: u64,
    cpu: f64,
    hwm_kib: u64,
}

/// Start an agent whose app writes `file` as fast as it can once told to; run it with
/// `logging`; time from "go" until a /suspend (which flushes) has answered.
fn ingest(
    o: &Opts,
    name: &str,
    file: &std::path::Path,
    logging: serde_json::Value,
    endpoint: Option<&str>,
) -> Ingest {
    let dir = o.out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.005; done; cat {file}; exec sleep 1000",
        go = go.display(),
        file = file.display()
    );
    let cfg = json!({"imageName": "bench", "command": ["/bin/sh", "-c", script],
                     "hooks": {"microvmHooks": {"suspend": "DISABLED"}}});
    std::fs::write(dir.join("image.json"), cfg.to_string()).unwrap();
    let sock = dir.join("control.sock");
    let mut cmd = Command::new(&o.agent);
    cmd.arg("--control")
        .arg(format!("unix:{}", sock.display()))
        .arg("--image-config")
        .arg(dir.join("image.json"))
        .env("MICROVM_AGENT_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(e) = endpoint {
        cmd.env("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", e);
    }
    let mut child = cmd.spawn().expect("agent");
    let t0 = Instant::now();
    while http(&sock, "GET", "/v1/status", b"").is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    let run = json!({"microvmId": "mvm-bench", "region": "us-east-1", "logging": logging,
                     "credentials": {"accessKeyId": "AKIDTEST", "secretAccessKey": "x"}});
    let r = http(
        &sock,
        "POST",
        &format!("{HOOK_PREFIX}run"),
        run.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cpu0 = cpu_seconds(child.id());
    let t0 = Instant::now();
    std::fs::write(&go, "").unwrap();
    let lines = std::fs::read(file)
        .unwrap()
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64;
    // Flush until everything captured has left (a flush has a deadline; repeat).
    loop {
        let r = http(&sock, "POST", &format!("{HOOK_PREFIX}suspend"), b"").unwrap();
        let st = http(&sock, "GET", "/v1/status", b"").unwrap().json();
        let c = &st["logs"]["counters"];
        let done = c["sentEvents"].as_u64().unwrap_or(0) + c["droppedEvents"].as_u64().unwrap_or(0);
        if r.status == 200 && done >= lines {
            break;
        }
        if r.status == 200 {
            let _ = http(&sock, "POST", &format!("{HOOK_PREFIX}resume"), b"");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "ingest never finished"
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(child.id()) - cpu0;
    let hwm_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let _ = http(&sock, "POST", &format!("{HOOK_PREFIX}terminate"), b"");
    let _ = child.wait();
    Ingest {
        secs,
        lines,
        bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        cpu,
        hwm_kib,
    }
}

fn lines_file(path: &std::path::Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut i = 0u64;
    let mut written = 0;
    while written < mib * 1024 * 1024 {
        // About 100 bytes a line, like a typical structured log line.
        let l = format!("{i:>12} level=info msg=\"request served\" path=/api/items status=200 took_ms=3 user=u{i}\n");
        written += l.len();
        f.write_all(l.as_bytes()).unwrap();
        i += 1;
    }
}

fn logs_bench(o: &Opts) -> String {
    let big = o.out.join("lines-256m.txt");
    let small = o.out.join("lines-16m.txt");
    if !big.exists() {
        lines_file(&big, 256);
    }
    if !small.exists() {
        lines_file(&small, 16);
    }
    // Baseline: the same file to /dev/null by the same program.
    let base = |f: &std::path::Path| {
        let t0 = Instant::now();
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("cat {} > /dev/null", f.display()))
            .status()
            .unwrap();
        assert!(st.success());
        t0.elapsed().as_secs_f64()
    };
    let mut out = String::from("\napplication logs (agent as a process, app `cat` of ~100-byte lines):\n\n| sink | data | lines/s | MB/s | vs cat > /dev/null | agent CPU s/GB | agent peak RSS |\n|---|---|---|---|---|---|---|\n");
    let mut row = |name: &str, i: &Ingest, base_s: f64| {
        let mb = i.bytes as f64 / 1e6;
        out.push_str(&format!(
            "| {name} | {:.0} MB | {:.0} | {:.1} | {:.3}x | {:.2} | {} KiB |\n",
            mb,
            i.lines as f64 / i.secs,
            mb / i.secs,
            base_s / i.secs,
            i.cpu / (i.bytes as f64 / 1e9),
            i.hwm_kib
        ));
    };
    let off = json!({"disabled": {}});
    let i = ingest(o, "logs-disabled", &big, off, None);
    row("disabled (dropped, counted)", &i, base(&big));
    match microvm_tests::cw::moto_binary() {
        Some(_) => {
            let m = microvm_tests::cw::Moto::start();
            let cw = json!({"cloudWatch": {"logGroup": "/bench"}});
            let i = ingest(o, "logs-cloudwatch", &small, cw, Some(&m.url()));
            row("CloudWatch (moto on loopback)", &i, base(&small));
        }
        None => {
            out.push_str("| CloudWatch | skipped: moto not installed (make setup) | | | | | |\n")
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// One GET on a fresh connection; returns the round trip.
fn timed_get<S: std::io::Read + Write>(mut s: S, port: u16) -> Duration {
    let t0 = Instant::now();
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: b\r\nX-aws-proxy-port: {port}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let r = read_reply(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 200);
    t0.elapsed()
}

/// Upgrade to the echo app's WebSocket echo, then push `total` bytes through and read
/// them back; returns MB/s (both directions counted once).
fn stream_mbps<S: std::io::Read + Write + Send + 'static>(
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

fn ingress_bench(o: &Opts) -> String {
    use std::os::unix::net::UnixStream;
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
    // 1,000 idle keep-alive connections: each has served one request and stays open.
    let before = rss_kib(child.id());
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
    let after = rss_kib(child.id());
    drop(idle);
    let _ = http(
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
