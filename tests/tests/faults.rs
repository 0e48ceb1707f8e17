//! Faults real guests meet, against the real agent as PID 1 in namespaces: a console
//! nobody drains, storage that never finishes a sync, a panic inside the agent. The
//! last two are driven by test-only triggers (`MICROVM_TEST_FAULT_*`) that exist only
//! in the suites' build of the agent (feature `test-faults`), never in `make build`.

use microvm_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn run(g: &Guest, id: &str, extra: Value) {
    let mut body = json!({"microvmId": id});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let r = g.hook("run", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.json());
}

fn faulty(name: &str, fault: &str) -> Guest {
    faulty_as(name, fault, "1")
}

fn faulty_as(name: &str, fault: &str, value: &str) -> Guest {
    let dir = scratch(name);
    let cfg = recorder_config(&dir, all_hooks(5), &[]);
    let opts = GuestOpts {
        faults: vec![(format!("MICROVM_TEST_FAULT_{fault}"), value.into())],
        ..Default::default()
    };
    let g = Guest::start_with(dir, &cfg, &opts);
    g.wait_app_started();
    g
}

/// A console that stopped draining (the agent's stderr is a pipe nobody reads) while
/// the application writes 20 MB with `mirrorToConsole`: mirrored lines are dropped and
/// counted, never waited for, so the application finishes and the host's status and
/// terminate answer. Before the console writer, the agent blocked in `eprintln!` after
/// 64 KiB, and with it the application, the control channel and everything else.
#[test]
fn a_console_nobody_reads_blocks_neither_the_app_nor_the_host() {
    require_root!();
    let dir = scratch("stuck-console");
    let script = format!(
        "yes $(printf '%099d' 0) | head -n 200000; touch {}/done; exec sleep 1000",
        dir.display()
    );
    let cfg = json!({
        "imageName": "console-test",
        "command": ["/bin/sh", "-c", script],
        "logs": {"mirrorToConsole": true},
    });
    let opts = GuestOpts {
        stuck_console: true,
        ..Default::default()
    };
    let mut g = Guest::start_with(dir, &cfg, &opts);
    run(&g, "mvm-console", json!({"logging": {"disabled": {}}}));
    wait_marker(&g.dir, "done");
    let t0 = Instant::now();
    g.status();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // The pipe's last lines may still be on their way when the marker appears.
    let s = g.wait_status(Duration::from_secs(30), |s| {
        s["logs"]["counters"]["capturedEvents"] == 200_000
    });
    // The pipe holds 64 KiB and the queue 256 KiB: at most a few thousand 100-byte
    // lines were written; the rest were counted as dropped, with their bytes.
    let dropped = s["console"]["droppedLines"].as_u64().unwrap();
    assert!(dropped >= 190_000, "{:#}", s["console"]);
    assert!(
        s["console"]["droppedBytes"].as_u64().unwrap() >= dropped * 100,
        "{:#}",
        s["console"]
    );
    let t0 = Instant::now();
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200, "{}", r.json());
    g.wait_gone(Duration::from_secs(30));
    // Power-off waits for the stuck console only within its bounds (1 s of flushing,
    // 2 s for the line that says why).
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// Storage that never finishes a sync: `/terminate` still answers (saying the sync
/// did not finish), and the agent still powers off, within the bounds it documents
/// (10 s for the terminate's sync, 2 s for the runtime's shutdown, 5 s for the final
/// sync). Before the bounds, the runtime's drop waited for the wedged sync forever.
#[test]
fn wedged_storage_never_keeps_the_power_on() {
    require_root!();
    let mut g = faulty("wedged-sync", "WEDGED_SYNC");
    run(&g, "mvm-wedged", json!({}));
    let t0 = Instant::now();
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200, "{}", r.json());
    let storage = r.json()["storageError"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        storage.contains("did not finish within 10s"),
        "{}",
        r.json()
    );
    g.wait_gone(Duration::from_secs(60));
    let took = t0.elapsed();
    eprintln!("terminate to power-off with wedged storage: {took:?}");
    assert!(took < Duration::from_secs(45), "{took:?}");
    let console = g.console();
    assert!(console.contains("test fault: sync wedged"), "{console}");
    assert!(
        console.contains("sync did not finish within 5s; powering off anyway"),
        "{console}"
    );
    assert!(
        console.contains("powering off: Host.Terminate"),
        "{console}"
    );
    // The application was told, as in any terminate.
    assert_eq!(g.calls("terminate").len(), 1);
}

