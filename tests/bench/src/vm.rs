//! The real guest: QEMU (TCG) boots of the example image, timed from outside (QEMU
//! start to announce, to the first status over vsock) and inside (the guest's boot
//! clock on the console).

use crate::report::{ms, pct};
use crate::Opts;
use microvm_local::vm::{tools_available_for, Image, Vm, VmOpts};
use std::path::Path;
use std::time::Duration;

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
        let vm = Vm::boot(&img, &VmOpts::default(), &dir).expect("boot");
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
