//! Images for real applications: a Debian base with a language runtime plus the
//! author's code (`make python-image node-image`), booted under QEMU and driven over
//! real vsock. The Python example implements the six hooks with the standard library
//! only; its test variants (`rootfs/python-test`, `rootfs/python-all`) also answer
//! `GET /privileges`, where the application reports from inside what the kernel lets
//! it do.

use microvm_local::host::{entropy_b64, now_nanos};
use microvm_local::http;
use microvm_local::vm::{Arch, Image, Vm, VmOpts};
use microvm_protocol::ports;
use microvm_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn image(rel: &str) -> Option<Image> {
    built_image(rel, Arch::X86_64)
}

fn boot(image: &Image, name: &str, cold: bool) -> Vm {
    let opts = VmOpts {
        cold_boot: cold,
        ..VmOpts::default()
    };
    let dir = target_dir().join("vmtest").join(name);
    Vm::boot(image, &opts, &dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A request to the application's port 8080 through the agent's ingress.
fn ingress(vm: &Vm, method: &str, path: &str, body: &[u8]) -> http::Reply {
    let s = vm.connect(ports::INGRESS).expect("ingress over vsock");
    http::send(
        s,
        method,
        path,
        &[("Host", "mvm"), ("X-aws-proxy-port", "8080")],
        body,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}; serial:\n{}", vm.serial()))
}

/// A payload that JSON, HTTP and a language runtime's strings could each mangle.
fn payload() -> String {
    "héllo \"guest\"\n\t✓ \\ {\"nested\":[1,2]} 🦀\r\n\u{1}".repeat(40)
}

/// /run with the payload, then the application's own copy of it, read back through
/// ingress, must be the same bytes.
fn run_and_read_back(vm: &Vm, id: &str) {
    let payload = payload();
    let run = json!({"microvmId": id, "runHookPayload": payload,
                     "clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy_b64()});
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["state"], "RUNNING");
    let got = ingress(vm, "GET", "/payload", b"");
    assert_eq!(got.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        payload,
        "the payload byte-exact"
    );
    assert_eq!(got.body, payload.as_bytes());
}

fn terminate(vm: &Vm) {
    let r = vm.hook("terminate", "").unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["state"], "TERMINATED");
    assert!(vm.wait_exit(Duration::from_secs(30)), "QEMU did not exit");
    let serial = vm.serial();
    assert!(serial.contains("reboot: Power down"), "{serial}");
    assert!(!serial.contains("Kernel panic"), "{serial}");
}

/// The application's report of its own privileges.
fn privileges(vm: &Vm) -> Value {
    let r = ingress(vm, "GET", "/privileges", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Cold boot: the kernel, the agent, then a Python interpreter that takes a while
/// under emulation, which `/ready` waits out; then the whole life of a run.
#[test]
fn the_python_example_boots_runs_serves_logs_and_powers_off_as_its_user() {
    let Some(image) = image("build/python-test") else {
        return;
    };
    assert_eq!(image.minimum_memory_mib, Some(256));
    let vm = boot(&image, "python", true);
    assert!(!vm.from_snapshot);
    assert_eq!(vm.memory_mib(), 256, "the image's minimum sizes the guest");

    // /ready: 503 or a retry inside the agent until the interpreter listens.
    let t0 = Instant::now();
    let mut answers = Vec::new();
    loop {
        let r = vm.hook("ready", "").unwrap();
        answers.push(r.status);
        if r.status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never ready: {answers:?}; serial:\n{}",
            vm.serial()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The test image's application takes 2 s (STARTUP_SECONDS) before it serves, and
    // says so: /ready answered "not yet" at least once before its 200.
    assert_eq!(answers.first(), Some(&503), "{answers:?}");
    assert_eq!(answers.last(), Some(&200));
    assert_eq!(vm.hook("validate", "").unwrap().status, 200);
    let s = vm.status().unwrap();
    assert_eq!(s["imageName"], "example-python");
    assert!(
        s["boot"]["failures"].as_array().unwrap().is_empty(),
        "{s:#}"
    );

    run_and_read_back(&vm, "mvm-python-1");
    // Ingress reaches its HTTP server both ways.
    let echo = ingress(&vm, "POST", "/echo", "ping ✓".as_bytes());
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body, "ping ✓".as_bytes());

    // Its stdout reached the log pipeline (counted, and mirrored to the console).
    let s = vm.status().unwrap();
    assert!(
        s["logs"]["counters"]["capturedEvents"].as_u64().unwrap() >= 2,
        "{:#}",
        s["logs"]
    );
    let serial = vm.serial();
    assert!(
        serial.contains("run microvmId=mvm-python-1"),
        "the app's line on the console; serial:\n{serial}"
    );

    // As the configured user, without what the default set denies.
    let p = privileges(&vm);
    assert_eq!(p["uid"], 1000, "{p:#}");
    assert_eq!(p["gid"], 1000);
    assert_eq!(p["home"], "/home/app");
    assert_eq!(p["cwd"], "/app");
    assert_eq!(p["capEff"], "0000000000000000");
    assert_eq!(p["capPrm"], "0000000000000000");
    assert_eq!(p["capAmb"], "0000000000000000");
    assert_eq!(p["capBnd"], "00000000a80425fb");
    assert_eq!(p["noNewPrivs"], 1);
    assert_eq!(p["settimeofday"], "EPERM");
    // cgroupfs and /proc/sys are root's files, and read-only besides.
    assert_eq!(p["cgroupWrite"], "EACCES");
    // A create asks for write access to the mount before it checks the directory's
    // mode: the read-only view answers first.
    assert_eq!(p["runMicrovmWrite"], "EROFS");
    assert_eq!(p["sysctlWrite"], "EACCES");
    assert_eq!(p["netAdmin"], "EPERM");
    assert_eq!(p["tmpWritable"], true);
    assert_eq!(p["pid1Visible"], false);
    assert_eq!(p["modprobe"], "\n", "module autoload is off");
    let st = &vm.status().unwrap()["application"]["privileges"];
    assert_eq!(st["uid"], 1000);
    assert_eq!(st["capabilities"], json!([]));

    terminate(&vm);
}

/// `additionalOsCapabilities: ["ALL"]` as root: the clock may be set, the guest's
/// network, mounts and cgroup limits still may not. Restored from the image's
/// snapshot, as every run is.
#[test]
fn with_all_capabilities_the_python_example_may_set_the_clock_but_not_take_the_guest() {
    let Some(image) = image("build/python-all") else {
        return;
    };
    let vm = boot(&image, "python-all", false);
    assert!(vm.from_snapshot, "make python-image snapshots it");
    run_and_read_back(&vm, "mvm-python-all");
    let p = privileges(&vm);
    assert_eq!(p["uid"], 0, "{p:#}");
    // Kernel 6.1: capabilities 0-40, less the twelve withheld: NET_ADMIN, SYS_MODULE,
    // SYS_RAWIO, SYS_PTRACE, SYS_ADMIN, SYS_BOOT, SYS_NICE, SYS_RESOURCE,
    // AUDIT_CONTROL, SYSLOG, PERFMON and BPF.
    let withheld = [12, 16, 17, 19, 21, 22, 23, 24, 30, 34, 38, 39]
        .iter()
        .fold(0u64, |m, c| m | 1 << c);
    let want = format!("{:016x}", ((1u64 << 41) - 1) & !withheld);
    assert_eq!(p["capEff"], want);
    assert_eq!(p["capBnd"], want);
    assert_eq!(p["noNewPrivs"], 1);
    assert_eq!(p["settimeofday"], "ok");
    assert_eq!(p["cgroupWrite"], "EROFS");
    assert_eq!(p["runMicrovmWrite"], "EROFS");
    assert_eq!(p["sysctlWrite"], "EROFS");
    assert_eq!(p["netAdmin"], "EPERM");
    assert_eq!(p["pid1Visible"], false);
    terminate(&vm);
}

/// The Node.js example: the same hook contract with Node's http module.
#[test]
fn the_node_example_runs_and_serves_the_payload_byte_exact() {
    let Some(image) = image("build/node") else {
        return;
    };
    assert_eq!(image.minimum_memory_mib, Some(256));
    let vm = boot(&image, "node", false);
    assert!(vm.from_snapshot, "make node-image snapshots it");
    assert_eq!(vm.memory_mib(), 256);
    run_and_read_back(&vm, "mvm-node-1");
    let s = vm.status().unwrap();
    assert_eq!(s["imageName"], "example-node");
    assert_eq!(s["application"]["privileges"]["uid"], 1000);
    terminate(&vm);
}
