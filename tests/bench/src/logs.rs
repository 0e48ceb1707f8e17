//! Application logs: the app `cat`s ~100-byte lines as fast as it can; the baseline
//! is the same `cat` to /dev/null. Sinks: disabled (the agent's own ceiling) and
//! CloudWatch (moto on loopback).

use crate::agent::wait_control;
use crate::report::proc_kib;
use crate::Opts;
use microvm_protocol::paths;
use microvm_tests::{cw, http, HOOK_PREFIX};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
fn ingest(o: &Opts, name: &str, file: &Path, logging: Value, endpoint: Option<&str>) -> Ingest {
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
    wait_control(&sock, Duration::from_secs(10));
    let hook = |h: &str, body: &[u8]| http(&sock, "POST", &format!("{HOOK_PREFIX}{h}"), body);
    let run = json!({"microvmId": "mvm-bench", "region": "us-east-1", "logging": logging,
                     "credentials": {"accessKeyId": "AKIDTEST", "secretAccessKey": "x"}});
    let r = hook("run", run.to_string().as_bytes()).unwrap();
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
        let r = hook("suspend", b"").unwrap();
        let st = http(&sock, "GET", paths::STATUS, b"").unwrap().json();
        let c = &st["logs"]["counters"];
        let done = c["sentEvents"].as_u64().unwrap_or(0) + c["droppedEvents"].as_u64().unwrap_or(0);
        if r.status == 200 && done >= lines {
            break;
        }
        if r.status == 200 {
            let _ = hook("resume", b"");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "ingest never finished"
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(child.id()) - cpu0;
    let hwm_kib = proc_kib(child.id(), "VmHWM:");
    let _ = hook("terminate", b"");
    let _ = child.wait();
    Ingest {
        secs,
        lines,
        bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        cpu,
        hwm_kib,
    }
}

fn lines_file(path: &Path, mib: usize) {
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

pub fn bench(o: &Opts) -> String {
    let big = o.out.join("lines-256m.txt");
    let small = o.out.join("lines-16m.txt");
    if !big.exists() {
        lines_file(&big, 256);
    }
    if !small.exists() {
        lines_file(&small, 16);
    }
    // Baseline: the same file to /dev/null by the same program.
    let base = |f: &Path| {
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
    match cw::moto_binary() {
        Some(_) => {
            let m = cw::Moto::start();
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
