//! Stage 1: from the agent's initramfs to the image's root.
//!
//! Debian's cloud kernel has virtio_blk only as a module, and a virtio-blk root is what
//! QEMU can migrate (NVMe is not), so an image also ships `initrd.cpio`: `/init` is
//! this same binary, with the modules listed in [`MODULE_LIST`]. Booted from it (the
//! root filesystem is the kernel's initramfs, ramfs or tmpfs) with
//! `microvm.root=DEV` on the kernel command line, PID 1 loads those modules, waits for
//! DEV, mounts it (ext4, read-write) on [`NEWROOT`], frees the initramfs, moves the new
//! root onto `/`, and execs its `/sbin/init` (stage 2: the agent, which boots as it
//! would from a kernel-mounted root). The PID stays 1.
//!
//! Any failure is a console line saying what failed and what to do, then an orderly
//! power-off: never a kernel panic, never a hang.

use crate::sys::power;
use microvm_protocol::status::Role;
use nix::mount::{MntFlags, MsFlags};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The kernel parameter naming the root device (`microvm.root=/dev/vda`).
pub const ROOT_PARAM: &str = "microvm.root";

/// The initramfs's list of modules, one path per line relative to
/// `/lib/modules/<release>/`, in load order. Its presence marks the agent's stage 1.
pub const MODULE_LIST: &str = "/etc/microvm/initrd-modules";

/// Where the real root is mounted before it moves onto `/`.
pub const NEWROOT: &str = "/newroot";

/// What stage 2 is: the image's init (the agent).
pub const STAGE2: &str = "/sbin/init";

/// How long the root device may take to appear once its driver is loaded.
pub const DEVICE_PATIENCE: Duration = Duration::from_secs(5);

/// `statfs` magic numbers of what the kernel unpacks an initramfs into.
const RAMFS_MAGIC: u32 = 0x8584_58f6;
const TMPFS_MAGIC: u32 = 0x0102_1994;

/// What to do with the root we booted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot from this root: it is not an initramfs, or an initramfs that is not the
    /// agent's stage 1 and names no root (a whole image in an initramfs).
    Stay,
    /// Switch to this device.
    Switch(String),
    /// The agent's stage 1 without a usable `microvm.root=`: say why and power off.
    Refuse(String),
}

/// The value of `microvm.root=` (the last one wins, as for the kernel's `root=`).
pub fn root_param(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == ROOT_PARAM)
        .map(|(_, v)| v)
        .next_back()
}

/// Whether to switch roots. `initramfs`: the root is ramfs or tmpfs; `stage1`: the
/// agent's module list is there; `cmdline`: /proc/cmdline.
pub fn decide(initramfs: bool, stage1: bool, cmdline: &str) -> Decision {
    if !initramfs {
        return Decision::Stay;
    }
    match root_param(cmdline) {
        Some(dev) if dev.starts_with("/dev/") && dev.len() > "/dev/".len() => {
            Decision::Switch(dev.to_string())
        }
        Some(dev) => Decision::Refuse(format!(
            "{ROOT_PARAM}={dev} is not a device path; use {ROOT_PARAM}=/dev/vda (a virtio-blk root disk)"
        )),
        None if stage1 => Decision::Refuse(format!(
            "booted from the agent's initramfs without {ROOT_PARAM}= on the kernel command line; \
             add {ROOT_PARAM}=/dev/vda (the root disk as virtio-blk-pci), or boot without the \
             initramfs with root=/dev/nvme0n1"
        )),
        None => Decision::Stay,
    }
}

/// Whether a `statfs` magic number is an initramfs's (ramfs or tmpfs).
pub fn is_initramfs_magic(magic: u32) -> bool {
    magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
}

