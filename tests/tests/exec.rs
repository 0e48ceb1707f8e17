//! Exec and files on the control channel, with the agent as PID 1 in namespaces (its
//! control channel on a Unix socket), driven by the runner's own client library.
//! The same contract in a real guest over vsock is in `guest_exec.rs`.

use microvm_local::exec::{self as client, Session};
use microvm_protocol::exec::{EndReason, ExecRequest, Kind, TtySize, MAX_SESSIONS};
use microvm_tests::*;
use serde_json::{json, Value};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn guest(name: &str) -> Guest {
    let dir = scratch(name);
    let cfg = recorder_config(&dir, all_hooks(10), &[("APP_MARK", "from-the-image")]);
    let g = Guest::start_in(dir, &cfg);
    g.wait_app_started();
    g
}

fn run(g: &Guest, shell: bool) {
    let mut env = json!({"microvmId": "mvm-exec", "runHookPayload": "p"});
    if shell {
        env["shellIngress"] = json!(true);
    }
    let r = g.hook("run", &env.to_string());
    assert_eq!(r.status, 200, "{}", r.json());
}

fn connect(g: &Guest) -> UnixStream {
    UnixStream::connect(&g.sock).unwrap()
}

fn req(command: &[&str]) -> ExecRequest {
    ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Run to the end with `stdin`; (stdout, stderr, exit frame).
fn exec(g: &Guest, r: ExecRequest, stdin: &[u8]) -> client::Output {
    client::run(connect(g), &r, stdin).unwrap_or_else(|e| panic!("{e}; console:\n{}", g.console()))
}

fn refusal(g: &Guest, r: ExecRequest) -> (u16, Value) {
    match Session::start(connect(g), &r) {
        Ok(_) => panic!("exec {:?} was started", r.command),
        Err(e) => e.api().unwrap_or_else(|| panic!("not an answer: {e}")),
    }
}

#[test]
fn exec_and_files_need_a_running_vm_with_shell_ingress() {
    let g = guest("exec-gate");
    let (status, body) = refusal(&g, req(&["true"]));
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("InvalidState")),
        "before /run: {body}"
    );
    assert_eq!(body["state"], "PENDING");
    run(&g, false);
    let (status, body) = refusal(&g, req(&["true"]));
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("Forbidden")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("SHELL_INGRESS"));
    let r = g.request("GET", "/v1/files?path=/etc/hostname", b"");
    assert_eq!(r.status, 403);
    assert_eq!(g.status()["run"]["shellIngress"], false);
    // Without the upgrade headers: told what to send.
    let r = g.request("POST", "/v1/exec", br#"{"command":["true"]}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("Upgrade: microvm-exec"));
}

#[test]
fn commands_run_with_their_exit_codes_signals_user_environment_and_directory() {
    let g = guest("exec-basics");
    run(&g, true);
    assert_eq!(g.status()["run"]["shellIngress"], true);
    let out = exec(
        &g,
        req(&["sh", "-c", "echo out; echo err >&2; exit 7"]),
        b"",
    );
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(
        (out.exit.exit_code, out.exit.reason),
        (Some(7), EndReason::Exited)
    );
    let out = exec(&g, req(&["sh", "-c", "kill -TERM $$"]), b"");
    assert_eq!(
        (out.exit.exit_code, out.exit.signal.as_deref()),
        (None, Some("SIGTERM"))
    );
    let mut r = req(&[
        "sh",
        "-c",
        "echo $APP_MARK:$MINE:$HOME:$(pwd):$(id -u):$(id -g)",
    ]);
    r.env.insert("MINE".into(), "x y".into());
    r.user = Some("65534:65534".into());
    r.working_dir = Some("/tmp".into());
    let out = exec(&g, r, b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-the-image:x y:/nonexistent:/tmp:65534:65534\n"
    );
    // A signal frame reaches the process group.
    let mut s = Session::start(connect(&g), &req(&["sleep", "30"])).unwrap();
    s.signal(libc::SIGINT).unwrap();
    let out = s.wait().unwrap();
    assert_eq!(out.exit.signal.as_deref(), Some("SIGINT"));
    // Refusals that name what is wrong.
    let (status, body) = refusal(&g, req(&["no-such-command-anywhere"]));
    assert_eq!(status, 404, "{body}");
    let mut r = req(&["true"]);
    r.working_dir = Some("/no/such/dir".into());
    let (status, body) = refusal(&g, r);
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("workingDir")),
        "{body}"
    );
    let mut r = req(&["true"]);
    r.user = Some("nobody-here".into());
    let (status, body) = refusal(&g, r);
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("user")),
        "{body}"
    );
    let (status, body) = refusal(&g, req(&[]));
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("command")),
        "{body}"
    );
    // Exec output never reaches the application's log stream; the app is untouched.
    // (The marker is computed in the guest: the agent's own log names the command.)
    let out = exec(&g, req(&["sh", "-c", "echo exec-only-$((6 * 7))"]), b"");
    assert_eq!(out.stdout, b"exec-only-42\n");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!g.console().contains("exec-only-42"));
    let s = g.status();
    assert_eq!(s["application"]["starts"], 1);
    assert_eq!(s["application"]["running"], true);
    assert_eq!(s["state"], "RUNNING");
    assert!(s["stateReason"].is_null(), "{s}");
}

