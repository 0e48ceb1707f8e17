//! Steps that change the machine: the wall clock, the kernel's entropy pool, power.
//!
//! They sit behind [`Machine`] because the same binary runs as PID 1 of a real guest
//! and as PID 1 of a PID namespace on a developer's machine, where stepping the clock
//! would step the developer's clock. Only PID 1 of the *initial* PID namespace (a real
//! guest) gets the real clock and entropy; everywhere else the steps are recorded and
//! reported in `/v1/status`, so tests can still prove they happened and when.

use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;

/// The inode of the initial PID namespace (PROC_PID_INIT_INO in the kernel).
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// PID 1 of a real guest: the machine is ours.
    Guest,
    /// PID 1 of a child PID namespace: power-off is real (the kernel kills the
    /// namespace), the clock and entropy pool belong to someone else.
    Namespace,
    /// Not PID 1 at all: a subreaper under another init.
    Process,
}

impl Role {
    pub fn detect() -> Role {
        if std::process::id() != 1 {
            return Role::Process;
        }
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata("/proc/self/ns/pid") {
            Ok(m) if m.ino() == INIT_PID_NS_INODE => Role::Guest,
            Ok(_) => Role::Namespace,
            // Without /proc we cannot be in a test namespace (the harness mounts it).
            Err(_) => Role::Guest,
        }
    }

    pub fn is_pid1(self) -> bool {
        self != Role::Process
    }
}

/// A clock or entropy step, as applied or recorded.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    pub applied: bool,
    pub clock_steps: u32,
    pub last_clock_unix_nanos: Option<u64>,
    pub entropy_reseeds: u32,
    pub last_entropy_bytes: Option<usize>,
    pub storage_syncs: u32,
    pub remounted_read_only: bool,
}

pub trait Machine: Send + Sync {
    fn set_clock(&self, unix_nanos: u64) -> std::io::Result<()>;
    fn add_entropy(&self, bytes: &[u8]) -> std::io::Result<()>;
    /// Flush dirty data to disk; with `final_`, also remount the root read-only so
    /// nothing can dirty it between our answer and the power going off.
    fn sync_storage(&self, final_: bool) -> std::io::Result<()>;
    fn steps(&self) -> Steps;
}

pub struct Real {
    role: Role,
    steps: Mutex<Steps>,
}

impl Real {
    pub fn new(role: Role) -> Self {
        Real {
            role,
            steps: Mutex::new(Steps {
                applied: role == Role::Guest,
                ..Steps::default()
            }),
        }
    }

    fn record(&self, f: impl FnOnce(&mut Steps)) {
        if let Ok(mut s) = self.steps.lock() {
            f(&mut s);
        }
    }
}

impl Machine for Real {
    fn set_clock(&self, unix_nanos: u64) -> std::io::Result<()> {
        if self.role == Role::Guest {
            sys::set_realtime(unix_nanos)?;
        }
        self.record(|s| {
            s.clock_steps += 1;
            s.last_clock_unix_nanos = Some(unix_nanos);
        });
        Ok(())
    }

    fn add_entropy(&self, bytes: &[u8]) -> std::io::Result<()> {
        if self.role == Role::Guest {
            sys::add_entropy_and_reseed(bytes)?;
        }
        self.record(|s| {
            s.entropy_reseeds += 1;
            s.last_entropy_bytes = Some(bytes.len());
        });
        Ok(())
    }

    fn sync_storage(&self, final_: bool) -> std::io::Result<()> {
        nix::unistd::sync();
        // Only a real guest owns its root filesystem; in a test namespace it is the
        // developer's, and a superblock remount would reach outside the namespace.
        let remount = final_ && self.role == Role::Guest;
        if remount {
            use nix::mount::{mount, MsFlags};
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )?;
        }
        self.record(|s| {
            s.storage_syncs += 1;
            s.remounted_read_only |= remount;
        });
        Ok(())
    }

    fn steps(&self) -> Steps {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The one way out: sync and power off, never returning. Also called from the panic
/// hook, so it takes no locks.
pub fn power_off(role: Role, reason: &str) -> ! {
    tracing::warn!(reason, "powering off");
    if !role.is_pid1() {
        // Under another init: "power off" is leaving; the subreaper's children were
        // stopped by the terminate path already.
        std::process::exit(0);
    }
    // Anything still alive gets a moment to exit cleanly before the power goes.
    sys::kill_all(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    sys::kill_all(nix::sys::signal::Signal::SIGKILL);
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // PID 1 must never exit (that is a kernel panic): if power-off failed, halt here.
    tracing::error!(?err, "power-off failed; halting in place");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

mod sys {
    use std::os::fd::AsRawFd;

    pub fn kill_all(sig: nix::sys::signal::Signal) {
        // pid -1 from PID 1: every process but ourselves (kill(2)).
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), sig);
    }

    pub fn set_realtime(unix_nanos: u64) -> std::io::Result<()> {
        let ts = nix::sys::time::TimeSpec::from(std::time::Duration::from_nanos(unix_nanos));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(std::io::Error::from)
    }

    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07).
    nix::ioctl_write_ptr_bad!(rnd_add_entropy, 0x4008_5203, libc::c_int);
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

    pub fn add_entropy_and_reseed(bytes: &[u8]) -> std::io::Result<()> {
        // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
        let mut req = Vec::with_capacity(8 + bytes.len());
        let bits = i32::try_from(bytes.len() * 8).unwrap_or(i32::MAX);
        let size = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        req.extend_from_slice(&bits.to_ne_bytes());
        req.extend_from_slice(&size.to_ne_bytes());
        req.extend_from_slice(bytes);
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")?;
        // SAFETY: `req` is a complete rand_pool_info whose buf_size matches the bytes
        // that follow the header, and it outlives the call.
        unsafe { rnd_add_entropy(dev.as_raw_fd(), req.as_ptr().cast()) }?;
        // SAFETY: RNDRESEEDCRNG takes no argument.
        unsafe { rnd_reseed_crng(dev.as_raw_fd()) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_of_a_test_process_is_process() {
        // cargo test is never PID 1; this guards the one thing that must not go wrong:
        // a developer's machine is never treated as our guest.
        assert_eq!(Role::detect(), Role::Process);
    }

    #[test]
    fn recorded_steps_do_not_touch_the_machine() {
        let m = Real::new(Role::Namespace);
        m.set_clock(1_795_000_000_123_456_789).unwrap();
        m.add_entropy(&[7; 32]).unwrap();
        let s = m.steps();
        assert!(!s.applied);
        assert_eq!(s.clock_steps, 1);
        assert_eq!(s.last_clock_unix_nanos, Some(1_795_000_000_123_456_789));
        assert_eq!((s.entropy_reseeds, s.last_entropy_bytes), (1, Some(32)));
    }
}
