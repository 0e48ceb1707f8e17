//! End to end: the real image (`make rootfs`) booted under QEMU, driven over real
//! vsock through vhost-device-vsock's hybrid socket.
//!
//! Skipped, with the reason, when QEMU, the backend or the image are missing; CI
//! installs and builds all three (`make setup rootfs`) so there it always runs.

use microvm_tests::vm::{tools_available, Image, Vm, VmOpts};
use microvm_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn image() -> Option<Image> {
    if let Err(e) = tools_available() {
        eprintln!("SKIPPED: {e}");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/example");
    match Image::open(&dir) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

fn boot(name: &str) -> Option<Vm> {
    let image = image()?;
    let dir = target_dir().join("vmtest").join(name);
    Some(Vm::boot(&image, &VmOpts::default(), &dir).unwrap_or_else(|e| panic!("{e}")))
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

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn entropy() -> String {
    // 48 bytes of host randomness, base64.
    let mut b = [0u8; 48];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    b.chunks(3)
        .flat_map(|c| {
            let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
            (0..4).map(move |i| A[(n >> (18 - 6 * i) & 63) as usize] as char)
        })
        .collect()
}

#[test]
fn a_real_guest_runs_suspends_resumes_and_powers_off() {
    let Some(mut vm) = boot("lifecycle") else {
        return;
    };
    eprintln!("guest announced after {:?}: {}", vm.boot_time, vm.announced);
    assert_eq!(vm.announced["event"], "ready");
    assert_eq!(vm.announced["cid"], 3);

    // Status over real vsock.
    let s = vm.status().unwrap();
    assert_eq!(s["state"], "PENDING");
    assert_eq!(s["role"], "guest");
    assert_eq!(s["imageName"], "example-recorder");
    assert_eq!(s["guest"]["cid"], 3);
    assert!(
        s["boot"]["failures"].as_array().unwrap().is_empty(),
        "{s:#}"
    );

    // Image build hooks, then /run with a payload that must arrive byte-exact.
    let t0 = Instant::now();
    while vm.hook("ready", "").unwrap().status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(vm.hook("validate", "").unwrap().status, 200);
    let payload = "héllo \"guest\"\n\t✓ \\ {\"nested\":[1,2]}\r\n".repeat(100);
    let run = json!({"microvmId": "mvm-e2e-1", "runHookPayload": payload,
                     "clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy()});
    let r = vm.hook("run", &run.to_string()).unwrap();
    assert_eq!(r.status, 200, "{}", r.json());
    let got = wait_record(&vm, |v| v["hook"] == "run");
    assert_eq!(got["microvmId"], "mvm-e2e-1");
    assert_eq!(got["runHookPayload"].as_str().unwrap(), payload);

    // A connection from a non-host CID (the guest's own loopback, CID 1) is refused.
    let probe = wait_record(&vm, |v| v.get("vsockProbe").is_some());
    assert_eq!(probe["vsockProbe"]["answered"], false, "{probe}");
    assert!(vm
        .serial()
        .contains("refused control connection from a CID that is not the host"));

    // Suspend, pause the VM for 30 s, continue, resume with the host's clock.
    let r = vm.hook("suspend", "").unwrap();
    assert_eq!(r.status, 200);
    vm.qmp("stop").unwrap();
    std::thread::sleep(Duration::from_secs(30));
    vm.qmp("cont").unwrap();
    let resume = json!({"clock": {"unixTimeNanos": now_nanos()}, "entropy": entropy()});
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