/// Stage 1, called first thing in a real guest (PID 1 of the initial PID namespace).
/// Returns when there is nothing to switch; otherwise execs stage 2 or powers off.
pub fn stage1(role: Role) {
    if role != Role::Guest || !root_is_initramfs() {
        return;
    }
    // /proc for the command line; stage 2 finds it mounted if we stay.
    let proc_error = mount_if_missing("proc", "/proc", "proc").err();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let stage1 = Path::new(MODULE_LIST).exists();
    let decision = decide(true, stage1, &cmdline);
    if decision == Decision::Stay {
        return;
    }
    // From here on this process execs or powers off: the agent's log is ours.
    crate::log::init(log_level(&cmdline));
    let dev = match decision {
        Decision::Switch(dev) => dev,
        Decision::Refuse(why) => fail(role, &why),
        Decision::Stay => return,
    };
    if let Some(e) = proc_error {
        fail(role, &format!("stage 1: mount /proc: {e}"));
    }
    if let Err(why) = switch(&dev) {
        fail(role, &format!("stage 1: {why}"));
    }
}

/// `microvm.log=` for stage 1's own lines.
fn log_level(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("microvm.log="))
        .next_back()
}

fn root_is_initramfs() -> bool {
    // The magic numbers are 32 bits; f_type is wider on some targets.
    nix::sys::statfs::statfs("/").is_ok_and(|s| is_initramfs_magic(s.filesystem_type().0 as u32))
}

/// Say what failed and what to do, then power off in order.
fn fail(role: Role, why: &str) -> ! {
    tracing::error!("{why}");
    power::power_off(role, &format!("Agent.InitramfsFailed: {why}"))
}

/// Everything from the modules to the exec; returns only on failure.
fn switch(dev: &str) -> Result<(), String> {
    let t0 = Instant::now();
    tracing::info!(root = dev, "stage 1: initramfs, switching to the root disk");
    mount_if_missing("devtmpfs", "/dev", "devtmpfs").map_err(|e| format!("mount /dev: {e}"))?;
    mount_if_missing("sysfs", "/sys", "sysfs").map_err(|e| format!("mount /sys: {e}"))?;
    let failures = super::modules::load_list(Path::new(MODULE_LIST));
    wait_for(Path::new(dev), DEVICE_PATIENCE).map_err(|waited| {
        let mut why = format!(
            "root device {dev} did not appear within {} ms; attach the image's root \
             disk as -device virtio-blk-pci (the first one is /dev/vda) and name it in \
             {ROOT_PARAM}=",
            waited.as_millis()
        );
        if !failures.is_empty() {
            why.push_str(&format!(" (module failures: {})", failures.join("; ")));
        }
        why
    })?;
    std::fs::create_dir_all(NEWROOT).map_err(|e| format!("create {NEWROOT}: {e}"))?;
    nix::mount::mount(
        Some(dev),
        NEWROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount {dev} (ext4) on {NEWROOT}: {e}; is it the image's rootfs.ext4?"))?;
    if !Path::new(NEWROOT)
        .join(STAGE2.trim_start_matches('/'))
        .exists()
    {
        return Err(format!("{dev} has no {STAGE2}: not an image's root"));
    }
    // The initramfs's own mounts go (lazily: the console stays open on 0-2); stage 2
    // mounts its own on the new root.
    for target in ["/proc", "/sys", "/dev"] {
        if let Err(e) = nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            tracing::warn!("stage 1: unmount {target}: {e}");
        }
    }
    let freed = free_initramfs();
    let argv = original_argv();
    tracing::info!(
        ms = t0.elapsed().as_millis() as u64,
        freed_kib = freed / 1024,
        "stage 1: root mounted, starting {STAGE2}"
    );
    nix::unistd::chdir(NEWROOT).map_err(|e| format!("chdir {NEWROOT}: {e}"))?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move {NEWROOT} onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot to the new root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir / in the new root: {e}"))?;
    // The console writer thread ends with the exec: what it holds goes out first.
    crate::console::flush(Duration::from_secs(1));
    let e = match nix::unistd::execv(c"/sbin/init", &argv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(format!(
        "exec {STAGE2} on the new root: {e}; the image's {STAGE2} must be the agent"
    ))
}

/// Mount a pseudo filesystem unless something is mounted there already.
fn mount_if_missing(source: &str, target: &str, fstype: &str) -> nix::Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| super::boot::parse_mountinfo(&t).contains(target))
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    if !Path::new(target).exists() {
        std::fs::create_dir_all(target)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    }
    let r = nix::mount::mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID,
        None::<&str>,
    );
    match r {
        // early_console may have mounted devtmpfs before /proc could tell us so.
        Err(nix::errno::Errno::EBUSY) => Ok(()),
        r => r,
    }
}

