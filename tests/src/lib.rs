//! Host-side harness that plays the platform.
//!
//! [`Guest`] runs the real agent binary as PID 1 of fresh PID, mount, UTS and network
//! namespaces (`unshare`, as root), with its control channel on a Unix socket, and
//! talks HTTP/1.1 to it like the host does over vsock. Sockets and files live under
//! `target/nstest/`, never in /tmp or /run, which the agent mounts fresh.
//!
//! A real guest (QEMU) and the HTTP client come from the runner's library,
//! `microvm_local` (`vm`, `http`); the wire contract's constants from
//! `microvm_protocol`.

pub mod cw;

pub use microvm_local::host::{entropy_b64, now_nanos};
pub use microvm_local::http::Reply;
pub use microvm_protocol::HOOK_PATH_PREFIX as HOOK_PREFIX;

use microvm_protocol::ports;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Where namespace tests keep files: never under /tmp or /run, which the agent mounts
/// fresh inside the namespace (a checkout under /tmp would vanish from its view).
pub fn outside_tmp() -> PathBuf {
    let t = target_dir();
    let canonical = std::fs::canonicalize(&t).unwrap_or_else(|_| t.clone());
    if canonical.starts_with("/tmp") || canonical.starts_with("/run") {
        PathBuf::from("/var/tmp/microvm-tests")
    } else {
        t
    }
}

pub struct Bins {
    pub agent: PathBuf,
    pub recorder: PathBuf,
    pub http_app: PathBuf,
    pub echo: PathBuf,
}

/// Build the agent and the example application once per test process (debug).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        cargo_build(&[
            "-p",
            "microvm-agent",
            "-p",
            "hook-sdk",
            // Faults on demand (MICROVM_TEST_FAULT_*): only in the suites' build.
            "--features",
            "microvm-agent/test-faults",
            "--bin",
            "microvm-agent",
            "--example",
            "recorder",
            "--example",
            "http_app",
            "--example",
            "echo",
        ]);
        let built = target_dir().join("debug");
        // The app is started after the agent mounted /tmp: keep binaries outside it.
        let d = outside_tmp().join("debug");
        // Never copy a file onto itself: fs::copy would truncate it.
        let same = std::fs::canonicalize(&d).ok() == std::fs::canonicalize(&built).ok();
        if !same {
            std::fs::create_dir_all(d.join("examples")).expect("binary dir");
            for b in [
                "microvm-agent",
                "examples/recorder",
                "examples/http_app",
                "examples/echo",
            ] {
                std::fs::copy(built.join(b), d.join(b)).expect("copy binary out of /tmp");
            }
        }
        Bins {
            agent: d.join("microvm-agent"),
            recorder: d.join("examples/recorder"),
            http_app: d.join("examples/http_app"),
            echo: d.join("examples/echo"),
        }
    })
}

/// An image `make test` builds (`make rootfs`, `make sdk-image`, `make python-image`,
/// ..., the first two also with `ARCH=aarch64`), checked to record `arch`; None, after
/// [`skip`] says why, when it or the tools to boot it are missing.
pub fn built_image(rel: &str, arch: microvm_local::vm::Arch) -> Option<microvm_local::vm::Image> {
    if let Err(e) = microvm_local::vm::tools_available_for(arch) {
        skip(&e);
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    match microvm_local::vm::Image::open(&dir) {
        Ok(i) => {
            assert_eq!(i.arch, arch, "{} records its architecture", dir.display());
            Some(i)
        }
        Err(e) => {
            skip(&format!("{e} (make test builds it)"));
            None
        }
    }
}

/// The runner binary (`microvm-local`, debug), built once per test process: it
/// lives in its own crate, so Cargo does not hand its path to these suites.
pub fn runner() -> &'static Path {
    static RUNNER: OnceLock<PathBuf> = OnceLock::new();
    RUNNER.get_or_init(|| {
        cargo_build(&["-p", "microvm-local", "--bin", "microvm-local"]);
        target_dir().join("debug").join("microvm-local")
    })
}

/// `cargo build -q ARGS` in the workspace (debug), or the test fails saying so.
fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(cargo)
        .current_dir(&ws)
        .args(["build", "-q"])
        .args(args)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

/// Wait (up to 60 s) for the file `name` in `dir`, which a test application touches.
pub fn wait_marker(dir: &Path, name: &str) {
    let t0 = Instant::now();
    while !dir.join(name).exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{name} never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pipe (read end, write end), both close-on-exec in this process.
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which is ours and large
    // enough; on success each is owned by exactly one OwnedFd below.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Raise this process's soft descriptor limit to the hard one (tests open many).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (return early from) a test that needs root for namespaces, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip("needs root to create PID/mount/UTS/net namespaces with unshare");
            return;
        }
    };
}

