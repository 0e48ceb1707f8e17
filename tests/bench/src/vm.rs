//! The real guest: QEMU (TCG) boots of the example image, timed from outside (QEMU
//! start to announce, to the first status over vsock) and inside (the guest's boot
//! clock on the console).

use crate::report::{ms, pct};
use crate::Opts;
use microvm_local::vm::{tools_available_for, Image, Vm, VmOpts};
use std::path::Path;
use std::time::{Duration, Instant};

/// Seconds on the guest's boot clock of the first console line containing `what`.
fn stamp(serial: &str, what: &str) -> Option<f64> {
    let line = serial.lines().find(|l| l.contains(what))?;
    let inner = line.split_once('[')?.1.split_once(']')?.0;
    inner.trim().parse().ok()
}

pub fn bench(image: &Path, o: &Opts) -> String {
    let img = Image::open(image).expect("image");
    if let Err(e) = tools_available_for(img.arch) {
        return format!("\nreal guest: skipped ({e})\n");
    }
    let (mut announce, mut first_rt, mut agent_share, mut kernel_to_agent) =
        (vec![], vec![], vec![], vec![]);
    let mut used_kib = 0;
    for n in 0..o.vm_boots {
        let dir = o.out.join(format!("vm-{n}"));
        let cold = VmOpts {
            cold_boot: true,
            ..VmOpts::default()
        };
        let vm = Vm::boot(&img, &cold, &dir).expect("boot");
        announce.push(vm.boot_time);
        let s = vm.status().expect("status over vsock");
        first_rt.push(vm.started.elapsed());
        if n == 0 {
            let g = &s["guest"];
            used_kib =
                g["memTotalKiB"].as_u64().unwrap_or(0) - g["memAvailableKiB"].as_u64().unwrap_or(0);
        }
        let serial = vm.serial();
        if let (Some(a), Some(b)) = (
            stamp(&serial, "microvm-agent starting"),
            stamp(&serial, "control channel ready"),
        ) {
            agent_share.push(Duration::from_secs_f64(b - a));
            kernel_to_agent.push(Duration::from_secs_f64(a));
        }
        let _ = vm.hook("terminate", "");
    }
    let med = |v: &mut Vec<Duration>| {
        if v.is_empty() {
            f64::NAN
        } else {
            ms(pct(v, 0.5))
        }
    };
    let size = std::fs::metadata(&img.rootfs).map(|m| m.len()).unwrap_or(0);
    let used = std::process::Command::new("du")
        .args(["-sk"])
        .arg(image.join("rootfs"))
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    format!(
        "\nreal guest ({}, QEMU TCG, 128 MiB, 1 vCPU; median of {} boots):\n\
         - QEMU start to the agent's vsock announcement: {:.0} ms\n\
         - QEMU start to the first /v1/status answered over vsock: {:.0} ms\n\
         - guest boot clock at the agent's first log line (kernel + rootfs mount): {:.0} ms\n\
         - agent's own share, first log line to control-ready (guest CLOCK_BOOTTIME, includes loading the image's modules): {:.0} ms\n\
         - image: rootfs.ext4 {} KiB ({} KiB of files), agent + app + modules\n\
         - guest memory in use after boot (MemTotal - MemAvailable): {} KiB\n",
        img.arch.model_name(),
        o.vm_boots,
        med(&mut announce),
        med(&mut first_rt),
        med(&mut kernel_to_agent),
        med(&mut agent_share),
        size / 1024,
        used,
        used_kib
    )
}

/// QEMU start to `/run` answered, `o.vm_boots` times each way, interleaved: cold
/// (boot, the image-build hooks as the runner plays them, `/run`) and restored from
/// the image's snapshot when it has one (empty otherwise).
fn cold_and_restored(img: &Image, o: &Opts, prefix: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (mut cold, mut restored) = (vec![], vec![]);
    for n in 0..o.vm_boots {
        let t0 = Instant::now();
        let opts = VmOpts {
            cold_boot: true,
            ..VmOpts::default()
        };
        let dir = o.out.join(format!("{prefix}cold-{n}"));
        let vm = Vm::boot(img, &opts, &dir).expect("cold boot");
        let limits = microvm_local::vm::snapshot::build_hook_timeouts(&img.dir);
        microvm_local::vm::snapshot::image_build_hooks(&vm, limits, || false).expect("hooks");
        run_hook(&vm);
        cold.push(t0.elapsed());
        let _ = vm.hook("terminate", "");
        drop(vm);
        if img.snapshot.is_some() {
            let t0 = Instant::now();
            let dir = o.out.join(format!("{prefix}restored-{n}"));
            let vm = Vm::boot(img, &VmOpts::default(), &dir).expect("restore");
            run_hook(&vm);
            restored.push(t0.elapsed());
            let _ = vm.hook("terminate", "");
        }
    }
    (cold, restored)
}

/// `/run` with the host's clock and entropy, timed to its answer.
fn run_hook(vm: &Vm) {
    let body = serde_json::json!({
        "microvmId": microvm_local::host::microvm_id(),
        "runHookPayload": "bench",
        "clock": {"unixTimeNanos": microvm_local::host::now_nanos()},
        "entropy": microvm_local::host::entropy_b64(),
    });
    let r = vm.hook("run", &body.to_string()).expect("/run");
    assert_eq!(r.status, 200, "/run: {}", r.json());
}

