//! Steps that change the machine: the wall clock, the kernel's entropy pool, power.
//!
//! They sit behind [`Machine`] because the same binary runs as PID 1 of a real guest
//! and as PID 1 of a PID namespace on a developer's machine, where stepping the clock
//! would step the developer's clock. Only PID 1 of the *initial* PID namespace (a real
//! guest) gets the real clock and entropy; everywhere else the steps are recorded and
//! reported in `/v1/status`, so tests can still prove they happened and when.

use std::sync::Mutex;

pub use microvm_protocol::status::Role;

/// What the agent is to this machine. PID 1 of the initial PID namespace (a real
/// guest) is the only process for which `reboot(LINUX_REBOOT_CMD_CAD_OFF)` succeeds:
/// in a child PID namespace the kernel refuses it (EINVAL), without CAP_SYS_BOOT too
/// (EPERM). It needs no /proc (a chroot or a bare root may have none), and what it
/// does, PID 1 of a guest does at boot anyway.
pub fn detect_role() -> Role {
    if std::process::id() != 1 {
        return Role::Process;
    }
    role_of(nix::sys::reboot::set_cad_enabled(false).is_ok())
}

/// A guest only when the kernel says this is the initial PID namespace's init.
/// Anything else is a namespace: a real guest mistaken for one loses its clock step,
/// while the other mistake would step a developer's clock.
pub fn role_of(initial_pid_namespace: bool) -> Role {
    if initial_pid_namespace {
        Role::Guest
    } else {
        Role::Namespace
    }
}

/// Clock, entropy and storage steps, as applied or recorded.
pub use microvm_protocol::status::MachineSteps as Steps;

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
        crate::faults::sync();
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

mod sys {
    use std::os::fd::AsRawFd;

    pub fn set_realtime(unix_nanos: u64) -> std::io::Result<()> {
        let ts = nix::sys::time::TimeSpec::from(std::time::Duration::from_nanos(unix_nanos));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(std::io::Error::from)
    }

    // RNDADDENTROPY = _IOW('R', 0x03, int[2]); RNDRESEEDCRNG = _IO('R', 0x07). The
    // request codes are computed by nix for the target's ioctl encoding (libc has no
    // constants for them), never written out as one architecture's numbers.
    nix::ioctl_write_ptr!(rnd_add_entropy, b'R', 0x03, [libc::c_int; 2]);
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

    /// The request codes. (Their type is glibc's `c_ulong` but musl's `c_int`: the
    /// casts are needed on one of them.)
    #[allow(clippy::unnecessary_cast)]
    pub const RND_ADD_ENTROPY: u64 =
        nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()) as u64;
    #[allow(clippy::unnecessary_cast)]
    pub const RND_RESEED_CRNG: u64 = nix::request_code_none!(b'R', 0x07) as u64;
    // Checked when the agent is compiled, for whichever target: tests run on this
    // x86_64 machine only, so a unit test would never see the arm64 values. Both
    // architectures use asm-generic's ioctl encoding (`<linux/random.h>`).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    const _: () = assert!(RND_ADD_ENTROPY == 0x4008_5203 && RND_RESEED_CRNG == 0x5207);

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

/// A machine that records every step in order, and fails or stalls on demand: the
/// lifecycle's tests drive it through the same trait as the real one.
#[cfg(test)]
pub mod fake {
    use super::{Machine, Steps};
    use std::sync::{Condvar, Mutex};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Clock(u64),
        Entropy(usize),
        Sync { final_: bool },
    }

    #[derive(Default)]
    pub struct FakeMachine {
        pub calls: Mutex<Vec<Call>>,
        pub fail_clock: Mutex<bool>,
        pub fail_sync: Mutex<bool>,
        /// While true, sync_storage blocks (a wedged disk) until released.
        stall_sync: Mutex<bool>,
        released: Condvar,
    }

    impl FakeMachine {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        pub fn stall_sync(&self, stall: bool) {
            *self.stall_sync.lock().unwrap() = stall;
            self.released.notify_all();
        }

        fn fail(flag: &Mutex<bool>, what: &str) -> std::io::Result<()> {
            if *flag.lock().unwrap() {
                return Err(std::io::Error::other(format!("{what} failed on purpose")));
            }
            Ok(())
        }
    }

    impl Machine for FakeMachine {
        fn set_clock(&self, unix_nanos: u64) -> std::io::Result<()> {
            Self::fail(&self.fail_clock, "clock")?;
            self.calls.lock().unwrap().push(Call::Clock(unix_nanos));
            Ok(())
        }

        fn add_entropy(&self, bytes: &[u8]) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(Call::Entropy(bytes.len()));
            Ok(())
        }

        fn sync_storage(&self, final_: bool) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(Call::Sync { final_ });
            // Bounded even if a test fails before releasing it: a test binary must
            // fail, not hang on a blocking thread the runtime waits for.
            let stalled = self.stall_sync.lock().unwrap();
            let limit = std::time::Duration::from_secs(30);
            let (stalled, _) = self
                .released
                .wait_timeout_while(stalled, limit, |s| *s)
                .unwrap();
            drop(stalled);
            Self::fail(&self.fail_sync, "sync")
        }

        fn steps(&self) -> Steps {
            let calls = self.calls();
            Steps {
                applied: false,
                clock_steps: calls.iter().filter(|c| matches!(c, Call::Clock(_))).count() as u32,
                storage_syncs: calls
                    .iter()
                    .filter(|c| matches!(c, Call::Sync { .. }))
                    .count() as u32,
                ..Steps::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `<linux/random.h>` on the architectures we build for (both use
    /// asm-generic's ioctl encoding).
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn entropy_request_codes_match_the_kernel_headers() {
        assert_eq!(sys::RND_ADD_ENTROPY, 0x4008_5203);
        assert_eq!(sys::RND_RESEED_CRNG, 0x5207);
    }

    #[test]
    fn role_of_a_test_process_is_process() {
        // cargo test is never PID 1; this guards the one thing that must not go wrong:
        // a developer's machine is never treated as our guest.
        assert_eq!(detect_role(), Role::Process);
    }

    #[test]
    fn only_the_initial_pid_namespace_is_a_guest() {
        assert_eq!(role_of(true), Role::Guest);
        // Unknown (no /proc) used to mean guest: a chrooted test agent then acted on
        // the machine it ran on. The kernel's answer needs no /proc.
        assert_eq!(role_of(false), Role::Namespace);
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