#[test]
fn ten_megabytes_through_stdin_come_back_byte_exact_with_stderr_apart() {
    let g = guest("exec-bulk");
    run(&g, true);
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = exec(&g, req(&["sh", "-c", "cat; echo done >&2"]), &data);
    assert_eq!(out.exit.exit_code, Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
    assert_eq!(out.stderr, b"done\n");
}

#[test]
fn output_waiting_for_a_slow_host_after_the_exit_is_not_dropped() {
    let g = guest("exec-slow-host");
    run(&g, true);
    // The process exits at once; a child it left writes on, held up only by a host
    // that reads nothing for well past the 2 s quiet-pipe drain (twice over).
    let s = Session::start(
        connect(&g),
        &req(&["sh", "-c", "head -c 3000000 /dev/zero & exit 0"]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let out = s.wait().unwrap();
    assert_eq!(out.exit.exit_code, Some(0));
    assert_eq!(out.stdout.len(), 3_000_000);
    // The same, but the host half-closes instead of reading: that hang-up ends the
    // drain, kills the left child and frees the place.
    let stream = connect(&g);
    let half = stream.try_clone().unwrap();
    let s = Session::start(
        stream,
        &req(&["sh", "-c", "head -c 3000000 /dev/zero & exit 0"]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    half.shutdown(std::net::Shutdown::Write).unwrap();
    g.wait_status(Duration::from_secs(3), |s| {
        s["activity"]["execSessions"] == 0
    });
    drop(s);
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let g = guest("exec-timeout");
    run(&g, true);
    let mut r = req(&["sh", "-c", "sleep 1000 & echo $!; wait"]);
    r.timeout_seconds = Some(1);
    let t0 = Instant::now();
    let out = exec(&g, r, b"");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(out.exit.reason, EndReason::Timeout);
    assert_eq!(out.exit.signal.as_deref(), Some("SIGKILL"));
    let child = String::from_utf8(out.stdout).unwrap();
    let child = child.trim();
    assert!(!child.is_empty());
    // The background sleep was in the group: gone too (kill -0 fails).
    let t0 = Instant::now();
    loop {
        let probe = exec(&g, req(&["sh", "-c", &format!("kill -0 {child}")]), b"");
        if probe.exit.exit_code == Some(1) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "pid {child} survived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_terminal_reports_its_size_and_follows_a_resize() {
    let g = guest("exec-tty");
    run(&g, true);
    let mut r = req(&["sh", "-c", "stty size; echo ready; read x; stty size; tty"]);
    r.tty = Some(TtySize { rows: 24, cols: 80 });
    let mut s = Session::start(connect(&g), &r).unwrap();
    let first = read_until(&mut s, "ready");
    assert!(first.contains("24 80"), "{first:?}");
    s.resize(TtySize {
        rows: 40,
        cols: 132,
    })
    .unwrap();
    s.stdin(b"\n").unwrap();
    let out = s.wait().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("40 132"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(out.stderr.is_empty(), "a terminal has one stream");
    assert_eq!(out.exit.exit_code, Some(0));
}

#[test]
fn sessions_run_side_by_side_and_are_bounded() {
    let g = guest("exec-many");
    run(&g, true);
    let outs: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let g = &g;
                sc.spawn(move || exec(g, req(&["sh", "-c", &format!("sleep 0.3; echo {i}")]), b""))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.stdout, format!("{i}\n").as_bytes());
    }
    let held: Vec<Session> = (0..MAX_SESSIONS)
        .map(|_| Session::start(connect(&g), &req(&["sleep", "60"])).unwrap())
        .collect();
    assert_eq!(g.status()["activity"]["execSessions"], MAX_SESSIONS as u64);
    assert_eq!(
        g.status()["activity"]["busy"],
        true,
        "open sessions keep the VM awake"
    );
    let (status, body) = refusal(&g, req(&["true"]));
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("TooManySessions"))
    );
    // Hanging up kills a session's process group and frees its place.
    drop(held);
    g.wait_status(Duration::from_secs(10), |s| {
        s["activity"]["execSessions"] == 0
    });
    assert_eq!(exec(&g, req(&["true"]), b"").exit.exit_code, Some(0));
}

#[test]
fn suspend_and_terminate_end_sessions_saying_why() {
    let g = guest("exec-end");
    run(&g, true);
    let s = Session::start(connect(&g), &req(&["sleep", "1000"])).unwrap();
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["execSessionsEnded"], 1);
    let out = s.wait().unwrap();
    assert_eq!(out.exit.reason, EndReason::Suspend);
    assert_eq!(out.exit.signal.as_deref(), Some("SIGKILL"));
    let (status, body) = refusal(&g, req(&["true"]));
    assert_eq!(
        (status, body["state"].as_str()),
        (409, Some("SUSPENDED")),
        "{body}"
    );
    assert_eq!(g.request("HEAD", "/v1/files?path=/tmp", b"").status, 409);
    assert_eq!(g.hook("resume", "{}").status, 200);
    assert_eq!(exec(&g, req(&["true"]), b"").exit.exit_code, Some(0));
    let sessions: Vec<Session> = (0..3)
        .map(|_| Session::start(connect(&g), &req(&["sleep", "1000"])).unwrap())
        .collect();
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["execSessionsEnded"], 3);
    for s in sessions {
        assert_eq!(s.wait().unwrap().exit.reason, EndReason::Terminate);
    }
}

#[test]
fn a_suspension_cuts_transfers_whose_host_stalls_and_never_completes_them() {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let g = guest("exec-cut");
    run(&g, true);
    let dir = scratch("exec-cut-files");
    std::fs::write(dir.join("big"), vec![5u8; 32 << 20]).unwrap();
    // A download whose host never reads, and an upload whose host stops sending after
    // a whole directory and file entry (no end of archive).
    let mut down = connect(&g);
    let get = format!(
        "GET /v1/files?path={} HTTP/1.1\r\nHost: agent\r\n\r\n",
        dir.join("big").display()
    );
    down.write_all(get.as_bytes()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o700);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "d/", &[][..]).unwrap();
    let mut part = tar_of(&[("d/f", 0o644, b"x")]);
    part.truncate(1024); // the header and the data block, without the end blocks
    let mut body = b.into_inner().unwrap();
    body.truncate(512);
    body.extend_from_slice(&part);
    let up_dir = dir.join("up");
    std::fs::create_dir(&up_dir).unwrap();
    let mut up = connect(&g);
    let put = format!(
        "PUT /v1/files?path={} HTTP/1.1\r\nHost: agent\r\nContent-Length: {}\r\n\r\n",
        up_dir.display(),
        body.len() + 4096
    );
    up.write_all(put.as_bytes()).unwrap();
    up.write_all(&body).unwrap();
    g.wait_status(Duration::from_secs(10), |s| {
        s["activity"]["execSessions"] == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["execSessionsEnded"], 2);
    // Neither transfer holds its place past the suspension.
    assert_eq!(g.status()["activity"]["execSessions"], 0);
    // The upload is answered as cut, and the directory's own mode (applied only to a
    // whole archive) was never set.
    let mut answer = String::new();
    up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = up.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    let mode = std::fs::metadata(up_dir.join("d"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(
        mode & 0o7777,
        0o700,
        "directory metadata applied to a cut archive"
    );
    // The download ends without the chunked body's last chunk: a cut, not a whole tar.
    down.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let _ = down.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < 32 << 20, "the whole file was sent");
    assert!(
        !got.ends_with(b"\r\n0\r\n\r\n"),
        "the cut stream ended like a whole one"
    );
}

#[test]
fn frames_the_host_may_not_send_end_the_session() {
    let g = guest("exec-protocol");
    run(&g, true);
    for bad in [
        microvm_protocol::exec::frame(Kind::Stdout, b"x"),
        vec![9, 0, 0, 0, 0],
        microvm_protocol::exec::header(Kind::Stdin, 1 << 20).to_vec(),
        microvm_protocol::exec::frame(Kind::Signal, &[1, 2]),
    ] {
        let mut s = Session::start(connect(&g), &req(&["sleep", "1000"])).unwrap();
        s.raw_write(&bad).unwrap();
        let out = s.wait().unwrap();
        assert_eq!(out.exit.reason, EndReason::ProtocolError, "{bad:?}");
        assert!(out.exit.message.is_some());
    }
}

fn tar_of(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(65534);
        h.set_gid(65534);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn files_go_in_and_out_as_tar_streams_keeping_modes_and_owners() {
    use std::os::unix::fs::MetadataExt;
    let g = guest("exec-files");
    run(&g, true);
    let dest = scratch("exec-files-dest");
    let archive = tar_of(&[
        ("tree/run.sh", 0o750, b"#!/bin/sh\necho hi\n"),
        ("tree/deep/secret", 0o600, b"s"),
    ]);
    let put = client::files::put(connect(&g), &dest, &archive[..]).unwrap();
    assert_eq!((put.files, put.bytes), (2, 19));
    let meta = std::fs::metadata(dest.join("tree/run.sh")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o750, 65534, 65534)
    );
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::metadata(dest.join("tree/deep/secret"))
            .unwrap()
            .mode()
            & 0o7777,
        0o600
    );
    assert_eq!(
        client::files::file_type(connect(&g), &dest.join("tree")).unwrap(),
        Some("directory".to_string())
    );
    assert_eq!(
        client::files::file_type(connect(&g), &dest.join("nope")).unwrap(),
        None
    );
    // Out again: the same entries, modes and owners.
    let mut back = Vec::new();
    client::files::get(connect(&g), &dest.join("tree"), &mut back).unwrap();
    let names = tar_listing(&back);
    assert_eq!(
        names,
        [
            ("tree".to_string(), 0o755, 0),
            ("tree/deep".to_string(), 0o755, 0),
            ("tree/deep/secret".to_string(), 0o600, 65534),
            ("tree/run.sh".to_string(), 0o750, 65534),
        ]
    );
    // Refusals: a missing source or destination, a stream that is not tar, one cut
    // short (no temporary file left), an entry that leaves the destination.
    let err = |r: Result<microvm_protocol::exec::FilesPut, client::ExecError>| {
        r.unwrap_err().api().expect("an answer")
    };
    assert_eq!(
        err(client::files::put(
            connect(&g),
            &dest.join("nope"),
            &archive[..]
        ))
        .0,
        404
    );
    let (s, b) = err(client::files::put(
        connect(&g),
        &dest,
        &b"not a tar stream at all"[..].repeat(40)[..],
    ));
    assert_eq!(s, 400, "{b}");
    let mut cut = tar_of(&[("big", 0o644, &[1u8; 100_000])]);
    cut.truncate(50_000);
    let (s, b) = err(client::files::put(connect(&g), &dest, &cut[..]));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("ends inside big"),
        "{b}"
    );
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut evil = h.as_bytes().to_vec();
    evil.extend_from_slice(&[b'x'; 512]);
    evil.extend_from_slice(&[0; 1024]);
    assert_eq!(
        err(client::files::put(connect(&g), &dest, &evil[..])).0,
        400
    );
    let mut left: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["tree"],
        "nothing but the tree: no temporary files, no escape"
    );
    let mut sink = Vec::new();
    assert_eq!(
        client::files::get(connect(&g), &dest.join("nope"), &mut sink)
            .unwrap_err()
            .api()
            .unwrap()
            .0,
        404
    );
}

#[test]
fn a_full_disk_is_507_and_leaves_no_temporary_file() {
    let g = guest("exec-full");
    run(&g, true);
    // A 1 MiB tmpfs inside the agent's mount namespace, made by an exec.
    let out = exec(
        &g,
        req(&[
            "sh",
            "-c",
            "mkdir -p /tmp/exec-full-small && mount -t tmpfs -o size=1m tmpfs /tmp/exec-full-small",
        ]),
        b"",
    );
    assert_eq!(
        out.exit.exit_code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = tar_of(&[("big", 0o644, &vec![7u8; 3 << 20])]);
    let (s, b) = client::files::put(
        connect(&g),
        std::path::Path::new("/tmp/exec-full-small"),
        &archive[..],
    )
    .unwrap_err()
    .api()
    .unwrap();
    assert_eq!(
        (s, b["error"].as_str()),
        (507, Some("InsufficientStorage")),
        "{b}"
    );
    let out = exec(&g, req(&["ls", "-A", "/tmp/exec-full-small"]), b"");
    assert_eq!(out.stdout, b"", "no temporary file left");
}
