//! End to end: the real image (`make rootfs`) booted under QEMU, driven over real
//! vsock through vhost-device-vsock's hybrid socket.
//!
//! Skipped, with the reason, when QEMU, the backend or the image are missing; CI
//! installs and builds all three (`make setup rootfs`) so there it always runs.

use microvm_local::vm::{Arch, Image, NetOpts, Vm, VmOpts};
use microvm_tests::cw::{FaultProxy, Moto};
use microvm_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The example image plus the recorder's vsock probe (rootfs/test/image.json).
fn image() -> Option<Image> {
    built_image("build/test", Arch::X86_64)
}

/// The same test image built for arm64, booted under qemu-system-aarch64.
fn arm64_image() -> Option<Image> {
    built_image("build/aarch64/test", Arch::Arm64)
}

fn boot(name: &str) -> Option<Vm> {
    boot_image(&image()?, name)
}

fn boot_image(image: &Image, name: &str) -> Option<Vm> {
    let dir = target_dir().join("vmtest").join(name);
    Some(Vm::boot(image, &VmOpts::default(), &dir).unwrap_or_else(|e| panic!("{e}")))
}

/// Records the example application printed on the console (`recorder: {json}`).
fn recorded(vm: &Vm) -> Vec<Value> {
    vm.serial()
        .lines()
        .filter_map(|l| l.split_once("recorder: ").map(|(_, j)| j))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

fn wait_record(vm: &Vm, what: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = recorded(vm).into_iter().find(|v| what(v)) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "record never seen; serial:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Cold boot (the runner's `--cold-boot`; the test image has a snapshot): the
/// kernel, the agent's initramfs stage onto the virtio-blk root, the image-build
/// hooks, then the lifecycle, its suspend through a file as every x86_64 run's.
#[test]
fn a_real_guest_runs_suspends_resumes_and_powers_off() {
    let Some(image) = image() else {
        return;
    };
    let opts = VmOpts {
        cold_boot: true,
        ..VmOpts::default()
    };
    let vm = Vm::boot(
        &image,
        &opts,
        &target_dir().join("vmtest").join("lifecycle"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!vm.from_snapshot);
    lifecycle(vm);
}

/// The same lifecycle on an arm64 guest: the agent cross-built, the arm64 kernel,
/// qemu-system-aarch64 picked from the image's manifest. The clock step and the
/// entropy reseed are checked as on x86 (6.1 on arm64 has no VMGenID: the agent's
/// reseed is all there is).
#[test]
fn an_arm64_guest_runs_suspends_resumes_and_powers_off() {
    let Some(image) = arm64_image() else {
        return;
    };
    let Some(vm) = boot_image(&image, "lifecycle-arm64") else {
        return;
    };
    assert_eq!(vm.status().unwrap()["guest"]["machine"], "aarch64");
    lifecycle(vm);
}

/// Run, suspend, a 30 s pause, resume with the clock checked from inside the guest,
/// terminate with a clean power-off.
fn lifecycle(vm: Vm) {
    eprintln!("guest announced after {:?}: {}", vm.boot_time, vm.announced);
    assert_eq!(vm.announced["event"], "ready");
    assert_eq!(vm.announced["cid"], 3);
    // The announce line says which contract this agent speaks.
    let announced: microvm_protocol::events::Announce =
        serde_json::from_value(vm.announced.clone()).expect("a typed announce line");
    assert_eq!(
        announced.protocol_version,
        microvm_protocol::PROTOCOL_VERSION
    );

    // Status over real vsock, as the typed contract says.
    let s = vm.status().unwrap();
    let typed: microvm_protocol::status::Status =
        serde_json::from_value(s.clone()).expect("status is the typed contract");
    assert_eq!(typed.protocol_version, microvm_protocol::PROTOCOL_VERSION);
    assert_eq!(s["state"], "PENDING");
    assert_eq!(s["role"], "guest");
    assert_eq!(s["imageName"], "example-recorder");
    assert_eq!(s["guest"]["cid"], 3);
    assert!(
        ["x86_64", "aarch64"].contains(&s["guest"]["machine"].as_str().unwrap()),
        "{s:#}"
    );
    assert!(
        s["boot"]["failures"].as_array().unwrap().is_empty(),
        "{s:#}"
    );
    // devtmpfs makes no /dev/fd or /dev/std* (udev would): the agent does. A machine
    // that can be saved always has its (restricted) NIC.
    let mut created = json!(["/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr"]);
    if vm.layout() == microvm_local::vm::Layout::Snapshot {
        created
            .as_array_mut()
            .unwrap()
            .push(json!("network eth0 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3"));
    }
    assert_eq!(s["boot"]["created"], created, "{s:#}");

    // Image build hooks, then /run with a payload that must arrive byte-exact.
    let t0 = Instant::now();
    while vm.hook("ready", "").unwrap().status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(vm.hook("validate", "").unwrap().status, 200);
    let payload = "héllo \"guest\"\n\t✓ \\ {\"nested\":[1,2]}\r\n".repeat(100);
    let run = json!({"microvmId": "mvm-e2e-1", "runHookPayload": payload,
                     "clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let got = wait_record(&vm, |v| v["hook"] == "run");
    assert_eq!(got["microvmId"], "mvm-e2e-1");
    assert_eq!(got["runHookPayload"].as_str().unwrap(), payload);

    // No shell ingress in this run: exec and files are refused before any process.
    let refused = microvm_local::exec::Session::start(
        vm.connect(microvm_protocol::ports::CONTROL).unwrap(),
        &exec_req(&["true"]),
    )
    .err()
    .and_then(|e| e.api())
    .expect("refused with an answer");
    assert_eq!(refused.0, 403, "{}", refused.1);

    // A connection from a non-host CID (the guest's own loopback, CID 1) is refused.
    let probe = wait_record(&vm, |v| v.get("vsockProbe").is_some());
    assert_eq!(probe["vsockProbe"]["answered"], false, "{probe}");
    assert!(vm
        .serial()
        .contains("refused control connection from a CID that is not the host"));

    // Suspend, stop the VM for 30 s (saved to a file where the layout allows, else
    // paused), bring it back, resume with the host's clock.
    let r = vm.hook("suspend", "").unwrap();
    assert_eq!(r.status, 200);
    vm.park().unwrap();
    std::thread::sleep(Duration::from_secs(30));
    vm.unpark().unwrap();
    let resume = json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
    let sent_at = now_ms();
    let r = vm.hook("resume", &resume.to_string()).unwrap();
    let answered_at = now_ms();
    assert_eq!(r.status, 200, "{}", r.json());
    // The application, inside the guest, read its wall clock in its resume hook.
    let rec = wait_record(&vm, |v| v["hook"] == "resume");
    let guest_t = rec["t"].as_i64().unwrap();
    assert!(
        guest_t >= sent_at - 50 && guest_t <= answered_at + 50,
        "guest clock {guest_t} vs host window [{sent_at}, {answered_at}]"
    );
    let s = vm.status().unwrap();
    assert_eq!(s["state"], "RUNNING");
    assert_eq!(
        s["machine"]["applied"], true,
        "the real clock in a real guest"
    );
    assert_eq!(s["machine"]["clockSteps"], 2);
    assert_eq!(s["machine"]["entropyReseeds"], 2);

    // Terminate: the agent answers, then the guest powers off cleanly.
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "TERMINATED");
    assert!(vm.wait_exit(Duration::from_secs(20)), "QEMU did not exit");
    let serial = vm.serial();
    assert!(serial.contains("powering off"), "{serial}");
    assert!(serial.contains("reboot: Power down"), "{serial}");
    assert!(!serial.contains("Kernel panic"), "{serial}");
    assert_eq!(
        recorded(&vm)
            .iter()
            .filter_map(|v| v["hook"].as_str().map(str::to_string))
            .filter(|h| h != "ready")
            .collect::<Vec<_>>(),
        ["validate", "run", "suspend", "resume", "terminate"]
    );
}

fn exec_req(command: &[&str]) -> microvm_protocol::exec::ExecRequest {
    microvm_protocol::exec::ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Exec and files over real vsock in a guest whose run enabled shell ingress: exit
/// codes and signals, 10 MB through stdin, a timeout that kills the process group, a
/// terminal's size, concurrent sessions, a tree in and out with its modes, and
/// /suspend and /terminate ending sessions (the busybox toolbox of the image is
/// what runs).
#[test]
fn exec_and_files_in_a_real_guest() {
    use microvm_local::exec::{self as client, Session};
    use microvm_protocol::exec::{EndReason, TtySize};
    let Some(vm) = boot("exec") else {
        return;
    };
    let t0 = Instant::now();
    while vm.hook("ready", "").unwrap().status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = json!({"microvmId": "mvm-exec", "shellIngress": true});
    assert_eq!(vm.hook("run", &run.to_string()).unwrap().status, 200);
    let control = || vm.connect(microvm_protocol::ports::CONTROL).unwrap();
    let exec = |r: microvm_protocol::exec::ExecRequest, stdin: &[u8]| {
        client::run(control(), &r, stdin)
            .unwrap_or_else(|e| panic!("{e}; serial:\n{}", vm.serial()))
    };

    // Exit codes, signals (by the process and by a frame), stderr apart.
    let out = exec(
        exec_req(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        b"",
    );
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.exit.exit_code, Some(3));
    let out = exec(exec_req(&["sh", "-c", "kill -KILL $$"]), b"");
    assert_eq!(out.exit.signal.as_deref(), Some("SIGKILL"));
    let mut s = Session::start(control(), &exec_req(&["sleep", "30"])).unwrap();
    s.signal(libc::SIGTERM).unwrap();
    assert_eq!(s.wait().unwrap().exit.signal.as_deref(), Some("SIGTERM"));

    // 10 MB through stdin and back, byte-exact, stderr kept apart.
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let t = Instant::now();
    let out = exec(exec_req(&["sh", "-c", "cat; echo done >&2"]), &data);
    eprintln!(
        "10 MiB through exec stdin and back over vsock in {:?}",
        t.elapsed()
    );
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
    assert_eq!(out.stderr, b"done\n");

    // A timeout kills the whole process group: the background sleep too.
    let mut r = exec_req(&["sh", "-c", "sleep 1000 & echo $!; wait"]);
    r.timeout_seconds = Some(2);
    let out = exec(r, b"");
    assert_eq!(
        (out.exit.reason, out.exit.signal.as_deref()),
        (EndReason::Timeout, Some("SIGKILL"))
    );
    let child = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let t = Instant::now();
    while exec(exec_req(&["kill", "-0", &child]), b"").exit.exit_code != Some(1) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "pid {child} survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A terminal: its size, then a resize seen by `stty size`.
    let mut r = exec_req(&["sh", "-c", "stty size; echo ready; read x; stty size"]);
    r.tty = Some(TtySize { rows: 24, cols: 80 });
    let mut s = Session::start(control(), &r).unwrap();
    let seen = read_until(&mut s, "ready");
    assert!(seen.contains("24 80"), "{seen:?}");
    s.resize(TtySize {
        rows: 50,
        cols: 160,
    })
    .unwrap();
    s.stdin(b"\n").unwrap();
    let out = s.wait().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("50 160"),
        "{:?}",
        out.stdout
    );

    // Concurrent sessions, each its own answer.
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let exec = &exec;
                sc.spawn(move || exec(exec_req(&["sh", "-c", &format!("sleep 1; echo {i}")]), b""))
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap().stdout, format!("{i}\n").as_bytes());
        }
    });

    // A tree in and out, modes and owners kept.
    let src = scratch("exec-guest-tree");
    std::fs::create_dir_all(src.join("tree/sub")).unwrap();
    std::fs::write(src.join("tree/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::write(src.join("tree/sub/key"), "k").unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (p, m) in [
        ("tree/run.sh", 0o751),
        ("tree/sub/key", 0o600),
        ("tree/sub", 0o710),
    ] {
        std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all("tree", src.join("tree")).unwrap();
    let archive = tar.into_inner().unwrap();
    client::files::put(control(), Path::new("/tmp"), &archive[..]).unwrap();
    let out = exec(
        exec_req(&[
            "sh",
            "-c",
            "stat -c '%a %n' /tmp/tree/run.sh /tmp/tree/sub /tmp/tree/sub/key; /tmp/tree/run.sh",
        ]),
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "751 /tmp/tree/run.sh\n710 /tmp/tree/sub\n600 /tmp/tree/sub/key\nran\n"
    );
    let mut back = Vec::new();
    client::files::get(control(), Path::new("/tmp/tree"), &mut back).unwrap();
    let modes: Vec<(String, u32)> = tar_listing(&back)
        .into_iter()
        .map(|(name, mode, _)| (name, mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("tree".to_string(), 0o755),
            ("tree/run.sh".to_string(), 0o751),
            ("tree/sub".to_string(), 0o710),
            ("tree/sub/key".to_string(), 0o600),
        ]
    );

    // /suspend ends a session (and says so); exec is refused while SUSPENDED.
    let s = Session::start(control(), &exec_req(&["sleep", "1000"])).unwrap();
    let r = vm.hook("suspend", "").unwrap();
    assert_eq!(
        (r.status, r.json()["execSessionsEnded"].as_u64()),
        (200, Some(1))
    );
    assert_eq!(s.wait().unwrap().exit.reason, EndReason::Suspend);
    let refused = Session::start(control(), &exec_req(&["true"]))
        .err()
        .and_then(|e| e.api())
        .unwrap();
    assert_eq!(
        (refused.0, refused.1["state"].as_str()),
        (409, Some("SUSPENDED"))
    );
    assert_eq!(vm.hook("resume", "{}").unwrap().status, 200);

    // /terminate ends every session.
    let sessions: Vec<Session> = (0..3)
        .map(|_| Session::start(control(), &exec_req(&["sh", "-c", "sleep 1000"])).unwrap())
        .collect();
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(
        (r.status, r.json()["execSessionsEnded"].as_u64()),
        (200, Some(3))
    );
    for s in sessions {
        assert_eq!(s.wait().unwrap().exit.reason, EndReason::Terminate);
    }
    assert!(vm.wait_exit(Duration::from_secs(20)), "QEMU did not exit");
    let _ = std::fs::remove_dir_all(src);
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose; /proc/PID/stat says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rfind(')').and_then(|i| s[i + 2..].chars().next()) != Some('Z'))
        .unwrap_or(false)
}

fn children_named(parent: u32, names: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(c, _)| c);
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.is_some_and(|c| names.iter().any(|n| c.starts_with(n))) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn the_runner_takes_run_microvm_parameters_and_cleans_up() {
    if image().is_none() {
        return;
    }
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    let out = std::process::Command::new(runner())
        .args(["run-microvm", "--image-identifier"])
        .arg(&img)
        .args([
            "--run-hook-payload",
            "from the runner",
            "--idle-policy",
            "maxIdleDurationSeconds=900,suspendedDurationSeconds=300,autoResumeEnabled=true",
            "--maximum-duration-in-seconds",
            "600",
            "--execution-role-arn",
            "arn:aws:iam::123456789012:role/demo",
            "--then",
            "status,suspend,sleep=1,resume,terminate",
            "--timeout",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The example image a new user runs warns about nothing (the vsock probe lives in
    // the test image only); it ran from the image's snapshot, and the console did
    // reach stderr.
    assert!(
        stderr.contains("restored from the image's snapshot"),
        "{stderr}"
    );
    assert!(!stderr.contains("refused"), "{stderr}");
    // The run-microvm output, pretty-printed like the CLI, then one line per action.
    let end = stdout.find("\n}\n").expect("output JSON") + 3;
    let first: Value = serde_json::from_str(&stdout[..end]).unwrap();
    assert!(first["microvmId"].as_str().unwrap().starts_with("mvm-"));
    assert_eq!(first["state"], "RUNNING");
    assert_eq!(
        first["executionRoleArn"],
        "arn:aws:iam::123456789012:role/demo"
    );
    assert_eq!(first["idlePolicy"]["maxIdleDurationSeconds"], 900);
    assert_eq!(first["maximumDurationInSeconds"], 600);
    let actions: Vec<Value> = stdout[end..]
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names: Vec<&str> = actions
        .iter()
        .filter_map(|v| v["action"].as_str())
        .collect();
    assert_eq!(
        names,
        ["status", "suspend", "sleep=1", "resume", "terminate"]
    );
    assert_eq!(actions[0]["answer"]["microvmId"], first["microvmId"]);
    assert_eq!(
        actions[0]["answer"]["run"]["idlePolicy"]["maxIdleDurationSeconds"],
        900
    );
    assert_eq!(actions[1]["status"], 200);
    assert_eq!(actions[3]["status"], 200);
    // Suspended through a file, and back from it.
    assert!(
        actions[1]["savedToFile"]["bytes"].as_u64().unwrap() > 1 << 20,
        "{}",
        actions[1]
    );
    assert!(
        actions[3]["restoredFromFile"]["ms"].is_u64(),
        "{}",
        actions[3]
    );
    assert_eq!(actions[4]["answer"]["state"], "TERMINATED");
    // The application's logs were streamed.
    assert!(
        stderr.contains("guest| app| recorder: {\"hook\":\"run\""),
        "{stderr}"
    );
    assert!(stderr.contains("from the runner"));
}

#[test]
fn the_runner_leaves_no_qemu_or_backend_behind_when_killed() {
    if image().is_none() {
        return;
    }
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let mut child = std::process::Command::new(runner())
            .args(["run-microvm", "--image-identifier"])
            .arg(&img)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the run-microvm output: the guest is up.
        let mut first = [0u8; 1];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        let kids = children_named(child.id(), &["qemu-system", "vhost-device"]);
        assert_eq!(kids.len(), 2, "{name}: {kids:?}");
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let t0 = Instant::now();
        let st = child.wait().unwrap();
        if sig == libc::SIGTERM {
            assert!(st.success(), "SIGTERM ends the run cleanly: {st}");
        }
        while kids.iter().any(|p| alive(*p)) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name}: {kids:?} outlived the runner"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_runner_validates_like_the_cli() {
    let run = |args: &[&str]| {
        std::process::Command::new(runner())
            .arg("run-microvm")
            .args(args)
            .output()
            .unwrap()
    };
    // The service's 4,096 (the model's, measured enforced), refused as the service's
    // ValidationException (the agent itself would take 16,384).
    let o = run(&[
        "--image-identifier",
        "x",
        "--run-hook-payload",
        &"p".repeat(4097),
    ]);
    assert_eq!(o.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&o.stderr).contains(
        "An error occurred (ValidationException) when calling the RunMicrovm operation: 1 validation error detected: Value at 'runHookPayload' failed to satisfy constraint: Member must have length less than or equal to 4096"
    ));
    let o = run(&["--generate-cli-skeleton"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.get("runHookPayload").is_some() && v.get("idlePolicy").is_some());
    let o = run(&["--image-identifier", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(254));
    assert!(String::from_utf8_lossy(&o.stderr).contains("make rootfs"));
}

/// Lines the runner prints, collected as they come.
fn collect_lines(out: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
    within: Duration,
) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(l) = seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let left = within
            .checked_sub(t0.elapsed())
            .unwrap_or_else(|| panic!("line never came; so far:\n{}", seen.join("\n")));
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("line never came; so far:\n{}", seen.join("\n")),
        }
    }
}

/// The runner with an idle policy and the test-only lowered idle minimum (passed to
/// the agent on the kernel command line); its stdout as a stream of lines.
fn idle_runner(
    img: &Path,
    policy: &str,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = std::process::Command::new(runner())
        .args(["run-microvm", "--image-identifier"])
        .arg(img)
        .args(["--idle-policy", policy, "--test-min-idle-seconds", "0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = collect_lines(child.stdout.take().unwrap());
    (child, rx)
}

fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut h = vec![("Host", "mvm")];
    h.extend_from_slice(headers);
    let r = microvm_local::http::send(s, "GET", path, &h, b"").unwrap();
    (r.status, r.json())
}

#[test]
fn ingress_over_vsock_and_an_idle_policy_that_suspends_and_resumes() {
    if image().is_none() {
        return;
    }
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut child, rx) = idle_runner(
        &img,
        "maxIdleDurationSeconds=3,suspendedDurationSeconds=300,autoResumeEnabled=true",
        &["--endpoint-port", &port.to_string(), "--timeout", "240"],
    );
    let mut seen = Vec::new();
    wait_line(
        &rx,
        &mut seen,
        |l| l.contains("\"endpoint\""),
        Duration::from_secs(90),
    );
    wait_line(&rx, &mut seen, |l| l == "}", Duration::from_secs(5));

    // Ingress through the endpoint, real vsock, the agent, to the app's port 8080.
    let (st, v) = http_get(
        port,
        "/hello",
        &[("X-aws-proxy-port", "8080"), ("X-aws-proxy-auth", "tok")],
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["port"], 8080);
    assert_eq!(v["path"], "/hello");
    assert!(!v.to_string().contains("x-aws-proxy"), "{v}");

    // Quiet for 3 s: the agent reports idle, the runner suspends the VM.
    wait_line(
        &rx,
        &mut seen,
        |l| l.contains("\"type\":\"idle\""),
        Duration::from_secs(30),
    );
    let s = wait_line(
        &rx,
        &mut seen,
        |l| l.contains("suspend (idle)"),
        Duration::from_secs(30),
    );
    assert!(s.contains("\"status\":200"), "{s}");

    // The next client connection resumes it, and is answered once /resume answered.
    let (st, v) = http_get(port, "/after-resume", &[]);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "/after-resume");
    let r = wait_line(
        &rx,
        &mut seen,
        |l| l.contains("resume (ingress)"),
        Duration::from_secs(5),
    );
    assert!(r.contains("\"status\":200"), "{r}");
    let resumed_at = seen
        .iter()
        .position(|l| l.contains("resume (ingress)"))
        .unwrap();
    let suspended_at = seen
        .iter()
        .position(|l| l.contains("suspend (idle)"))
        .unwrap();
    assert!(suspended_at < resumed_at);

    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn zero_suspended_duration_terminates_the_vm_at_once() {
    if image().is_none() {
        return;
    }
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    let (mut child, rx) = idle_runner(
        &img,
        "maxIdleDurationSeconds=2,suspendedDurationSeconds=0,autoResumeEnabled=true",
        &["--timeout", "120"],
    );
    let mut seen = Vec::new();
    let s = wait_line(
        &rx,
        &mut seen,
        |l| l.contains("suspend (idle)"),
        Duration::from_secs(90),
    );
    assert!(s.contains("\"status\":200"), "{s}");
    let t = wait_line(
        &rx,
        &mut seen,
        |l| l.contains("terminate (suspendedDurationSeconds)"),
        Duration::from_secs(10),
    );
    assert!(t.contains("\"TERMINATED\""), "{t}");
    // Nobody asked it to stop: the runner ends because the VM powered off.
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "runner still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success());
}

/// Events of the guest from `after` on, as one page (`GET /v1/events`).
fn events(vm: &Vm) -> Vec<Value> {
    let r = vm.request("GET", "/v1/events?after=0", b"").unwrap();
    assert_eq!(r.status, 200);
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

/// The application allocates until the kernel kills it (the test image limits it to
/// 48 MiB, `memoryLimitMiB`, in a cgroup of its own): the agent survives (it is the
/// OOM killer's last choice), reports the kill as an event and as the state reason
/// `Application.OutOfMemory`, and powers the VM off in order.
#[test]
fn an_application_out_of_memory_is_killed_reported_and_the_agent_survives() {
    let Some(vm) = boot("oom") else {
        return;
    };
    let s = vm.status().unwrap();
    assert!(
        s["boot"]["failures"].as_array().unwrap().is_empty(),
        "{s:#}"
    );
    let run = json!({"microvmId": "mvm-oom", "runHookPayload": "allocate-until-killed"});
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let t0 = Instant::now();
    let (oom, exited) = loop {
        let ev = events(&vm);
        let find = |t: &str| ev.iter().find(|e| e["type"] == t).cloned();
        if let (Some(o), Some(x)) = (find("applicationOutOfMemory"), find("applicationExited")) {
            break (o, x);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no OOM events: {ev:#?}\nserial:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(oom["oomKills"].as_u64().unwrap() >= 1, "{oom}");
    assert_eq!(oom["memoryLimitMiB"], 48);
    assert_eq!(exited["stateReason"], "Application.OutOfMemory", "{exited}");
    // The agent answers while the VM reports, then powers off on its own.
    let s = vm.status().unwrap();
    assert_eq!(s["stateReason"], "Application.OutOfMemory", "{s:#}");
    assert!(s["application"]["oomKills"].as_u64().unwrap() >= 1, "{s:#}");
    assert!(vm.wait_exit(Duration::from_secs(30)), "QEMU did not exit");
    let serial = vm.serial();
    assert!(serial.contains("recorder: allocated"), "{serial}");
    assert!(serial.contains("Memory cgroup out of memory"), "{serial}");
    assert!(
        serial.contains("powering off: Application.OutOfMemory"),
        "{serial}"
    );
    assert!(serial.contains("reboot: Power down"), "{serial}");
    assert!(!serial.contains("Kernel panic"), "{serial}");
}

/// moto behind a recording proxy, and `image` booted with a restricted NIC whose
/// `10.0.2.100:4566` reaches the proxy.
fn boot_with_a_forward(image: &Image, name: &str) -> (Moto, FaultProxy, Vm) {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let opts = VmOpts {
        net: Some(NetOpts {
            forwards: vec![(4566, ([127, 0, 0, 1], proxy.port).into())],
            bridge: runner().to_path_buf(),
            open_egress: false,
        }),
        ..VmOpts::default()
    };
    let vm = Vm::boot(image, &opts, &target_dir().join("vmtest").join(name))
        .unwrap_or_else(|e| panic!("{e}"));
    (moto, proxy, vm)
}

/// A guest with a NIC and restricted egress (QEMU user-mode networking, `restrict=on`):
/// the agent configures `eth0` from the `microvm.*` parameters, the run envelope points
/// its CloudWatch client at a forwarded endpoint (`10.0.2.100:4566`, bridged per
/// connection by the runner binary to a proxy in front of moto on this machine), and
/// the application's stdout arrives byte-exact, signed with the run's access key,
/// including what it wrote right before `/suspend` and right before `/terminate`
/// (the recorder prints a line in each hook, before answering). From inside the guest
/// the forward connects; a port listening on this machine (moto's, through the gateway)
/// and an unforwarded port do not.
#[test]
fn a_guest_with_restricted_egress_ships_its_logs_through_a_forward() {
    let Some(image) = image() else {
        return;
    };
    let (moto, proxy, vm) = boot_with_a_forward(&image, "egress");
    let s = vm.status().unwrap();
    assert!(
        s["boot"]["created"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "network eth0 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3"),
        "{:#}",
        s["boot"]
    );
    assert_eq!(s["boot"]["failures"], json!([]), "{:#}", s["boot"]);

    const GROUP: &str = "/guest/egress";
    const STREAM: &str = "run-1";
    const LINES: usize = 3000;
    let run = json!({
        "microvmId": "mvm-egress",
        "runHookPayload": format!(
            "lines:{LINES} connect:10.0.2.100:4566 connect:10.0.2.2:{} connect:10.0.2.100:4567",
            moto.port
        ),
        "region": "us-east-1",
        "credentials": {"accessKeyId": "AKIDGUEST", "secretAccessKey": "guest-secret"},
        "endpoints": {"logs": "http://10.0.2.100:4566"},
        "logging": {"cloudWatch": {"logGroup": GROUP, "logStream": STREAM}},
        "clock": {"unixTimeNanos": now_nanos()},
        "entropy": entropy_b64(),
    });
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let connected = |addr: &str| {
        wait_record(&vm, |v| v["connect"] == addr)["ok"]
            .as_bool()
            .unwrap()
    };
    assert!(connected("10.0.2.100:4566"), "the forward answers");
    // Moto listens on this machine's loopback: without `restrict=on` the gateway's
    // address would reach it.
    assert!(
        !connected(&format!("10.0.2.2:{}", moto.port)),
        "restricted: the host's own listening port is not reachable"
    );
    assert!(!connected("10.0.2.100:4567"), "an unforwarded port");

    let r = vm.hook("suspend", "").unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    // Flushed before the answer: no polling.
    let got = moto.messages(GROUP, STREAM);
    let numbered: Vec<String> = (0..LINES).map(|i| format!("line {i} of {LINES}")).collect();
    let lines_in = |got: &[String]| -> Vec<String> {
        got.iter()
            .filter(|m| m.starts_with("line "))
            .cloned()
            .collect()
    };
    assert_eq!(lines_in(&got), numbered, "every line, once, in order");
    let hook_line = |got: &[String], hook: &str| {
        got.iter()
            .any(|m| m.starts_with("recorder: {") && m.contains(&format!("\"hook\":\"{hook}\"")))
    };
    assert!(
        hook_line(&got, "suspend"),
        "written right before /suspend: {got:?}"
    );

    let r = vm
        .hook(
            "resume",
            &json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()}).to_string(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(vm.wait_exit(Duration::from_secs(60)), "{}", vm.serial());
    let got = moto.messages(GROUP, STREAM);
    assert!(hook_line(&got, "resume"), "{got:?}");
    assert!(
        hook_line(&got, "terminate"),
        "written right before /terminate: {got:?}"
    );
    assert_eq!(lines_in(&got), numbered);
    let keys = proxy.access_keys.lock().unwrap().clone();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k == "AKIDGUEST"), "{keys:?}");
}

/// The runner as a user drives it: `--execution-role-arn` gives the guest credentials
/// (generated here: the test's environment holds none), `--forward` and
/// `--logs-endpoint` send the agent's log delivery to a local server through the
/// restricted NIC, the connectors are validated and echoed. Credentials that expire
/// in 20 min 10 s make the agent warn 10 s later; the runner rotates them with
/// `POST /v1/credentials`, and the delivery after that is signed with the new key.
#[test]
fn the_runner_supplies_and_rotates_role_credentials_and_forwards_egress() {
    if image().is_none() {
        return;
    }
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port);
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/test");
    let out = std::process::Command::new(runner())
        .args(["run-microvm", "--image-identifier"])
        .arg(&img)
        .args([
            "--execution-role-arn",
            "arn:aws:iam::123456789012:role/demo",
            "--egress-network-connectors",
            "arn:aws:lambda:us-east-1:123456789012:network-connector:mine",
            "--ingress-network-connectors",
            "HTTP_INGRESS",
            "--forward",
            &format!("4566=127.0.0.1:{}", proxy.port),
            "--logs-endpoint",
            "http://10.0.2.100:4566",
            "--test-credentials-seconds",
            "1210",
            "--then",
            "sleep=25,status,terminate",
            "--timeout",
            "120",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "microvm-local: execution role: credentials generated for a local server (ASIA"
        ),
        "{stderr}"
    );
    let end = stdout.find("\n}\n").expect("output JSON") + 3;
    let first: Value = serde_json::from_str(&stdout[..end]).unwrap();
    assert_eq!(
        first["egressNetworkConnectors"],
        json!(["arn:aws:lambda:us-east-1:123456789012:network-connector:mine"])
    );
    assert_eq!(first["ingressNetworkConnectors"], json!(["HTTP_INGRESS"]));
    let lines: Vec<Value> = stdout[end..]
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let rotations: Vec<&Value> = lines
        .iter()
        .filter(|v| v["action"] == "rotate credentials")
        .collect();
    assert!(!rotations.is_empty(), "{stdout}\n{stderr}");
    let rotated = rotations.last().unwrap()["accessKeyId"].as_str().unwrap();
    assert!(rotated.starts_with("ASIA"));
    let status = lines.iter().find(|v| v["action"] == "status").unwrap();
    let agent_key = status["answer"]["credentials"]["accessKeyId"]
        .as_str()
        .unwrap();
    assert!(
        rotations.iter().any(|r| r["accessKeyId"] == agent_key),
        "the agent holds a rotated key: {agent_key}"
    );
    // Delivery went through the forward, first with the run's key, at the end (the
    // terminate flush) with a rotated one.
    let keys = proxy.access_keys.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert!(distinct.len() >= 2, "{keys:?}");
    let group = "/aws/lambda-microvms/example-recorder";
    let stream = first["microvmId"].as_str().unwrap();
    let got = moto.messages(group, stream);
    assert!(
        got.iter().any(|m| m.contains("\"hook\":\"terminate\"")),
        "{got:?}"
    );
}

/// An application as image authors write them (`examples/sdk-app`): the AWS SDK for
/// Rust with its default chains and no configuration of its own finds the run's
/// credentials (the agent's metadata service) and region (the profile file the agent
/// names in `AWS_CONFIG_FILE`), and calls CloudWatch Logs on a local server through
/// the runner's forward. The request's signature names the run's access key and
/// region; the event is there to read back.
#[test]
fn an_application_using_the_aws_sdk_finds_the_runs_credentials_and_region() {
    if let Some(image) = built_image("build/sdk", Arch::X86_64) {
        sdk_app(&image, "sdk-app");
    }
}

/// The same on arm64: the SDK, rustls and ring cross-built, virtio-net on `-M virt`,
/// the metadata service and the forward.
#[test]
fn an_arm64_application_using_the_aws_sdk_finds_the_runs_credentials_and_region() {
    if let Some(image) = built_image("build/aarch64/sdk", Arch::Arm64) {
        sdk_app(&image, "sdk-app-arm64");
    }
}

fn sdk_app(image: &Image, name: &str) {
    let (moto, proxy, vm) = boot_with_a_forward(image, name);
    let run = json!({
        "microvmId": "mvm-sdk",
        "region": "eu-west-3",
        "credentials": {"accessKeyId": "AKIDSDKAPP", "secretAccessKey": "sdk-secret",
                        "sessionToken": "sdk-token"},
        "endpoints": {"logs": "http://10.0.2.100:4566"},
        "clock": {"unixTimeNanos": now_nanos()},
        "entropy": entropy_b64(),
    });
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let t0 = Instant::now();
    while !vm.serial().contains("sdk-app: {\"put\":\"ok\"") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the SDK app never wrote; serial:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        vm.serial()
            .contains("sdk-app: {\"put\":\"ok\",\"region\":\"eu-west-3\""),
        "{}",
        vm.serial()
    );
    assert_eq!(
        moto.messages_in("eu-west-3", "/sdk-app", "direct"),
        ["hello from the AWS SDK inside the guest"]
    );
    let keys = proxy.access_keys.lock().unwrap().clone();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k == "AKIDSDKAPP"), "{keys:?}");
    let scopes = proxy.scopes.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("/eu-west-3/logs/aws4_request")),
        "{scopes:?}"
    );
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(vm.wait_exit(Duration::from_secs(60)));
}

