//! microvm-local: `aws lambda-microvms run-microvm`, played locally.
//!
//! Boots an image (`make rootfs`) under QEMU with a vhost-device-vsock backend,
//! drives the agent over the hybrid vsock socket, streams the guest console to
//! stderr, and guarantees no QEMU or backend outlives it (hard timeout, signals,
//! parent-death signal on the children).
//!
//! ```text
//! microvm-local run-microvm --image-identifier build/example [--run-hook-payload S]
//!     [--logging V] [--idle-policy V] [--maximum-duration-in-seconds N]
//!     [--execution-role-arn ARN] [--client-token T] [--cli-input-json JSON|file://P]
//!     [--generate-cli-skeleton [input|output]]
//!     [--then ACTION,...] [--interactive] [--timeout SECONDS]
//! ```
//! ACTION: `suspend` (agent /suspend, then QMP stop), `resume` (QMP cont, then /resume
//! with the host's clock and fresh entropy), `terminate`, `status`, `sleep=N`.
//! Without --then or --interactive it runs until the guest powers off, the timeout,
//! or Ctrl-C (which terminates the MicroVM cleanly).

use microvm_tests::vm::{Image, Vm, VmOpts};
use microvm_tests::{entropy_b64, now_nanos, runcli};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

const USAGE: &str = "usage: microvm-local run-microvm --image-identifier PATH [options]\n       microvm-local run-microvm --generate-cli-skeleton [input|output]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run-microvm") => std::process::exit(run(&args[1..])),
        Some("-h" | "--help" | "help") => println!("{USAGE}"),
        other => {
            eprintln!("{USAGE}\naws: error: argument operation: Invalid choice: {other:?}");
            std::process::exit(252);
        }
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 3339 UTC, without a date crate (civil-from-days).
fn rfc3339(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Copy new console lines to stderr until told to stop.
fn stream_console(path: std::path::PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut partial = String::new();
        loop {
            let last_round = done.load(Ordering::SeqCst);
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(std::io::SeekFrom::Start(pos)).is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut buf) {
                        pos += n as u64;
                        partial.push_str(&String::from_utf8_lossy(&buf));
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            eprint!("guest| {}", line.replace('\r', ""));
                        }
                    }
                }
            }
            if last_round {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// The platform's side of one MicroVM: every pause, resume and termination goes
/// through here, under one lock, whoever asks (an action, an idle event, a client).
struct Host {
    vm: Vm,
    state: Mutex<HostState>,
    /// Held while the event poller has a request in flight: the VM is never paused
    /// under an open vsock request (see vm::PAUSE_SETTLE).
    poll_gate: Mutex<()>,
    policy: Option<Value>,
}

#[derive(Default)]
struct HostState {
    suspended: bool,
    /// Counts suspensions, so a stale suspended-duration timer does nothing.
    epoch: u64,
    terminated: bool,
}

fn answer(r: std::io::Result<microvm_tests::Reply>) -> Result<Value, String> {
    let r = r.map_err(|e| format!("agent unreachable: {e}"))?;
    Ok(json!({"status": r.status, "answer": r.json()}))
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn suspend(self: &Arc<Self>) -> Result<Value, String> {
        let _gate = self.poll_gate.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        if st.suspended || st.terminated {
            return Ok(json!({"status": 200, "answer": {"state": "SUSPENDED"}}));
        }
        let v = answer(self.vm.hook("suspend", ""))?;
        if v["status"] == 200 {
            self.vm.pause()?;
            st.suspended = true;
            st.epoch += 1;
            let suspended_for = self
                .policy
                .as_ref()
                .and_then(|p| p["suspendedDurationSeconds"].as_u64());
            if let Some(secs) = suspended_for {
                let (host, epoch) = (self.clone(), st.epoch);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(secs));
                    let st = host.lock();
                    if st.suspended && st.epoch == epoch && !st.terminated {
                        drop(st);
                        let r = host.terminate();
                        report("terminate (suspendedDurationSeconds)", r);
                    }
                });
            }
        }
        Ok(v)
    }

    fn resume_locked(&self, st: &mut HostState) -> Result<Value, String> {
        if !st.suspended {
            return Ok(json!({"status": 200, "answer": {"state": "RUNNING"}}));
        }
        self.vm.unpause()?;
        st.suspended = false;
        let body = json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
        answer(self.vm.hook("resume", &body.to_string()))
    }

    fn resume(&self) -> Result<Value, String> {
        let mut st = self.lock();
        self.resume_locked(&mut st)
    }

    fn terminate(&self) -> Result<Value, String> {
        let mut st = self.lock();
        if st.terminated {
            return Ok(json!({"status": 200, "answer": {"state": "TERMINATED"}}));
        }
        if st.suspended {
            self.vm.unpause()?;
            st.suspended = false;
        }
        st.terminated = true;
        answer(self.vm.hook("terminate", ""))
    }

    fn act(self: &Arc<Self>, action: &str) -> Result<Value, String> {
        match action {
            "status" => answer(self.vm.request("GET", "/v1/status", b"")),
            "suspend" => self.suspend(),
            "resume" => self.resume(),
            "terminate" => self.terminate(),
            a if a.starts_with("sleep=") => {
                let s: u64 = a[6..].parse().map_err(|_| format!("bad action {a}"))?;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(s) && !STOP.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(json!({"slept": s}))
            }
            a => Err(format!(
                "unknown action {a:?}: use suspend, resume, terminate, status, sleep=N"
            )),
        }
    }

    /// Follow the agent's events; with an idle policy, suspend on `idle`.
    fn poll_events(self: Arc<Self>) {
        let mut after = 0u64;
        while !STOP.load(Ordering::SeqCst) {
            if self.lock().terminated {
                return;
            }
            let got = {
                let _gate = self.poll_gate.lock().unwrap_or_else(|p| p.into_inner());
                if self.lock().suspended {
                    None
                } else {
                    let path = format!("/v1/events?after={after}&waitSeconds=2");
                    self.vm.request("GET", &path, b"").ok().map(|r| r.json())
                }
            };
            let Some(v) = got else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            for e in v["events"].as_array().cloned().unwrap_or_default() {
                after = after.max(e["seq"].as_u64().unwrap_or(after));
                println!("{}", json!({"event": e}));
                if e["type"] == "idle" && self.policy.is_some() {
                    report("suspend (idle)", self.suspend());
                }
            }
        }
    }

    /// The MicroVM's endpoint: each client connection goes to the agent's ingress
    /// over vsock; a suspended VM is resumed first (autoResumeEnabled), and the client
    /// waits until /resume has answered.
    fn serve_endpoint(self: Arc<Self>, listener: std::net::TcpListener) {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let host = self.clone();
            std::thread::spawn(move || {
                {
                    let mut st = host.lock();
                    if st.terminated {
                        return;
                    }
                    if st.suspended {
                        let auto = host
                            .policy
                            .as_ref()
                            .is_some_and(|p| p["autoResumeEnabled"] == true);
                        if !auto {
                            return;
                        }
                        report("resume (ingress)", host.resume_locked(&mut st));
                    }
                }
                let Ok(up) = host.vm.connect(microvm_tests::vm::INGRESS_PORT) else {
                    return;
                };
                pipe(client, up);
            });
        }
    }
}