/// Poll for `path` until `patience` runs out; Err carries the time waited.
fn wait_for(path: &Path, patience: Duration) -> Result<(), Duration> {
    let t0 = Instant::now();
    loop {
        if path.exists() {
            return Ok(());
        }
        if t0.elapsed() >= patience {
            return Err(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// init's argv as the kernel gave it, for stage 2.
fn original_argv() -> Vec<CString> {
    let mut argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    if argv.is_empty() {
        argv.push(c"/sbin/init".to_owned());
    }
    argv
}

/// Delete the initramfs's files (the RAM they hold is freed only then), never crossing
/// into another filesystem ([`NEWROOT`] above all). Returns the bytes freed.
fn free_initramfs() -> u64 {
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return 0;
    };
    let mut freed = 0;
    delete_contents(Path::new("/"), root.dev(), &mut freed);
    freed
}

fn delete_contents(dir: &Path, dev: u64, freed: &mut u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if path == Path::new(NEWROOT) || meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            delete_contents(&path, dev, freed);
            let _ = std::fs::remove_dir(&path);
        } else if std::fs::remove_file(&path).is_ok() {
            *freed += meta.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_parameter_is_found_and_the_last_wins() {
        assert_eq!(
            root_param("console=ttyS0 microvm.root=/dev/vda panic=-1"),
            Some("/dev/vda")
        );
        assert_eq!(
            root_param("microvm.root=/dev/vda microvm.root=/dev/vdb"),
            Some("/dev/vdb")
        );
        assert_eq!(root_param("root=/dev/nvme0n1 microvm.rootx=1"), None);
        assert_eq!(root_param(""), None);
    }

    #[test]
    fn a_root_that_is_no_initramfs_stays() {
        assert_eq!(decide(false, true, "microvm.root=/dev/vda"), Decision::Stay);
        assert_eq!(decide(false, false, "root=/dev/nvme0n1 rw"), Decision::Stay);
    }

    #[test]
    fn an_initramfs_with_a_root_switches() {
        assert_eq!(
            decide(true, true, "console=ttyS0 microvm.root=/dev/vda\n"),
            Decision::Switch("/dev/vda".into())
        );
        // A root is a root even without our module list.
        assert_eq!(
            decide(true, false, "microvm.root=/dev/vdb"),
            Decision::Switch("/dev/vdb".into())
        );
    }

    #[test]
    fn the_agents_initramfs_without_a_root_refuses_with_what_to_do() {
        let Decision::Refuse(why) = decide(true, true, "console=ttyS0 root=/dev/nvme0n1") else {
            panic!("should refuse");
        };
        assert!(why.contains("microvm.root=/dev/vda"), "{why}");
        // Not a device path.
        assert!(matches!(
            decide(true, true, "microvm.root=vda"),
            Decision::Refuse(_)
        ));
        assert!(matches!(
            decide(true, true, "microvm.root=/dev/"),
            Decision::Refuse(_)
        ));
        // Someone else's initramfs (a whole image in one) boots as it is.
        assert_eq!(decide(true, false, "console=ttyS0"), Decision::Stay);
    }

    #[test]
    fn initramfs_magics() {
        assert!(is_initramfs_magic(0x8584_58f6));
        assert!(is_initramfs_magic(0x0102_1994));
        assert!(!is_initramfs_magic(0xef53)); // ext4
    }

    #[test]
    fn stage1_log_level() {
        assert_eq!(log_level("a microvm.log=debug b"), Some("debug"));
        assert_eq!(log_level("a b"), None);
    }

    #[test]
    fn deleting_contents_stays_on_its_filesystem_and_counts_bytes() {
        let dir = std::env::temp_dir().join(format!("switch-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), b"12345").unwrap();
        std::fs::write(dir.join("g"), b"123").unwrap();
        let dev = std::fs::symlink_metadata(&dir).unwrap().dev();
        let mut freed = 0;
        delete_contents(&dir, dev, &mut freed);
        assert_eq!(freed, 8);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // Another device's files (a different dev number) are never touched.
        std::fs::write(dir.join("h"), b"1").unwrap();
        delete_contents(&dir, dev.wrapping_add(1), &mut freed);
        assert!(dir.join("h").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
