//! Application logs. The application is a shell script that waits for a go file,
//! stamps the time, `cat`s a file of lines into its stdout, closes it and stamps the
//! time again. Through the agent, stdout is the agent's pipe; the baseline runs the
//! same script with stdout a pipe of the same size read by a thread of the bench that
//! discards what it reads (64 KiB reads), so the only difference is the reader.
//!
//! Before any timing the input files are written, fsynced and read once (in the page
//! cache). A run through the agent is timed from the script's first stamp until
//! `GET /v1/status` (polled every ~5 ms) counts every line sent or dropped; the
//! baseline from the same stamp to the reader's end of file. Runs are repeated
//! (`--repeats`), the agent and the baseline taking turns going first, and the medians
//! reported. CloudWatch runs send to [`CwServer`], a local PutLogEvents endpoint that
//! parses and discards.

use crate::agent::wait_control;
use crate::cwserver::CwServer;
use crate::report::{cpu_seconds, median, proc_kib, thousands, thr_table, Thr};
use crate::Opts;
use microvm_protocol::paths;
use microvm_tests::{http, HOOK_PREFIX};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Targets.
const DISCARD_MIN_RATIO: f64 = 0.5;
const CW_MIN_LINES_PER_S: f64 = 1e6;
const CW_MIN_MB_PER_S: f64 = 200.0;
const CW_MAX_SLOWDOWN: f64 = 1.10;
const MEMORY_MAX_RATIO: f64 = 1.25;
/// The log-memory row's buffer (image config `logs.bufferBytes`).
const MEMORY_BUFFER: u64 = 16 << 20;

const MIB: u64 = 1 << 20;
/// Baseline runs are added until they add up to this long, within a bound of runs.
const BASELINE_MIN_SECS: f64 = 2.0;
const BASELINE_MAX_RUNS: usize = 25;

/// A file of log lines, written and counted once.
pub struct Input {
    path: PathBuf,
    label: &'static str,
    bytes: u64,
    lines: u64,
}

impl Input {
    fn mb(&self) -> f64 {
        self.bytes as f64 / 1e6
    }