/// Copy both ways until either side closes.
fn pipe(client: std::net::TcpStream, up: std::os::unix::net::UnixStream) {
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let _ = up.set_read_timeout(None);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, up);
    let _ = std::io::copy(&mut u, &mut c);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

fn run(args: &[String]) -> i32 {
    let a = match runcli::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return e.exit_code();
        }
    };
    if let Some(kind) = &a.skeleton {
        print_json(&runcli::skeleton(kind));
        return 0;
    }
    for w in &a.warnings {
        eprintln!("{w}");
    }
    install_signal_handlers();
    let req = &a.request;
    let image_path = req["imageIdentifier"].as_str().unwrap_or_default();
    let image = match Image::open(std::path::Path::new(image_path)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("An error occurred (ResourceNotFoundException) when calling the RunMicrovm operation: {e}");
            return 254;
        }
    };
    let h = random_hex(16);
    let microvm_id = format!(
        "mvm-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    let dir = std::env::temp_dir().join("microvm-local").join(&microvm_id);
    // Hard timeout: whatever happens, the run ends.
    let timeout = Duration::from_secs(a.timeout_s);
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("microvm-local: --timeout of {}s reached", timeout.as_secs());
        STOP.store(true, Ordering::SeqCst);
    });
    let mut opts = VmOpts::default();
    if let Some(n) = a.test_min_idle_seconds {
        opts.cmdline = format!("microvm.test_min_idle_seconds={n}");
    }
    let vm = match Vm::boot(&image, &opts, &dir) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("microvm-local: boot failed: {e}");
            return 255;
        }
    };
    let host = Arc::new(Host {
        vm,
        state: Mutex::new(HostState::default()),
        poll_gate: Mutex::new(()),
        policy: req.get("idlePolicy").cloned(),
    });
    let console_done = Arc::new(AtomicBool::new(false));
    let console = stream_console(dir.join("serial.log"), console_done.clone());
    let code = drive(&host, &a, &microvm_id, image_path);
    console_done.store(true, Ordering::SeqCst);
    let _ = console.join();
    code
}