/// A suite that cannot run here says why and passes, except in CI (`CI=true`),
/// where a skipped suite would hide that nothing was tested: there it fails.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("cannot run under CI=true: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A fresh directory for one guest, under target/nstest.
pub fn scratch(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = outside_tmp()
        .join("nstest")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// An image config running the recorder with `env`, hooks per `hooks` (AWS Hooks object).
pub fn recorder_config(dir: &Path, hooks: Value, env: &[(&str, &str)]) -> Value {
    let mut e = serde_json::Map::new();
    e.insert(
        "RECORDER_LOG".into(),
        dir.join("recorder.log").display().to_string().into(),
    );
    e.insert(
        "RECORDER_CONTROL".into(),
        dir.join("recorder.control").display().to_string().into(),
    );
    for (k, v) in env {
        e.insert(k.to_string(), v.to_string().into());
    }
    serde_json::json!({
        "imageName": "test-image",
        "command": [bins().recorder.display().to_string()],
        "env": e,
        "hooks": hooks,
        "logs": {"mirrorToConsole": true},
    })
}

/// Every runtime and image-build hook ENABLED, with the given runtime timeout.
pub fn all_hooks(timeout_s: u64) -> Value {
    serde_json::json!({
        "port": ports::DEFAULT_HOOKS,
        "microvmImageHooks": {"ready": "ENABLED", "readyTimeoutInSeconds": timeout_s,
                              "validate": "ENABLED", "validateTimeoutInSeconds": timeout_s},
        "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": timeout_s,
                         "resume": "ENABLED", "resumeTimeoutInSeconds": timeout_s,
                         "suspend": "ENABLED", "suspendTimeoutInSeconds": timeout_s,
                         "terminate": "ENABLED", "terminateTimeoutInSeconds": timeout_s}
    })
}