/// The image's snapshot, as `make rootfs` saved it (`microvm-local snapshot-image`).
fn snapshotted_image() -> Option<Image> {
    let image = image()?;
    assert!(
        image.snapshot.is_some(),
        "{} has no snapshot: make rootfs takes one",
        image.dir.display()
    );
    Some(image)
}

fn restore(image: &Image, name: &str, cid: u32) -> Vm {
    let opts = VmOpts {
        cid,
        ..VmOpts::default()
    };
    let vm = Vm::boot(image, &opts, &target_dir().join("vmtest").join(name))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(vm.from_snapshot, "restored, not booted");
    vm
}

/// Two MicroVMs restored from one snapshot at the same time (CIDs 3 and 4, disks of
/// their own) both take `/run` with their own payloads, draw different random bytes
/// right after it (the application's getrandom(2), which the agent's reseed with the
/// host's entropy made diverge), and read a wall clock within 50 ms of the host's
/// although the snapshot is older; terminate powers off cleanly and each disk chain
/// (overlay, frozen snapshot disk, image) checks clean.
#[test]
fn two_microvms_restored_from_one_snapshot_run_apart() {
    let Some(image) = snapshotted_image() else {
        return;
    };
    let snap = image.snapshot.clone().unwrap();
    assert!(snap.memory_snapshot_size_in_bytes > 1 << 20, "{snap:?}");
    assert!(snap.disk_snapshot_size_in_bytes > 0, "{snap:?}");
    // Restored side by side, each from its own thread (the runner keeps the VMs
    // alive whichever thread started them).
    let vms: Vec<Vm> = std::thread::scope(|s| {
        let a = s.spawn(|| restore(&image, "clone-a", 3));
        let b = s.spawn(|| restore(&image, "clone-b", 4));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    for (vm, cid) in vms.iter().zip([3, 4]) {
        // The agent announced itself again once its vsock device came back, with the
        // CID of this restore.
        assert_eq!(vm.announced["cid"], cid, "{}", vm.announced);
        let s = vm.status().unwrap();
        assert_eq!(s["state"], "PENDING", "{s:#}");
        assert_eq!(s["guest"]["cid"], cid);
        // The image-build hooks ran once, before the snapshot.
        assert_eq!(s["hooks"]["validate"]["calls"], 1, "{s:#}");
    }
    // The guest's wall clock against this machine's, from one status read: the
    // offset at the read's midpoint, and how uncertain that is (half its round trip).
    let offset = |vm: &Vm| {
        let h0 = now_ms();
        let s = vm.status().unwrap();
        let h1 = now_ms();
        let g = s["guest"]["unixTimeMs"].as_i64().expect("guest.unixTimeMs");
        (g - (h0 + h1) / 2, (h1 - h0) / 2 + 1)
    };
    let mut randoms = vec![];
    for (i, vm) in vms.iter().enumerate() {
        // Restored, the guest's clock is where it was at the save: behind by the
        // snapshot's age (at least the seconds since make rootfs took it).
        let (before, _) = offset(vm);
        assert!(
            before < -1000,
            "the restored guest clock is only {before} ms off (snapshot taken {})",
            snap.created_at
        );
        let payload = format!("clone {i}: {}", "✓".repeat(i + 1));
        let run = json!({"microvmId": format!("mvm-clone-{i}"), "runHookPayload": payload,
                         "clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
        let sent_at = now_ms();
        let r = vm.hook("run", &run.to_string()).unwrap();
        let answered_at = now_ms();
        assert_eq!(r.status, 200, "{}", r.json());
        let rec = wait_record(vm, |v| v["hook"] == "run");
        assert_eq!(rec["runHookPayload"], payload);
        let t = rec["t"].as_i64().unwrap();
        assert!(
            t >= sent_at - 50 && t <= answered_at + 50,
            "guest clock {t} vs host window [{sent_at}, {answered_at}] (snapshot taken {})",
            snap.created_at
        );
        let (after, uncertainty) = offset(vm);
        assert!(
            after.abs() <= 50 + uncertainty,
            "guest clock {after} ms off after /run (+-{uncertainty} ms; {before} ms before)"
        );
        randoms.push(rec["random"].as_str().unwrap().to_string());
        // The divergence is the agent's doing: it reseeded with the run's entropy.
        assert_eq!(vm.status().unwrap()["machine"]["entropyReseeds"], 1);
    }
    assert_eq!(randoms[0].len(), 32, "{randoms:?}");
    assert_ne!(randoms[0], randoms[1], "clones drew the same random bytes");
    for vm in &vms {
        let r = vm.hook("terminate", "").unwrap();
        assert_eq!(r.status, 200, "{}", r.json());
        assert!(vm.wait_exit(Duration::from_secs(30)), "QEMU did not exit");
        let serial = vm.serial();
        assert!(serial.contains("reboot: Power down"), "{serial}");
        assert!(!serial.contains("Kernel panic"), "{serial}");
        let report = microvm_local::vm::snapshot::check_disk(
            &vm.dir.join("disk.qcow2"),
            &vm.dir.join("flat.raw"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            report.contains("clean") || report.contains("files"),
            "{report}"
        );
    }
}

/// Suspend and resume through a file, three times, on a MicroVM restored from the
/// snapshot and shipping its logs through a forward: while suspended no QEMU runs
/// (no CPU, no guest memory on the host) and the memory is in a file; after each
/// resume the application is the same process; every line it wrote, including the
/// ones inside each `/suspend` and `/resume` and a line every 10 ms throughout (held
/// from `/suspend` to `/resume`), is in CloudWatch Logs once, in order.
#[test]
fn suspend_and_resume_through_a_file_keep_the_application_and_its_logs() {
    let Some(image) = snapshotted_image() else {
        return;
    };
    let (moto, _proxy, vm) = boot_with_a_forward(&image, "file-suspend");
    assert!(vm.from_snapshot);
    const GROUP: &str = "/guest/snapshots";
    const STREAM: &str = "cycles";
    const LINES: usize = 1000;
    let run = json!({
        "microvmId": "mvm-cycles",
        // A line every 10 ms throughout: between /suspend and the save, while held,
        // and right after the restore.
        "runHookPayload": format!("lines:{LINES} tick:10"),
        "region": "us-east-1",
        "credentials": {"accessKeyId": "AKIDCYCLES", "secretAccessKey": "s"},
        "endpoints": {"logs": "http://10.0.2.100:4566"},
        "logging": {"cloudWatch": {"logGroup": GROUP, "logStream": STREAM}},
        "clock": {"unixTimeNanos": now_nanos()},
        "entropy": entropy_b64(),
    });
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let pid = vm.status().unwrap()["application"]["pid"].clone();
    assert!(pid.as_u64().is_some());
    for cycle in 0..3 {
        let r = vm.hook("suspend", "").unwrap();
        assert_eq!(r.status, 200, "{}", r.json());
        let saved = vm.suspend_to_file().unwrap_or_else(|e| panic!("{e}"));
        assert!(saved.bytes > 1 << 20, "{saved:?}");
        assert_eq!(vm.qemu_pid(), None, "no QEMU while suspended");
        assert!(vm.dir.join("suspended.mem.zst").is_file());
        assert!(
            !vm.wait_exit(Duration::from_millis(100)),
            "suspended is not off"
        );
        std::thread::sleep(Duration::from_secs(2));
        vm.resume_from_file().unwrap_or_else(|e| panic!("{e}"));
        assert!(!vm.dir.join("suspended.mem.zst").exists());
        let body = json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
        let r = vm.hook("resume", &body.to_string()).unwrap();
        assert_eq!(r.status, 200, "cycle {cycle}: {}", r.json());
        let s = vm.status().unwrap();
        assert_eq!(s["application"]["pid"], pid, "cycle {cycle}");
        assert_eq!(s["application"]["starts"], 1, "cycle {cycle}");
    }
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(vm.wait_exit(Duration::from_secs(30)));
    let got = moto.messages(GROUP, STREAM);
    let numbered: Vec<String> = (0..LINES).map(|i| format!("line {i} of {LINES}")).collect();
    let lines: Vec<String> = got
        .iter()
        .filter(|m| m.starts_with("line "))
        .cloned()
        .collect();
    assert_eq!(lines, numbered, "every line, once, in order");
    let ticks: Vec<u64> = got
        .iter()
        .filter_map(|m| m.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect();
    // At least a second's worth (the guest's sleeps run long under emulation).
    assert!(
        ticks.len() > 100,
        "ticks through three cycles: {}",
        ticks.len()
    );
    let want: Vec<u64> = (0..ticks.len() as u64).collect();
    assert_eq!(ticks, want, "no tick lost, none twice, in order");
    let hooks: Vec<String> = got
        .iter()
        .filter_map(|m| m.strip_prefix("recorder: "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter_map(|v| v["hook"].as_str().map(str::to_string))
        .collect();
    // What the application wrote during the image build (before the snapshot) was
    // still buffered in the snapshot's memory, so it ships with this run's logs.
    assert_eq!(
        hooks,
        [
            "ready",
            "validate",
            "run",
            "suspend",
            "resume",
            "suspend",
            "resume",
            "suspend",
            "resume",
            "terminate"
        ],
        "{got:?}"
    );
    let serial = vm.serial();
    assert!(serial.contains("reboot: Power down"), "{serial}");
    microvm_local::vm::snapshot::check_disk(&vm.dir.join("disk.qcow2"), &vm.dir.join("flat.raw"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_runners_exec_cp_and_shell_as_a_person_uses_them() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    if image().is_none() {
        return;
    }
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    let mut vm = std::process::Command::new(runner())
        .args(["run-microvm", "--image-identifier"])
        .arg(&img)
        .args([
            "--ingress-network-connectors",
            "SHELL_INGRESS",
            "--interactive",
            "--timeout",
            "180",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(vm.stdout.take().unwrap()).lines();
    let mut first = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        first.push_str(&l);
        first.push('\n');
        if l == "}" {
            break;
        }
    }
    let first: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    let id = first["microvmId"].as_str().unwrap().to_string();

    // One-shot exec: the remote exit code is the runner's.
    let st = std::process::Command::new(runner())
        .args([
            "exec",
            "--microvm-identifier",
            &id,
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3));

    // cp in and out keeps modes.
    let dir = scratch("runner-cp");
    std::fs::create_dir_all(dir.join("tree/sub")).unwrap();
    std::fs::write(dir.join("tree/sub/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.join("tree/sub/tool"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    let cp = |src: String, dst: String| {
        let st = std::process::Command::new(runner())
            .args(["cp", &src, &dst])
            .status()
            .unwrap();
        assert!(st.success(), "cp {src} {dst}");
    };
    cp(
        dir.join("tree").display().to_string(),
        format!("{id}:/tmp/"),
    );
    std::fs::create_dir_all(dir.join("back")).unwrap();
    cp(
        format!("{id}:/tmp/tree"),
        dir.join("back").display().to_string(),
    );
    let mode = std::fs::metadata(dir.join("back/tree/sub/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o751);
    assert_eq!(
        std::fs::read(dir.join("back/tree/sub/tool")).unwrap(),
        b"#!/bin/sh\n"
    );

    // The interactive terminal, driven through tmux as a person would.
    let shell = format!(
        "{} shell --microvm-identifier {id}; echo shell-exit=$?; sleep 60",
        runner().display()
    );
    let result = in_tmux(&shell, terminal_session);
    let stdin = vm.stdin.as_mut().unwrap();
    writeln!(stdin, "terminate").unwrap();
    drop(vm.stdin.take());
    let st = vm.wait().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert!(st.success());
}