/// A panic inside the agent as PID 1 (a request handler, through the test-only
/// trigger): the agent says why on the console, terminates in order (the application
/// hears /terminate, the host sees the reason in status), and powers off within its
/// grace; it never exits silently and never leaves the namespace's processes behind.
#[test]
fn a_panic_as_pid_1_ends_in_an_orderly_power_off_with_the_reason() {
    require_root!();
    let mut g = faulty("panic", "PANIC_ON_EVENTS");
    run(&g, "mvm-panic", json!({}));
    let t0 = Instant::now();
    let r = http(&g.sock, "GET", microvm_protocol::paths::EVENTS, b"");
    assert!(r.is_err(), "the panicking handler answers nothing: {r:?}");
    // While the report window lasts the host can read why.
    let s = g.wait_status(Duration::from_secs(20), |s| {
        s["stateReason"]
            .as_str()
            .is_some_and(|r| r.starts_with("Agent.Panic"))
    });
    let reason = s["stateReason"].as_str().unwrap();
    assert!(
        reason.contains("test fault: panic while serving /v1/events"),
        "{reason}"
    );
    assert!(
        reason.contains("routes.rs"),
        "the reason says where: {reason}"
    );
    g.wait_gone(Duration::from_secs(45));
    let took = t0.elapsed();
    let console = g.console();
    // The orderly path itself ended it, not the watchdog (30 s).
    assert!(console.contains("self-termination done"), "{console}");
    assert!(took < Duration::from_secs(25), "{took:?}");
    assert!(console.contains("microvm-agent panicked"), "{console}");
    assert!(console.contains("powering off: Agent.Panic"), "{console}");
    assert_eq!(g.calls("terminate").len(), 1, "the app was told");
}

/// What no panic hook sees: a stack overflow, an abort (a panic while panicking, an
/// allocation failure) and a plain memory fault. Before the fatal-signal handler PID 1
/// died of the signal: in a guest a kernel panic, nothing synced, the host told
/// nothing. Now the console says why, storage is synced within a deadline, and the
/// machine powers off (in a PID namespace the kernel turns that power-off into the end
/// of the namespace by SIGINT). Also with the console stuck (a pipe nobody reads) and
/// with storage wedged (the sync child never returns).
#[test]
fn a_stack_overflow_an_abort_or_a_fault_as_pid_1_still_ends_in_a_power_off() {
    use std::os::unix::process::ExitStatusExt;
    require_root!();
    let cases = [
        ("overflow", "SIGSEGV", false, false),
        ("abort", "SIGABRT", false, false),
        ("segv", "SIGSEGV", false, false),
        ("abort", "SIGABRT", false, true),
        ("overflow", "SIGSEGV", true, false),
    ];
    for (kind, signal, stuck_console, wedged) in cases {
        let name = format!("fatal-{kind}-{stuck_console}-{wedged}");
        let dir = scratch(&name);
        let cfg = recorder_config(&dir, all_hooks(5), &[("RECORDER_ACTIONS", "1")]);
        let mut faults = vec![(
            "MICROVM_TEST_FAULT_FATAL_ON_EVENTS".to_string(),
            kind.to_string(),
        )];
        if wedged {
            faults.push(("MICROVM_TEST_FAULT_WEDGED_SYNC".into(), "1".into()));
        }
        let opts = GuestOpts {
            faults,
            stuck_console,
            ..Default::default()
        };
        let mut g = Guest::start_with(dir, &cfg, &opts);
        g.wait_app_started();
        if stuck_console {
            // 2 MB mirrored to a console nobody reads: its pipe is full, so every
            // blocking write from here on would never return.
            run(&g, "mvm-fatal", json!({"runHookPayload": "lines:50000"}));
            g.wait_status(Duration::from_secs(20), |s| {
                s["console"]["droppedLines"].as_u64().unwrap_or(0) > 0
            });
        }
        let r = http(&g.sock, "GET", microvm_protocol::paths::EVENTS, b"");
        assert!(
            r.is_err(),
            "{name}: the dying handler answers nothing: {r:?}"
        );
        let st = g.wait_gone(Duration::from_secs(40));
        assert_eq!(
            st.signal(),
            Some(libc::SIGINT),
            "{name}: {st:?}\n{}",
            g.console()
        );
        if stuck_console {
            continue;
        }
        let console = g.console();
        assert!(
            console.contains(&format!("microvm-agent: fatal: {signal}")),
            "{name}: {console}"
        );
        let synced = console.contains("microvm-agent: fatal: storage synced");
        let late = console.contains("microvm-agent: fatal: sync did not finish in time");
        // A host-wide sync on a loaded machine may take longer than the deadline:
        // either line proves the bounded sync ran; a wedged one must be late.
        assert!(synced || late, "{name}: {console}");
        assert!(!wedged || late, "{name}: {console}");
        assert!(
            console.contains("microvm-agent: fatal: powering off"),
            "{name}: {console}"
        );
    }
}