fn drive(host: &Arc<Host>, a: &runcli::RunArgs, microvm_id: &str, image_path: &str) -> i32 {
    let req = &a.request;
    let vm = &host.vm;
    let endpoint = match std::net::TcpListener::bind(("127.0.0.1", a.endpoint_port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("microvm-local: endpoint port {}: {e}", a.endpoint_port);
            return finish(host, 255);
        }
    };
    let endpoint_port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
    // The image-build phase a platform runs before snapshotting: ready, then validate.
    for hook in ["ready", "validate"] {
        let t0 = Instant::now();
        loop {
            match vm.hook(hook, "") {
                Ok(r) if r.status == 200 => break,
                Ok(r) if r.status == 503 && t0.elapsed() < Duration::from_secs(60) => {}
                Ok(r) => {
                    eprintln!("microvm-local: /{hook} answered {}: {}", r.status, r.json());
                    return finish(host, 255);
                }
                Err(e) => {
                    eprintln!("microvm-local: /{hook}: {e}");
                    return finish(host, 255);
                }
            }
            if STOP.load(Ordering::SeqCst) {
                return finish(host, 130);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut body = json!({
        "microvmId": microvm_id,
        "runHookPayload": req.get("runHookPayload").cloned().unwrap_or(json!("")),
        "region": std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        "clock": {"unixTimeNanos": now_nanos()},
        "entropy": entropy_b64(),
    });
    for k in ["logging", "idlePolicy", "maximumDurationInSeconds"] {
        if let Some(v) = req.get(k) {
            body[k] = v.clone();
        }
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = match vm.hook("run", &body.to_string()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("microvm-local: /run: {e}");
            return finish(host, 255);
        }
    };
    let mut out = json!({
        "microvmId": microvm_id,
        "imageArn": image_path,
        "state": r.json()["state"].clone(),
        "endpoint": format!("http://127.0.0.1:{endpoint_port}"),
        "startedAt": rfc3339(started),
    });
    for k in [
        "executionRoleArn",
        "idlePolicy",
        "maximumDurationInSeconds",
        "clientToken",
    ] {
        if let Some(v) = req.get(k) {
            out[k] = v.clone();
        }
    }
    if r.status != 200 {
        out["state"] = json!("FAILED");
        out["stateReason"] = json!(format!("Hook.Run.{}", r.status));
        print_json(&out);
        return finish(host, 255);
    }
    print_json(&out);
    let _ = std::io::stdout().flush();
    {
        let h = host.clone();
        std::thread::spawn(move || h.serve_endpoint(endpoint));
        let h = host.clone();
        std::thread::spawn(move || h.poll_events());
    }

    if a.interactive {
        eprintln!("microvm-local: commands: suspend, resume, terminate, status, sleep=N, quit");
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let cmd = line.trim();
            if cmd == "quit" || STOP.load(Ordering::SeqCst) {
                break;
            }
            if cmd.is_empty() {
                continue;
            }
            report(cmd, host.act(cmd));
            if cmd == "terminate" {
                break;
            }
        }
    } else if !a.then.is_empty() {
        for action in &a.then {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            report(action, host.act(action));
        }
    } else {
        // wait_exit sleeps between polls: this loop is not a spin.
        while !STOP.load(Ordering::SeqCst) {
            if vm.wait_exit(Duration::from_millis(200)) {
                break;
            }
        }
    }
    finish(host, 0)
}

fn report(action: &str, r: Result<Value, String>) {
    match r {
        Ok(mut v) => {
            v["action"] = json!(action);
            println!("{v}");
        }
        Err(e) => eprintln!("microvm-local: {action}: {e}"),
    }
}

/// Terminate cleanly if the guest still runs, then make sure nothing outlives us.
fn finish(host: &Arc<Host>, code: i32) -> i32 {
    if !host.vm.wait_exit(Duration::from_millis(10)) {
        if !host.lock().terminated {
            report("terminate", host.terminate());
        }
        if !host.vm.wait_exit(Duration::from_secs(20)) {
            eprintln!("microvm-local: guest did not power off; killing QEMU");
        }
    }
    code
}