    /// Message bytes: each line without its newline.
    fn message_bytes(&self) -> u64 {
        self.bytes - self.lines
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// About 100 bytes a line, like a typical structured log line.
fn line_100(i: u64) -> String {
    format!("{i:>12} level=info msg=\"request served\" path=/api/items status=200 took_ms=3 user=u{i}\n")
}

/// 1,024 bytes a line, newline included.
fn line_1k(i: u64) -> String {
    let mut l = format!(
        "{i:>12} level=info msg=\"request served\" path=/api/items status=200 user=u{i} data="
    );
    const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    while l.len() < 1023 {
        l.push(FILL[l.len() % FILL.len()] as char);
    }
    l.push('\n');
    l
}

/// Write `path` (through a temporary name, so an interrupted run leaves no half
/// file), fsync it, then read it once so every timed run finds it in the page cache
/// and none pays for its write-back.
fn prepare(path: PathBuf, label: &'static str, size: u64, line: fn(u64) -> String) -> Input {
    if !path.exists() {
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create input"));
        let (mut i, mut written) = (0u64, 0u64);
        while written < size {
            let l = line(i);
            written += l.len() as u64;
            f.write_all(l.as_bytes()).unwrap();
            i += 1;
        }
        f.into_inner().unwrap().sync_all().unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let mut f = std::fs::File::open(&path).expect("open input");
    f.sync_all().expect("fsync input");
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Input {
        path: std::fs::canonicalize(&path).unwrap(),
        label,
        bytes,
        lines,
    }
}

/// The application: wait for `go`, stamp, write the file, close stdout, stamp, then
/// hold (`exec sleep HOLD`: through the agent the application stays up).
fn script(dir: &Path, input: &Input, hold: u32) -> String {
    let (go, t) = (dir.join("go"), dir.join("stamps"));
    format!(
        "while [ ! -e {go} ]; do sleep 0.001; done; t0=$(date +%s%N); cat {file}; exec >/dev/null; \
         t1=$(date +%s%N); echo \"$t0 $t1\" > {t}.tmp; mv {t}.tmp {t}; exec sleep {hold}",
        go = go.display(),
        file = input.path.display(),
        t = t.display(),
    )
}

/// The script's two stamps (ns since the epoch): before and after its `cat`.
fn stamps(dir: &Path) -> (u128, u128) {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(dir.join("stamps")) {
            let v: Vec<u128> = s
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [a, b] = v[..] {
                return (a, b);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the application never finished writing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fresh_dir(o: &Opts, name: &str) -> PathBuf {
    let dir = o.out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(&dir).unwrap()
}

/// The size of the pipe on descriptor `fd` of process `pid` (opened through /proc:
/// the same pipe, another open file description, closed at once).
fn pipe_size_of(pid: u32, fd: u32) -> Option<usize> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    // SAFETY: a valid C string; the descriptor is owned and closed below.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: F_GETPIPE_SZ takes no argument.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(n).ok()
}

/// The agent as a process, its application the script above.
struct LogAgent {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl LogAgent {
    fn start(
        o: &Opts,
        name: &str,
        input: &Input,
        image_logs: Option<Value>,
        endpoint: Option<&str>,
    ) -> LogAgent {
        let dir = fresh_dir(o, name);
        let mut cfg = json!({"imageName": "bench",
                             "command": ["/bin/sh", "-c", script(&dir, input, 1000)]});
        if let Some(l) = image_logs {
            cfg["logs"] = l;
        }
        std::fs::write(dir.join("image.json"), cfg.to_string()).unwrap();
        let sock = dir.join("control.sock");
        let mut cmd = Command::new(&o.agent);
        cmd.arg("--control")
            .arg(format!("unix:{}", sock.display()))
            // Never the default vsock ingress: no vsock on the machine running this.
            .arg("--ingress")
            .arg(format!("unix:{}", dir.join("ingress.sock").display()))
            .arg("--image-config")
            .arg(dir.join("image.json"))
            .env("MICROVM_AGENT_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(e) = endpoint {
            cmd.env("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", e);
        }
        let child = cmd.spawn().expect("agent");
        wait_control(&sock, Duration::from_secs(10));
        LogAgent { child, sock, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> microvm_tests::Reply {
        http(&self.sock, method, path, body).expect("agent request")
    }

    fn status(&self) -> Value {
        self.request("GET", paths::STATUS, b"").json()
    }

    /// `/run` with `logging` (None: the default, CloudWatch), with or without the
    /// run's credentials.
    fn run(&self, logging: Option<&Value>, credentials: bool) {
        let mut run = json!({"microvmId": "mvm-bench", "region": "us-east-1"});
        if let Some(l) = logging {
            run["logging"] = l.clone();
        }
        if credentials {
            run["credentials"] = credentials_body();
        }
        let r = self.request(
            "POST",
            &format!("{HOOK_PREFIX}run"),
            run.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    /// The application's stdout pipe, as the agent made it.
    fn app_pipe_size(&self) -> Option<usize> {
        let t0 = Instant::now();
        loop {
            if let Some(pid) = self.status()["application"]["pid"].as_u64() {
                return pipe_size_of(pid as u32, 1);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn go(&self) {
        std::fs::write(self.dir.join("go"), "").unwrap();
    }

    fn stop(mut self) {
        let _ = self.request("POST", &format!("{HOOK_PREFIX}terminate"), b"");
        crate::agent::reap(&mut self.child, Duration::from_secs(30));
    }
}

fn credentials_body() -> Value {
    json!({"accessKeyId": "AKIDTEST", "secretAccessKey": "x"})
}

/// This process's CPU time (all threads), seconds.
fn own_cpu() -> f64 {
    // SAFETY: getrusage writes the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// One run through the agent.
struct AgentRun {
    /// The script's first stamp to every line counted sent or dropped, seconds.
    window: f64,
    /// The application's `cat` (stamp to stamp), seconds.
    write: f64,
    /// Agent CPU (utime + stime) over the run, seconds.
    cpu: f64,
    /// This process's CPU over the run (the endpoint's threads, the status polls).
    bench_cpu: f64,
    /// Excluding the last step of the sent count (the last partial batch, which waits
    /// for its age): events and seconds from the first stamp.
    steady: Option<(u64, f64)>,
    /// Most memory the buffer held at any status poll, and its limit.
    peak_buffered: u64,
    limit: u64,
    pipe: Option<usize>,
    /// What the endpoint received (CloudWatch runs).
    received: Option<(u64, u64)>,
}

fn agent_run(
    o: &Opts,
    input: &Input,
    logging: Option<&Value>,
    credentials: bool,
    cw: bool,
) -> AgentRun {
    let server = cw.then(CwServer::start);
    let url = server.as_ref().map(CwServer::url);
    let a = LogAgent::start(o, "logs-agent", input, None, url.as_deref());
    a.run(logging, credentials);
    let pipe = a.app_pipe_size();
    let (cpu0, own0) = (cpu_seconds(a.pid()), own_cpu());
    a.go();
    let (mut series, mut peak) = (Vec::<(u128, u64)>::new(), 0);
    let mut limit;
    let t = Instant::now();
    loop {
        let st = a.status();
        let at = now_ns();
        let logs = &st["logs"];
        let c = &logs["counters"];
        let done = c["sentEvents"].as_u64().unwrap_or(0) + c["droppedEvents"].as_u64().unwrap_or(0);
        peak = peak.max(logs["bufferedBytes"].as_u64().unwrap_or(0));
        limit = logs["bufferLimitBytes"].as_u64().unwrap_or(0);
        series.push((at, done));
        if done >= input.lines {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "logs never all sent: {logs:#}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (cpu, bench_cpu) = (cpu_seconds(a.pid()) - cpu0, own_cpu() - own0);
    let (t0, t1) = stamps(&a.dir);
    let end = series.last().map_or(t0, |s| s.0);
    let secs = |at: u128| at.saturating_sub(t0) as f64 / 1e9;
    // The count before the last step, and when it was first seen.
    let before_last = series.iter().rev().map(|s| s.1).find(|&v| v < input.lines);
    let steady = before_last.filter(|&v| v > 0).and_then(|v| {
        let at = series.iter().find(|s| s.1 == v)?.0;
        Some((v, secs(at)))
    });
    a.stop();
    AgentRun {
        window: secs(end),
        write: (t1.saturating_sub(t0)) as f64 / 1e9,
        cpu,
        bench_cpu,
        steady,
        peak_buffered: peak,
        limit,
        pipe,
        received: server.map(|s| s.received()),
    }
}

/// One baseline run: the same script, stdout a pipe of `pipe_size` bytes read by a
/// thread here that discards it. Returns (stamp to EOF, the `cat`), seconds.
fn pipe_run(o: &Opts, input: &Input, pipe_size: Option<usize>) -> (f64, f64) {
    let dir = fresh_dir(o, "logs-pipe");
    std::fs::write(dir.join("go"), "").unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, owned just below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just made and are owned once each.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if let Some(n) = pipe_size {
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, n as libc::c_int) };
        assert!(got >= n as i32, "F_SETPIPE_SZ {n}: {got}");
    }
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) => return (total, now_ns()),
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("pipe read: {e}"),
            }
        }
    });
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script(&dir, input, 0))
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("baseline script");
    // The command holds the pipe's write end: without this drop there is no EOF.
    drop(cmd);
    let (total, eof) = reader.join().expect("reader");
    assert!(child.wait().unwrap().success());
    assert_eq!(total, input.bytes, "the baseline read everything");
    let (t0, t1) = stamps(&dir);
    (
        eof.saturating_sub(t0) as f64 / 1e9,
        t1.saturating_sub(t0) as f64 / 1e9,
    )
}

/// `repeats` runs each way, taking turns going first; the agent's pipe size sets the
/// baseline's.
fn runs(
    o: &Opts,
    input: &Input,
    logging: Option<&Value>,
    credentials: bool,
    cw: bool,
) -> (Vec<AgentRun>, Vec<(f64, f64)>) {
    let (mut agent, mut base) = (Vec::new(), Vec::new());
    let mut pipe = None;
    for i in 0..o.repeats {
        for agent_turn in [i.is_multiple_of(2), !i.is_multiple_of(2)] {
            if agent_turn {
                let r = agent_run(o, input, logging, credentials, cw);
                pipe = pipe.or(r.pipe);
                agent.push(r);
            } else {
                base.push(pipe_run(o, input, pipe));
            }
        }
    }
    // A baseline run can take under 200 ms: more of them (cheap) until they add up
    // to BASELINE_MIN_SECS, so one hiccup of a busy machine cannot decide the median.
    while base.iter().map(|r: &(f64, f64)| r.0).sum::<f64>() < BASELINE_MIN_SECS
        && base.len() < BASELINE_MAX_RUNS
    {
        base.push(pipe_run(o, input, pipe));
    }
    (agent, base)
}

/// The medians of some figure of each run.
fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&v.iter().map(f).collect::<Vec<_>>())
}

fn rate(n: f64, secs: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M", n / secs / 1e6)
    } else {
        thousands((n / secs).round() as u64)
    }
}

pub fn bench(o: &Opts) -> String {
    let small = prepare(
        o.out.join("lines-100b-256m.txt"),
        "100-byte lines",
        256 * MIB,
        line_100,
    );
    let kb = prepare(
        o.out.join("lines-1k-256m.txt"),
        "1 KiB lines",
        256 * MIB,
        line_1k,
    );
    let mem = prepare(
        o.out.join("lines-100b-32m.txt"),
        "100-byte lines",
        2 * MEMORY_BUFFER,
        line_100,
    );

    // 1. The discarding sinks against the pipe.
    let disabled = json!({"disabled": {}});
    let mut rows = Vec::new();
    let mut pipes = Vec::new();
    for (what, input, logging, creds) in [
        ("disabled", &small, Some(&disabled), true),
        ("disabled", &kb, Some(&disabled), true),
        ("no credentials", &small, None, false),
    ] {
        let (a, b) = runs(o, input, logging, creds, false);
        pipes.extend(a.iter().filter_map(|r| r.pipe));
        let via = input.mb() / med(&a, |r| r.window);
        let base = input.mb() / med(&b, |r| r.0);
        let lines = input.lines as f64 / med(&a, |r| r.window);
        rows.push(Thr {
            figure: format!(
                "{what}, {} ({:.0} MB, {} lines)",
                input.label,
                input.mb(),
                thousands(input.lines)
            ),
            agent: format!(
                "{via:.0} MB/s, {} lines/s; {:.2} CPU s/GB",
                rate(lines, 1.0),
                med(&a, |r| r.cpu) / (input.bytes as f64 / 1e9)
            ),
            baseline: format!("{base:.0} MB/s"),
            ratio: format!("{:.2}x", via / base),
            target: format!(">= {DISCARD_MIN_RATIO}x"),
            met: Some(via / base >= DISCARD_MIN_RATIO),
        });
    }
    pipes.sort_unstable();
    pipes.dedup();
    let pipes: Vec<String> = pipes.iter().map(|p| thousands(*p as u64)).collect();
    let mut out = format!(
        "\n## Application logs\n\nThe app (a shell script) `cat`s a file into its stdout once told to go, \
         stamping the time before and after. Baseline: the same script into a pipe of the \
         same size ({} bytes, the agent's) read by a discarding reader in the bench, 64 KiB \
         reads. Agent runs are timed from the first stamp until `GET /v1/status` (polled every \
         ~5 ms) counts every line sent or dropped; baselines from the same stamp to the \
         reader's EOF. Medians of {} runs each way, taking turns going first (and more baseline \
         runs, until they add up to {BASELINE_MIN_SECS} s); input files fsynced and in the page \
         cache before any timing.\n\n### Discarding sink\n\n",
        pipes.join(" / "),
        o.repeats
    );
    out.push_str(&thr_table(&rows));

    // 2. The CloudWatch path, against the local PutLogEvents endpoint.
    let cw = json!({"cloudWatch": {"logGroup": "/bench"}});
    let mut rows = Vec::new();
    for input in [&small, &kb] {
        let (a, b) = runs(o, input, Some(&cw), true, true);
        let window = med(&a, |r| r.window);
        let base_window = med(&b, |r| r.0);
        let cores = med(&a, |r| r.cpu / r.window);
        let one_core = cores <= 1.0;
        let (lines_s, mb_s) = (input.lines as f64 / window, input.mb() / window);
        let (base_lines_s, base_mb_s) =
            (input.lines as f64 / base_window, input.mb() / base_window);
        let label = format!("{} ({:.0} MB)", input.label, input.mb());
        let (target, met) = if input.label.starts_with("100") {
            (
                "lines/s >= 1 M on <= 1 core".to_string(),
                lines_s >= CW_MIN_LINES_PER_S && one_core,
            )
        } else {
            (
                format!("MB/s >= {CW_MIN_MB_PER_S:.0} on <= 1 core"),
                mb_s >= CW_MIN_MB_PER_S && one_core,
            )
        };
        rows.push(Thr {
            figure: format!("{label}: throughput (wall)"),
            agent: format!("{} lines/s, {mb_s:.0} MB/s", rate(lines_s, 1.0)),
            baseline: format!("{} lines/s, {base_mb_s:.0} MB/s", rate(base_lines_s, 1.0)),
            ratio: format!("{:.2}x", lines_s / base_lines_s),
            target,
            met: Some(met),
        });
        let steady: Vec<f64> = a
            .iter()
            .filter_map(|r| r.steady.map(|(n, s)| n as f64 / s))
            .collect();
        if !steady.is_empty() {
            let lines_s = median(&steady);
            let mean_line = input.bytes as f64 / input.lines as f64;
            rows.push(Thr::info(
                format!(
                    "{label}: throughput without the last batch (it waits up to 1 s for its age)"
                ),
                format!(
                    "{} lines/s, {:.0} MB/s",
                    rate(lines_s, 1.0),
                    lines_s * mean_line / 1e6
                ),
            ));
        }
        let (w, bw) = (med(&a, |r| r.write), med(&b, |r| r.1));
        let peak = a.iter().map(|r| r.peak_buffered).max().unwrap_or(0);
        let limit = a.iter().map(|r| r.limit).max().unwrap_or(0);
        rows.push(Thr {
            figure: format!(
                "{label}: the app's write time (buffer peak {:.1} of {:.0} MiB{})",
                peak as f64 / MIB as f64,
                limit as f64 / MIB as f64,
                if peak * 10 >= limit * 9 {
                    ": it filled, the sink fell behind and the app waited"
                } else {
                    ""
                }
            ),
            agent: format!("{:.0} ms", w * 1e3),
            baseline: format!("{:.0} ms", bw * 1e3),
            ratio: format!("{:.2}x", w / bw),
            target: format!("<= {CW_MAX_SLOWDOWN:.2}x"),
            met: Some(w / bw <= CW_MAX_SLOWDOWN),
        });
        rows.push(Thr {
            figure: format!("{label}: agent CPU / wall"),
            agent: format!("{cores:.2} cores"),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "<= 1.0 (one core)".into(),
            met: Some(one_core),
        });
        let cpu = med(&a, |r| r.cpu);
        rows.push(Thr::info(
            format!(
                "{label}: agent CPU s/GB; lines per agent CPU second (the endpoint and the \
                 bench's polls took {:.2} cores of {} meanwhile)",
                med(&a, |r| r.bench_cpu / r.window),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            format!(
                "{:.2} s/GB; {} lines/s",
                cpu / (input.bytes as f64 / 1e9),
                rate(input.lines as f64, cpu)
            ),
        ));
        let want = (input.lines, input.message_bytes());
        let got: Vec<(u64, u64)> = a.iter().filter_map(|r| r.received).collect();
        let all_equal = !got.is_empty() && got.iter().all(|g| *g == want);
        let shown = got.iter().find(|g| **g != want).or(got.first()).copied();
        rows.push(Thr {
            figure: format!("{label}: received by the endpoint (events, message bytes), every run"),
            agent: shown.map_or("-".into(), |(e, b)| {
                format!("{} events, {} bytes", thousands(e), thousands(b))
            }),
            baseline: format!(
                "written {} lines, {} bytes",
                thousands(want.0),
                thousands(want.1)
            ),
            ratio: "-".into(),
            target: "equal".into(),
            met: Some(all_equal),
        });
    }
    out.push_str(
        "\n### CloudWatch path\n\nTo a local PutLogEvents endpoint in the bench (parses every \
         body with serde_json, counts events and message bytes, answers `{}`), over HTTP on \
         loopback; credentials and region from /run. Throughput judged per wall second with \
         the agent's CPU at most one core.\n\n",
    );
    out.push_str(&thr_table(&rows));

    // 3. Memory with the buffer full.
    out.push_str(&format!(
        "\n### Log memory\n\nbufferBytes {} MiB, `whenFull: block`; the endpoint throttles every \
         PutLogEvents (400 ThrottlingException, retried with backoff); the app writes {:.0} MB \
         of {}. Idle RSS: the same agent after /run, before the app writes.\n\n",
        MEMORY_BUFFER / MIB,
        mem.mb(),
        mem.label
    ));
    out.push_str(&thr_table(&[memory(o, &mem)]));
    out
}

/// RSS with the buffer full, against the same agent's idle RSS.
fn memory(o: &Opts, input: &Input) -> Thr {
    let cw = CwServer::start();
    cw.set_stall(true);
    let a = LogAgent::start(
        o,
        "logs-memory",
        input,
        Some(json!({"bufferBytes": MEMORY_BUFFER, "whenFull": "block"})),
        Some(&cw.url()),
    );
    a.run(Some(&json!({"cloudWatch": {"logGroup": "/bench"}})), true);
    std::thread::sleep(Duration::from_secs(1));
    let idle = proc_kib(a.pid(), "VmRSS:");
    a.go();
    let t0 = Instant::now();
    let (mut last, mut since) = (0u64, Instant::now());
    let mut buffered;
    let filled = loop {
        std::thread::sleep(Duration::from_millis(50));
        let logs = a.status()["logs"].clone();
        buffered = logs["bufferedBytes"].as_u64().unwrap_or(0);
        let captured = logs["counters"]["capturedEvents"].as_u64().unwrap_or(0);
        if captured != last {
            (last, since) = (captured, Instant::now());
        } else if captured > 0
            && since.elapsed() >= Duration::from_secs(1)
            && buffered >= MEMORY_BUFFER / 2
        {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    let (rss, hwm) = (proc_kib(a.pid(), "VmRSS:"), proc_kib(a.pid(), "VmHWM:"));
    let app_blocked = !a.dir.join("stamps").exists();
    // Let it drain so /terminate's flush is quick: accept again, and new credentials
    // cut the sender's retry pause short.
    cw.set_stall(false);
    let _ = a.request(
        "POST",
        paths::CREDENTIALS,
        credentials_body().to_string().as_bytes(),
    );
    a.stop();
    let ratio = rss.saturating_sub(idle) as f64 * 1024.0 / MEMORY_BUFFER as f64;
    let (_, throttled, _) = cw.calls();
    Thr {
        figure: format!(
            "RSS with the buffer full ({}; bufferedBytes {} of {}; app {}; {} throttled puts)",
            if filled {
                "count stopped growing"
            } else {
                "never settled within 60 s"
            },
            thousands(buffered),
            thousands(MEMORY_BUFFER),
            if app_blocked {
                "blocked in write"
            } else {
                "finished"
            },
            throttled
        ),
        agent: format!("{} KiB (peak {} KiB)", thousands(rss), thousands(hwm)),
        baseline: format!("idle {} KiB", thousands(idle)),
        ratio: format!("(RSS - idle) / bufferBytes = {ratio:.2}"),
        target: format!("<= {MEMORY_MAX_RATIO}"),
        met: Some(filled && ratio <= MEMORY_MAX_RATIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_sizes_the_rows_say() {
        assert_eq!(line_1k(0).len(), 1024);
        assert_eq!(line_1k(123_456_789).len(), 1024);
        let l = line_100(1_000_000);
        assert!((90..=110).contains(&l.len()), "{}", l.len());
        assert!(l.ends_with('\n') && !l[..l.len() - 1].contains('\n'));
    }

    #[test]
    fn the_script_stamps_around_its_write_and_holds() {
        let i = Input {
            path: "/f".into(),
            label: "x",
            bytes: 0,
            lines: 0,
        };
        let s = script(Path::new("/d"), &i, 7);
        assert!(s.starts_with("while [ ! -e /d/go ]"));
        assert!(s.contains("t0=$(date +%s%N); cat /f; exec >/dev/null; t1=$(date +%s%N)"));
        assert!(s.ends_with("exec sleep 7"));
    }

    #[test]
    fn a_pipe_size_is_read_through_proc() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors, owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both were just made.
        let (_r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on our pipe.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 128 * 1024) };
        let size = pipe_size_of(std::process::id(), w.as_raw_fd() as u32);
        assert_eq!(size, Some(128 * 1024));
    }
}
