//! Image snapshots, as the platform makes them: boot the image once, answer its
//! image-build hooks (`/ready`, `/validate`), save memory and freeze the disk. Every
//! MicroVM of the image then starts from that snapshot, on a disk overlay of its own.
//!
//! Files beside the image (`make rootfs` writes the image, then this):
//! `snapshot-memory.zst` (device and memory state, zstd) and `snapshot-disk.qcow2`
//! (the disk as it was, over `rootfs.ext4`); `manifest.json` records them.

use super::{Image, Layout, Vm, VmOpts};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MEMORY_FILE: &str = "snapshot-memory.zst";
const DISK_FILE: &str = "snapshot-disk.qcow2";

/// What `manifest.json` records of a snapshot (sizes by the service model's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// File names, in the image directory.
    pub memory: String,
    pub disk: String,
    pub memory_snapshot_size_in_bytes: u64,
    pub disk_snapshot_size_in_bytes: u64,
    /// The guest memory it was taken with; a restore must use the same.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,
    /// Frozen with the memory: a restore passes it unchanged.
    pub kernel_command_line: String,
    pub created_at: String,
    pub save_ms: u64,
}

/// A qcow2 overlay at `path` over `backing` (format `fmt`): a VM's own disk.
pub fn overlay(backing: &Path, fmt: &str, path: &Path) -> Result<(), String> {
    let backing =
        std::fs::canonicalize(backing).map_err(|e| format!("{}: {e}", backing.display()))?;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(&backing)
        .arg(path))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| {
        format!(
            "{:?}: {e} (`make setup` installs qemu-utils)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The image-build hooks' time limits from the image's config (`image.json` beside
/// the image), 60 s each when it says nothing.
pub fn build_hook_timeouts(image_dir: &Path) -> (Duration, Duration) {
    let cfg: serde_json::Value = std::fs::read_to_string(image_dir.join("image.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let hooks = &cfg["hooks"]["microvmImageHooks"];
    let secs = |k: &str| Duration::from_secs(hooks[k].as_u64().unwrap_or(60).clamp(1, 3600));
    (
        secs("readyTimeoutInSeconds"),
        secs("validateTimeoutInSeconds"),
    )
}

/// The image-build phase: `/ready`, then `/validate`, each polled every 100 ms while
/// the application answers 503, up to its time limit. An error says which hook and
/// what it answered.
pub fn image_build_hooks(
    vm: &Vm,
    limits: (Duration, Duration),
    stopping: impl Fn() -> bool,
) -> Result<(), String> {
    for (hook, limit) in [("ready", limits.0), ("validate", limits.1)] {
        let t0 = Instant::now();
        loop {
            match vm.hook(hook, "") {
                Ok(r) if r.status == 200 => break,
                Ok(r) if r.status == 503 && t0.elapsed() < limit => {}
                Ok(r) => return Err(format!("/{hook} answered {}: {}", r.status, r.json())),
                Err(e) => return Err(format!("/{hook}: {e}")),
            }
            if stopping() {
                return Err("stopped".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Boot `image_dir`'s image cold, run its image-build hooks, save the snapshot
/// beside it and record it in `manifest.json`. `scratch` holds the VM meanwhile;
/// when the build fails after the guest booted, its console is copied to `console`
/// (the VM's directory goes with it).
pub fn build(image_dir: &Path, scratch: &Path, console: Option<&Path>) -> Result<Snapshot, String> {
    let mut image = Image::open(image_dir)?;
    image.snapshot = None;
    // A stale snapshot belongs to a disk that is no longer there.
    forget(image_dir)?;
    let opts = VmOpts {
        cold_boot: true,
        ..VmOpts::default()
    };
    let r = (|| {
        let vm = Vm::boot(&image, &opts, scratch)?;
        let snapshot = take(&vm, image_dir);
        if let (Err(_), Some(c)) = (&snapshot, console) {
            let _ = std::fs::copy(vm.dir.join("serial.log"), c);
        }
        drop(vm);
        let snapshot = snapshot?;
        record(image_dir, Some(&snapshot))?;
        Ok(snapshot)
    })();
    if r.is_err() {
        // Nothing half-made stays beside the image.
        let _ = forget(image_dir);
        let _ = std::fs::remove_file(image_dir.join(MEMORY_FILE).with_extension("partial"));
    }
    r
}

/// The image-build hooks on a booted `vm`, then its snapshot saved beside the image.
fn take(vm: &Vm, image_dir: &Path) -> Result<Snapshot, String> {
    if vm.layout() != Layout::Snapshot {
        return Err(format!(
            "{}: no initrd.cpio or not x86_64: this image boots only cold",
            image_dir.display()
        ));
    }
    let memory = image_dir.join(MEMORY_FILE);
    let saved = until_stopped(vm, || {
        image_build_hooks(vm, build_hook_timeouts(image_dir), crate::signals::stopping)?;
        vm.save(&memory)
    })?;
    // The VM's overlay, frozen, is the image's disk snapshot; its backing file is
    // named relative to it, so the image directory can move.
    let disk = image_dir.join(DISK_FILE);
    let overlay = vm.dir.join("disk.qcow2");
    // A scratch on another file system (a short path under /tmp: socket paths
    // are limited to 107 bytes) is copied from: the overlay is small.
    std::fs::rename(&overlay, &disk)
        .or_else(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => std::fs::copy(&overlay, &disk).map(drop),
            _ => Err(e),
        })
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    run(Command::new("qemu-img")
        .args([
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "rootfs.ext4",
        ])
        .arg(&disk))?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let snapshot = Snapshot {
        memory: MEMORY_FILE.into(),
        disk: DISK_FILE.into(),
        memory_snapshot_size_in_bytes: saved.bytes,
        disk_snapshot_size_in_bytes: size(&disk),
        memory_mib: vm.memory_mib(),
        kernel_command_line: vm.launch.append.clone(),
        created_at: crate::host::now_rfc3339(),
        save_ms: saved.took.as_millis() as u64,
    };
    Ok(snapshot)
}

/// Run `work` on `vm`, and end the VM if the process is told to stop meanwhile: a
/// hook the application does not answer holds its call for up to the hook's limit
/// (an hour for `/ready`), and nothing else would cut it short.
fn until_stopped<T>(vm: &Vm, work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                if crate::signals::stopping() {
                    vm.discard();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = work();
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    })
}

/// Remove an image's snapshot (files and record).
pub fn forget(image_dir: &Path) -> Result<(), String> {
    record(image_dir, None)?;
    for f in [MEMORY_FILE, DISK_FILE] {
        let _ = std::fs::remove_file(image_dir.join(f));
    }
    Ok(())
}

/// Write (or clear) the snapshot's record in `manifest.json`, atomically.
fn record(image_dir: &Path, snapshot: Option<&Snapshot>) -> Result<(), String> {
    let path = image_dir.join("manifest.json");
    let mut manifest = super::image::read_manifest(&path)?;
    match snapshot {
        Some(s) => {
            manifest["snapshot"] = serde_json::to_value(s).map_err(|e| e.to_string())?;
        }
        None => {
            if let Some(m) = manifest.as_object_mut() {
                m.remove("snapshot");
            }
        }
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{manifest}\n"))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Flatten a VM's disk chain (its overlay and everything under it) into a raw file
/// and check the ext4 filesystem read-only: the report of `e2fsck -fn`, or why not.
pub fn check_disk(overlay: &Path, scratch: &Path) -> Result<String, String> {
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(overlay)
        .arg(scratch))?;
    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(scratch)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    let _ = std::fs::remove_file(scratch);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(format!("e2fsck -fn: {}: {report}", out.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_hook_limits_come_from_the_image_config() {
        let dir = std::env::temp_dir().join(format!("snap-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            build_hook_timeouts(&dir),
            (Duration::from_secs(60), Duration::from_secs(60))
        );
        std::fs::write(
            dir.join("image.json"),
            r#"{"hooks":{"microvmImageHooks":{"readyTimeoutInSeconds":5,"validateTimeoutInSeconds":0}}}"#,
        )
        .unwrap();
        assert_eq!(
            build_hook_timeouts(&dir),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_record_round_trips_by_the_models_names() {
        let s = Snapshot {
            memory: MEMORY_FILE.into(),
            disk: DISK_FILE.into(),
            memory_snapshot_size_in_bytes: 17,
            disk_snapshot_size_in_bytes: 42,
            memory_mib: 128,
            kernel_command_line: "console=ttyS0".into(),
            created_at: "2026-11-22T00:00:00Z".into(),
            save_ms: 700,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["memorySnapshotSizeInBytes"], 17);
        assert_eq!(v["diskSnapshotSizeInBytes"], 42);
        assert_eq!(v["memoryMiB"], 128);
        assert_eq!(serde_json::from_value::<Snapshot>(v).unwrap(), s);
    }
}
