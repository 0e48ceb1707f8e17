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

use microvm_tests::runcli;
use microvm_tests::vm::{Image, Vm, VmOpts};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

fn entropy_b64() -> String {
    let mut b = [0u8; 48];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    b.chunks(3)
        .flat_map(|c| {
            let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
            (0..4).map(move |i| A[(n >> (18 - 6 * i) & 63) as usize] as char)
        })
        .collect()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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

fn act(vm: &Vm, action: &str) -> Result<Value, String> {
    let answer = |r: std::io::Result<microvm_tests::Reply>| -> Result<Value, String> {
        let r = r.map_err(|e| format!("agent unreachable: {e}"))?;
        Ok(json!({"status": r.status, "answer": r.json()}))
    };
    match action {
        "status" => answer(vm.request("GET", "/v1/status", b"")),
        "suspend" => {
            let v = answer(vm.hook("suspend", ""))?;
            if v["status"] == 200 {
                vm.pause()?;
            }
            Ok(v)
        }
        "resume" => {
            vm.unpause()?;
            let body = json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
            answer(vm.hook("resume", &body.to_string()))
        }
        "terminate" => answer(vm.hook("terminate", "")),
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
    let mut vm = match Vm::boot(&image, &VmOpts::default(), &dir) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("microvm-local: boot failed: {e}");
            return 255;
        }
    };
    let console_done = Arc::new(AtomicBool::new(false));
    let console = stream_console(dir.join("serial.log"), console_done.clone());
    let code = drive(&mut vm, &a, &microvm_id, image_path);
    console_done.store(true, Ordering::SeqCst);
    let _ = console.join();
    code
}

fn drive(vm: &mut Vm, a: &runcli::RunArgs, microvm_id: &str, image_path: &str) -> i32 {
    let req = &a.request;
    // The image-build phase a platform runs before snapshotting: ready, then validate.
    for hook in ["ready", "validate"] {
        let t0 = Instant::now();
        loop {
            match vm.hook(hook, "") {
                Ok(r) if r.status == 200 => break,
                Ok(r) if r.status == 503 && t0.elapsed() < Duration::from_secs(60) => {}
                Ok(r) => {
                    eprintln!("microvm-local: /{hook} answered {}: {}", r.status, r.json());
                    return finish(vm, 255);
                }
                Err(e) => {
                    eprintln!("microvm-local: /{hook}: {e}");
                    return finish(vm, 255);
                }
            }
            if STOP.load(Ordering::SeqCst) {
                return finish(vm, 130);
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
            return finish(vm, 255);
        }
    };
    let mut out = json!({
        "microvmId": microvm_id,
        "imageArn": image_path,
        "state": r.json()["state"].clone(),
        "endpoint": format!("unix:{}", vm.dir.join("vm.vsock").display()),
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
        return finish(vm, 255);
    }
    print_json(&out);
    let _ = std::io::stdout().flush();

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
            report(cmd, act(vm, cmd));
            if cmd == "terminate" {
                break;
            }
        }
    } else if !a.then.is_empty() {
        for action in &a.then {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            report(action, act(vm, action));
        }
    } else {
        // wait_exit sleeps between polls: this loop is not a spin.
        while !STOP.load(Ordering::SeqCst) {
            if vm.wait_exit(Duration::from_millis(200)) {
                break;
            }
        }
    }
    finish(vm, 0)
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
fn finish(vm: &mut Vm, code: i32) -> i32 {
    if !vm.wait_exit(Duration::from_millis(10)) {
        let _ = vm.unpause();
        if let Ok(r) = vm.hook("terminate", "") {
            report(
                "terminate",
                Ok(json!({"status": r.status, "answer": r.json()})),
            );
        }
        if !vm.wait_exit(Duration::from_secs(20)) {
            eprintln!("microvm-local: guest did not power off; killing QEMU");
        }
    }
    code
}