/// Read one HTTP/1.1 response (Content-Length framed, as the agent always answers)
/// off a raw stream, leaving whatever follows it unread. For suites that write
/// requests by hand to probe the wire (pipelining, upgrades, stalled clients,
/// malformed requests); a plain request goes through [`http`].
pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A client that sends the headers, pauses, then the body in pieces (as Python's
/// `http.client` and anything writing from a file do), then reads the answer. A
/// server that answers an error and closes without reading the body makes the second
/// piece fail with a broken pipe, and the client never sees the status.
pub fn late_body(
    mut s: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> std::io::Result<Reply> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {body_len}\r\n\r\n"));
    s.write_all(head.as_bytes())?;
    std::thread::sleep(Duration::from_millis(200));
    for piece in vec![b'x'; body_len].chunks(16 * 1024) {
        s.write_all(piece)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    read_reply(&mut BufReader::new(s))
}

/// One request on a fresh connection to a Unix socket (the runner library's client).
pub fn http(sock: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
    let s = UnixStream::connect(sock)?;
    // A wedged agent fails the test instead of hanging it (no request of the suites
    // legitimately takes this long).
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    microvm_local::http::send(s, method, path, &[], body)
}

/// captured = sent + dropped + buffered, in events and in bytes, in one status answer
/// (read under one lock). Nothing to check where the status has no logs.
pub fn log_balance(logs: &Value) {
    let c = &logs["counters"];
    let n = |v: &Value| v.as_u64();
    let (Some(events), Some(bytes)) = (n(&c["capturedEvents"]), n(&c["capturedBytes"])) else {
        return;
    };
    let sum = |a: &str, b: &str, d: &str| {
        n(&c[a]).unwrap_or(0) + n(&c[b]).unwrap_or(0) + n(&logs[d]).unwrap_or(0)
    };
    assert_eq!(
        events,
        sum("sentEvents", "droppedEvents", "bufferedEvents"),
        "events: {logs:#}"
    );
    assert_eq!(
        bytes,
        sum("sentBytes", "droppedBytes", "bufferedMessageBytes"),
        "bytes: {logs:#}"
    );
}

/// How to start a guest beyond its image config.
#[derive(Debug, Clone, Default)]
pub struct GuestOpts {
    /// Share the host's network namespace (to reach a server on loopback).
    pub share_net: bool,
    /// Environment for the agent (AWS_ENDPOINT_URL_CLOUDWATCH_LOGS, ...).
    pub env: Vec<(String, String)>,
    /// Serve ingress on `<dir>/ingress.sock` instead of vsock.
    pub ingress: bool,
    /// Run the agent under this descriptor limit (soft and hard, with prlimit).
    pub nofile: Option<u64>,
    /// The agent's stdout and stderr are a pipe the test never reads (a console that
    /// has stopped draining); `console()` is then empty.
    pub stuck_console: bool,
    /// Environment for the agent that only a `test-faults` build acts on.
    pub faults: Vec<(String, String)>,
    /// Arguments before the harness's own (`--control`, `--image-config`).
    pub args: Vec<String>,
}

/// The agent running as PID 1 in its own namespaces.
pub struct Guest {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Child,
    /// The read end of a stuck console, held open and never read.
    _stuck_console: Option<std::os::fd::OwnedFd>,
}

impl Guest {
    /// Boot with `config` (written to image.json) and wait for the control channel.
    pub fn start(name: &str, config: &Value) -> Guest {
        let dir = scratch(name);
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: PathBuf, config: &Value) -> Guest {
        Self::start_with(dir, config, &GuestOpts::default())
    }

    pub fn start_with(dir: PathBuf, config: &Value, opts: &GuestOpts) -> Guest {
        let cfg = dir.join("image.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let sock = dir.join("control.sock");
        let (console_out, console_err, stuck): (Stdio, Stdio, _) = if opts.stuck_console {
            let (read, write) = pipe();
            let write2 = write.try_clone().unwrap();
            (write.into(), write2.into(), Some(read))
        } else {
            let console = std::fs::File::create(dir.join("console.log")).unwrap();
            (console.try_clone().unwrap().into(), console.into(), None)
        };
        let mut ns = vec!["--pid", "--fork", "--kill-child", "--mount", "--uts"];
        if !opts.share_net {
            ns.push("--net");
        }
        ns.push("--mount-proc");
        let mut cmd = match opts.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        let child = cmd
            .args(&ns)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .envs(opts.faults.iter().map(|(k, v)| (k, v)))
            .arg(&bins().agent)
            .args(&opts.args)
            .arg("--control")
            .arg(format!("unix:{}", sock.display()))
            .arg("--image-config")
            .arg(&cfg)
            .args(if opts.ingress {
                vec![
                    "--ingress".to_string(),
                    format!("unix:{}", dir.join("ingress.sock").display()),
                ]
            } else {
                vec![]
            })
            .stdin(Stdio::null())
            .stdout(console_out)
            .stderr(console_err)
            .spawn()
            .expect("spawn unshare");
        let g = Guest {
            dir,
            sock,
            child,
            _stuck_console: stuck,
        };
        g.wait_ready();
        g
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(r) = http(&self.sock, "GET", microvm_protocol::paths::STATUS, b"") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("agent not ready in 20 s; console:\n{}", self.console());
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        http(&self.sock, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; console:\n{}", self.console()))
    }

    pub fn hook(&self, hook: &str, body: &str) -> Reply {
        self.request("POST", &format!("{HOOK_PREFIX}{hook}"), body.as_bytes())
    }

    /// Run `work` on a thread inside the guest's network namespace (setns moves only
    /// the calling thread); what it returns (sockets made there) comes back.
    pub fn in_net<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.agent_pid())).unwrap();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a namespace descriptor we hold open; it changes only
            // this thread, which ends after `work`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .unwrap()
    }

    /// `/v1/status`, after checking that no captured log line vanished uncounted.
    pub fn status(&self) -> Value {
        let s = self
            .request("GET", microvm_protocol::paths::STATUS, b"")
            .json();
        log_balance(&s["logs"]);
        s
    }

    /// Poll status until `pred` holds, or panic after `timeout`.
    pub fn wait_status(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "status never matched within {timeout:?}; last: {s:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Change the recorder's behaviour from now on (`fail suspend`, `hang run`, ...).
    pub fn app_behaviour(&self, lines: &[&str]) {
        std::fs::write(self.dir.join("recorder.control"), lines.join("\n")).unwrap();
    }

    /// Lines the recorder application wrote.
    pub fn recorded(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("recorder.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Recorded calls of one hook.
    pub fn calls(&self, hook: &str) -> Vec<Value> {
        self.recorded()
            .into_iter()
            .filter(|v| v["hook"] == hook)
            .collect()
    }

    /// Wait until the recorder has opened its hooks port (it logs `started`).
    pub fn wait_app_started(&self) {
        let t0 = Instant::now();
        while !self.recorded().iter().any(|v| v.get("started").is_some()) {
            assert!(t0.elapsed() < Duration::from_secs(10), "app never started");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The host PID of the agent (PID 1 inside).
    pub fn agent_pid(&self) -> i32 {
        let p = format!("/proc/{0}/task/{0}/children", self.child.id());
        let t0 = Instant::now();
        loop {
            if let Some(pid) = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            {
                return pid;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no agent process");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Host PIDs of every process in the guest's PID namespace, with their state letter.
    pub fn processes(&self, agent_pid: i32) -> Vec<(i32, char)> {
        let ns = std::fs::read_link(format!("/proc/{agent_pid}/ns/pid")).ok();
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if ns.is_none() || std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != ns {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // State follows the ")" that closes the command name.
            if let Some(state) = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()) {
                out.push((pid, state));
            }
        }
        out
    }

    /// Wait for the namespace's init to be gone; returns how unshare ended.
    pub fn wait_gone(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                t0.elapsed() < timeout,
                "guest still running after {timeout:?}; console:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn unshare_pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // unshare ignores SIGTERM; --kill-child takes the namespace with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tar stream's entries as (name, mode bits, uid), sorted; a directory's name
/// without the trailing '/' some writers give it (GNU tar, the tar crate's root).
pub fn tar_listing(archive: &[u8]) -> Vec<(String, u32, u64)> {
    let mut out: Vec<_> = tar::Archive::new(archive)
        .entries()
        .expect("a tar stream")
        .map(|e| {
            let e = e.expect("a tar entry");
            let h = e.header();
            let name = e.path().expect("an entry name").display().to_string();
            (
                name.trim_end_matches('/').to_string(),
                h.mode().expect("a mode") & 0o7777,
                h.uid().expect("a uid"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Read an exec session's stdout frames until `want` appears in what was read.
pub fn read_until(s: &mut microvm_local::exec::Session, want: &str) -> String {
    use microvm_protocol::exec::Kind;
    let mut seen = Vec::new();
    loop {
        match s.next_frame().expect("a frame") {
            Some((Kind::Stdout, b)) => seen.extend_from_slice(&b),
            Some((Kind::Exit, b)) => panic!(
                "exited before {want:?}: {} after {:?}",
                String::from_utf8_lossy(&b),
                String::from_utf8_lossy(&seen)
            ),
            Some(_) => {}
            None => panic!("closed before {want:?}"),
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        if text.contains(want) {
            return text;
        }
    }
}

/// Poll a tmux pane until `want` is on the screen; the screen is returned.
pub fn pane_shows(server: &str, want: &str) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("tmux")
            .args(["-L", server, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux runs (make setup installs it)");
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains(want) {
            return screen;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{want:?} never appeared; screen:\n{screen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn tmux(server: &str, args: &[&str]) {
    let st = std::process::Command::new("tmux")
        .arg("-L")
        .arg(server)
        .args(args)
        .status()
        .expect("tmux runs (make setup installs it)");
    assert!(st.success(), "tmux {args:?}");
}

/// A person at a remote shell in the tmux window of [`in_tmux`] (80x24), whose
/// command echoes `shell-exit=$?` after the shell: the terminal's size, a resize
/// reaching the remote terminal, and `exit 5` becoming the client's status.
pub fn terminal_session(server: &str) {
    tmux(server, &["send-keys", "-t", "t", "stty size", "Enter"]);
    pane_shows(server, "24 80");
    tmux(
        server,
        &["resize-window", "-t", "t", "-x", "100", "-y", "30"],
    );
    tmux(server, &["send-keys", "-t", "t", "stty size", "Enter"]);
    pane_shows(server, "30 100");
    tmux(server, &["send-keys", "-t", "t", "exit 5", "Enter"]);
    pane_shows(server, "shell-exit=5");
}

/// `command` in a detached 80x24 tmux window (session `t` on a server of its own),
/// driven by `drive` with the server's name; the server is killed afterwards, even
/// when `drive` panics. The panic, if any, is returned for the caller to resume once
/// it has cleaned up its own.
pub fn in_tmux(command: &str, drive: impl FnOnce(&str)) -> std::thread::Result<()> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let server = format!(
        "microvm-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    tmux(
        &server,
        &[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "80",
            "-y",
            "24",
            command,
        ],
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&server)));
    let _ = std::process::Command::new("tmux")
        .args(["-L", &server, "kill-server"])
        .status();
    result
}

#[cfg(test)]
mod tests {
    /// Run only by [`a_skip_fails_under_ci_and_passes_elsewhere`], in a child process.
    #[test]
    #[ignore]
    fn skip_probe() {
        super::skip("the probe cannot run");
    }

    /// A suite that would skip fails under `CI=true`: run the probe above in a child
    /// test process with and without it.
    #[test]
    fn a_skip_fails_under_ci_and_passes_elsewhere() {
        let run = |ci: Option<&str>| {
            let mut c = std::process::Command::new(std::env::current_exe().unwrap());
            c.args(["--exact", "tests::skip_probe", "--ignored", "--nocapture"]);
            c.env_remove("CI");
            if let Some(v) = ci {
                c.env("CI", v);
            }
            let out = c.output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, err) = run(Some("true"));
        assert!(!ok, "a skip passed under CI=true: {err}");
        assert!(
            err.contains("cannot run under CI=true: the probe cannot run"),
            "{err}"
        );
        let (ok, err) = run(None);
        assert!(ok, "{err}");
        assert!(err.contains("SKIPPED: the probe cannot run"), "{err}");
    }
}