/// hook-sdk's server out of descriptors (EMFILE): a flood of connections beyond its
/// limit does not end it; once the flood is gone it answers hooks again. Before, its
/// accept loop returned on the first accept error and the application went deaf.
#[test]
fn the_sdk_server_serves_again_after_a_descriptor_flood() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut app = std::process::Command::new("prlimit")
        .arg("--nofile=48:48")
        .arg(&bins().recorder)
        .env("RECORDER_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the recorder under prlimit");
    let ready = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST {}ready HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            microvm_protocol::HOOK_PATH_PREFIX
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let t0 = Instant::now();
    while ready()
        .map(|r| !r.starts_with("HTTP/1.1 200"))
        .unwrap_or(true)
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "app never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 150 idle connections: far past 48 descriptors, so accept(2) fails with EMFILE
    // while they last (the rest wait in the listen backlog; once that is full a
    // connect would wait for SYN retries, hence the timeout).
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok())
        .collect();
    assert!(flood.len() > 48, "only {} connections", flood.len());
    std::thread::sleep(Duration::from_secs(1));
    drop(flood);
    // The server pauses after a failed accept, then serves what is left and new calls.
    let t0 = Instant::now();
    let answer = loop {
        match ready() {
            Ok(r) if r.starts_with("HTTP/1.1 200") => break r,
            other => assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the server never served again: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(app.try_wait().unwrap().is_none(), "the app is alive");
    let _ = app.kill();
    let _ = app.wait();
}

/// The shipped (static) agent, built by `make build` (which `make test` runs first).
fn static_agent() -> Option<std::path::PathBuf> {
    let p = target_dir().join(format!(
        "{}-unknown-linux-musl/release/microvm-agent",
        std::env::consts::ARCH
    ));
    if p.exists() {
        Some(p)
    } else {
        skip("the static agent is not built (make build)");
        None
    }
}

/// PID 1 started with descriptors 0-2 closed on a root whose `/dev` is empty (what a
/// kernel does when it finds no `/dev/console`): Rust's start-up code would open
/// `/dev/null` on them and abort, killing PID 1 before `main`. The agent's early step
/// (before that code) mounts devtmpfs and opens the console, so it comes up and says
/// so in `status.boot.created`. The agent runs chrooted into a directory holding only
/// itself, its config and an empty `/dev` (its console is then this machine's
/// console: the few lines it logs go there).
#[test]
fn pid_1_without_descriptors_on_an_empty_dev_still_comes_up() {
    require_root!();
    let Some(agent) = static_agent() else {
        return;
    };
    let dir = scratch("empty-dev");
    std::fs::create_dir_all(dir.join("dev")).unwrap();
    assert_eq!(std::fs::read_dir(dir.join("dev")).unwrap().count(), 0);
    let (mut guard, sock, status) = bare_pid1(&agent, &dir);
    let child = &mut guard.0;
    let boot = &status["boot"];
    assert_eq!(
        boot["created"][0], "/dev (devtmpfs, before start-up) and console on descriptors 0-2",
        "{boot:#}"
    );
    // Without /proc at start, the agent mounts it to tell a namespace from a guest
    // (it used to assume a guest, and would have stepped this machine's clock).
    assert_eq!(status["role"], "namespace");
    terminate_bare(&sock, child);
}

/// unshare ignores SIGTERM: SIGKILL it (and with it the namespace) however the test
/// ends.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/terminate` to a bare PID 1, then its end (within 30 s).
fn terminate_bare(sock: &std::path::Path, child: &mut std::process::Child) {
    let r = http(
        sock,
        "POST",
        &format!("{}terminate", microvm_protocol::HOOK_PATH_PREFIX),
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The static agent as PID 1 chrooted into `dir` with descriptors 0-2 closed, until
/// its control channel answers: the unshare, the socket, the first status.
fn bare_pid1(
    agent: &std::path::Path,
    dir: &std::path::Path,
) -> (Killed, std::path::PathBuf, Value) {
    std::fs::copy(agent, dir.join("init")).unwrap();
    let cfg = json!({"imageName": "empty-dev", "command": ["/no-such-app"],
                     "onApplicationExit": "restart"});
    std::fs::write(dir.join("image.json"), cfg.to_string()).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--uts",
        "--net",
    ])
    .arg(format!("--root={}", dir.display()))
    .args([
        "/init",
        "--control",
        "unix:/control.sock",
        "--image-config",
        "/image.json",
    ]);
    // SAFETY: between fork and exec, close(2) only: async-signal-safe, no allocation.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            for fd in 0..=2 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut guard = Killed(cmd.spawn().expect("spawn unshare"));
    let child = &mut guard.0;
    let sock = dir.join("control.sock");
    let t0 = Instant::now();
    let status = loop {
        if let Ok(r) = http(&sock, "GET", microvm_protocol::paths::STATUS, b"") {
            break r.json();
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("PID 1 died before its control channel came up: {exit}");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no control channel");
        std::thread::sleep(Duration::from_millis(20));
    };
    (guard, sock, status)
}

/// Worse: no `/dev` can exist at all (here it is a regular file, so neither devtmpfs
/// nor anything else can be mounted on it). Start-up would still abort on the closed
/// descriptors; the early step puts them on a pipe nobody reads instead, so PID 1
/// comes up, says what happened in its boot report, and powers off on /terminate.
#[test]
fn pid_1_without_descriptors_and_without_any_dev_still_comes_up() {
    require_root!();
    let Some(agent) = static_agent() else {
        return;
    };
    let dir = scratch("no-dev");
    std::fs::write(dir.join("dev"), "not a directory").unwrap();
    let (mut guard, sock, status) = bare_pid1(&agent, &dir);
    let failures = &status["boot"]["failures"];
    assert!(
        failures.as_array().unwrap().iter().any(|f| f
            == "no console: /dev/console could not be opened or created (descriptors 0-2 on a pipe nobody reads)"),
        "{:#}",
        status["boot"]
    );
    terminate_bare(&sock, &mut guard.0);
}

/// PID 1 cannot refuse to start: `--help` and a bad value on its command line (the
/// kernel passes init what it does not know) are logged and ignored, and the flags
/// that were right still count (the control channel answers where `--control` put
/// it). Before, one bad value discarded every flag.
#[test]
fn pid_1_logs_and_ignores_help_and_bad_flags_and_keeps_the_good_ones() {
    require_root!();
    let dir = scratch("pid1-args");
    let cfg = recorder_config(&dir, all_hooks(5), &[]);
    let opts = GuestOpts {
        args: vec![
            "--help".into(),
            "--ingress".into(),
            "tcp:1".into(),
            "splash".into(),
        ],
        ..Default::default()
    };
    let mut g = Guest::start_with(dir, &cfg, &opts);
    g.wait_app_started();
    assert_eq!(g.status()["state"], "PENDING");
    let console = g.console();
    assert!(
        console.contains("--help ignored: running as PID 1"),
        "{console}"
    );
    assert!(console.contains("that flag keeps its default"), "{console}");
    assert!(console.contains("tcp:1"), "{console}");
    assert_eq!(g.hook("terminate", "").status, 200);
    g.wait_gone(Duration::from_secs(30));
}

/// Not PID 1 (under another init), a panic is a failure the parent sees: exit 101.
#[test]
fn a_panic_when_not_pid_1_exits_101() {
    let dir = scratch("not-pid1-panic");
    // An application that holds no port: the agent's children outlive an agent that
    // is not PID 1.
    let cfg = json!({"imageName": "not-pid1", "command": ["sleep", "20"]});
    let cfg_path = dir.join("image.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let sock = dir.join("control.sock");
    let mut child = std::process::Command::new(&bins().agent)
        .arg("--control")
        .arg(format!("unix:{}", sock.display()))
        .arg("--image-config")
        .arg(&cfg_path)
        .arg("--ingress")
        .arg(format!("unix:{}", dir.join("ingress.sock").display()))
        .env("MICROVM_TEST_FAULT_PANIC_ON_EVENTS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while http(&sock, "GET", microvm_protocol::paths::STATUS, b"").is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no control channel");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = http(&sock, "GET", microvm_protocol::paths::EVENTS, b"");
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("still running after the panic");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(101), "{st:?}");
}