/// Snapshots (x86_64 images `make rootfs` snapshotted): QEMU start to `/run`
/// answered, cold (boot, image-build hooks, run) against restored (load, vsock
/// hotplug, the agent's announcement, run), interleaved; then suspend and resume
/// through a file on one restored VM.
pub fn snapshots(image: &Path, o: &Opts) -> String {
    let img = Image::open(image).expect("image");
    let Some(snap) = img.snapshot.clone() else {
        return "\nsnapshots: the image has none (x86_64 images get one from make rootfs)\n".into();
    };
    let (mut cold, mut restored) = cold_and_restored(&img, o, "");
    let vm = Vm::boot(&img, &VmOpts::default(), &o.out.join("cycles")).expect("restore");
    run_hook(&vm);
    let (mut suspend, mut save, mut resume, mut sizes) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.vm_boots {
        let t0 = Instant::now();
        assert_eq!(vm.hook("suspend", "").expect("/suspend").status, 200);
        let saved = vm.suspend_to_file().expect("save");
        suspend.push(t0.elapsed());
        save.push(saved.took);
        sizes.push(saved.bytes);
        let t0 = Instant::now();
        vm.resume_from_file().expect("restore");
        let body = serde_json::json!({
            "clock": {"unixTimeNanos": microvm_local::host::now_nanos()},
            "entropy": microvm_local::host::entropy_b64(),
        });
        assert_eq!(
            vm.hook("resume", &body.to_string())
                .expect("/resume")
                .status,
            200
        );
        resume.push(t0.elapsed());
    }
    let _ = vm.hook("terminate", "");
    let (c, r) = (ms(pct(&mut cold, 0.5)), ms(pct(&mut restored, 0.5)));
    sizes.sort_unstable();
    format!(
        "\nsnapshots (QEMU TCG, {} MiB; medians of {} each, cold and restored interleaved):\n\
         - image snapshot (make rootfs): memory {} KiB (zstd -1), disk overlay {} KiB, saved in {} ms\n\
         - QEMU start to /run answered: cold {c:.0} ms (boot, /ready, /validate, /run), restored {r:.0} ms: {:.2}x\n\
         - suspend through a file (/suspend, vsock unplug, save, QEMU ends): {:.0} ms, of which the save {:.0} ms; memory file {} KiB\n\
         - resume from the file (load, vsock hotplug, announcement, /resume): {:.0} ms\n",
        snap.memory_mib,
        o.vm_boots,
        snap.memory_snapshot_size_in_bytes / 1024,
        snap.disk_snapshot_size_in_bytes / 1024,
        snap.save_ms,
        r / c,
        ms(pct(&mut suspend, 0.5)),
        ms(pct(&mut save, 0.5)),
        sizes.get(sizes.len() / 2).copied().unwrap_or(0) / 1024,
        ms(pct(&mut resume, 0.5)),
    )
}

/// An image built from a Debian base (`make python-image node-image`): its sizes and
/// build times as the build recorded them (`base.json`, `manifest.json`), and QEMU
/// start to `/run` answered, cold (boot, `/ready` polled until the runtime listens,
/// `/validate`, `/run`) and restored from its snapshot, interleaved.
pub fn base_image(image: &Path, o: &Opts) -> String {
    let img = Image::open(image).expect("image");
    if let Err(e) = tools_available_for(img.arch) {
        return format!("\n{}: skipped ({e})\n", image.display());
    }
    let manifest: serde_json::Value = std::fs::read(image.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (mut cold, mut restored) = cold_and_restored(&img, o, "base-");
    let kib = |p: &Path| std::fs::metadata(p).map(|m| m.len() / 1024).unwrap_or(0);
    let c = ms(pct(&mut cold, 0.5));
    let r = if restored.is_empty() {
        "no snapshot".to_string()
    } else {
        let r = ms(pct(&mut restored, 0.5));
        format!("{r:.0} ms ({:.2}x of cold)", r / c)
    };
    let field = |k: &str| match manifest.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "?".into(),
    };
    let number = |k: &str| manifest.get(k).and_then(|v| v.as_u64());
    let snapshot = match &img.snapshot {
        Some(s) => format!(
            "memory {} KiB (zstd -1), disk overlay {} KiB, saved in {} ms",
            s.memory_snapshot_size_in_bytes / 1024,
            s.disk_snapshot_size_in_bytes / 1024,
            s.save_ms
        ),
        None => "none".into(),
    };
    format!(
        "\nbase image {} ({}; QEMU TCG, {} MiB; medians of {}):\n\
         - base {}: {} of files (base.json), built in {} s\n\
         - image: {} of files, rootfs.ext4 {} KiB, built in {} s (base + code + modules, without the snapshot)\n\
         - snapshot: {snapshot}\n\
         - QEMU start to /run answered: cold {c:.0} ms (boot, /ready until the runtime listens, /validate, /run), restored {r}\n",
        image.display(),
        field("baseRuntime"),
        img.minimum_memory_mib.unwrap_or(128).max(128),
        o.vm_boots,
        field("base"),
        human(number("baseSizeBytes")),
        field("baseBuildSeconds"),
        human(number("filesBytes")),
        kib(&img.rootfs),
        field("buildSeconds"),
    )
}

fn human(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MB", b as f64 / 1e6),
        None => "?".into(),
    }
}
