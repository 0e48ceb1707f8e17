//! The application's memory: its own cgroup (v2) under the guest's root, an optional
//! `memory.max` from the image config, and the OOM kills the kernel counts for it in
//! `memory.events`. The agent makes itself the OOM killer's last choice
//! (`oom_score_adj` -1000) and gives the application back the default (0) as it
//! starts, so under memory pressure the kernel kills the application, never PID 1.
//!
//! Only a real guest does this: in a test namespace the cgroup tree and the OOM
//! settings are the developer's machine's.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Where the guest's cgroup2 hierarchy is mounted (boot's mount table).
pub const ROOT: &str = "/sys/fs/cgroup";
/// The application's cgroup, under [`ROOT`].
pub const APP: &str = "app";
/// The smallest `memoryLimitMiB` the image config accepts: less cannot start a runtime.
pub const MIN_LIMIT_MIB: u64 = 8;

/// The count of OOM kills in a `memory.events` text (`oom_kill N`).
pub fn parse_oom_kills(events: &str) -> Option<u64> {
    events.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}

#[derive(Debug)]
pub struct AppCgroup {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`, ready for the child between fork and exec (no allocation
    /// is allowed there).
    procs: CString,
}

impl AppCgroup {
    /// Create the application's cgroup under `root` with the memory controller, and
    /// `memory.max` when `limit_bytes` is set. `memory.oom.group`: an OOM kill takes
    /// the application's whole tree, not one process of it.
    pub fn create(root: &Path, limit_bytes: Option<u64>) -> std::io::Result<AppCgroup> {
        std::fs::write(root.join("cgroup.subtree_control"), "+memory")?;
        let dir = root.join(APP);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if let Some(limit) = limit_bytes {
            std::fs::write(dir.join("memory.max"), limit.to_string())?;
        }
        // Optional (kernels before 4.19 lack it): without it an OOM kill takes one
        // process of the tree, not all of it.
        if let Err(e) = std::fs::write(dir.join("memory.oom.group"), "1") {
            tracing::warn!("memory.oom.group: {e}; an OOM kill may leave part of the app");
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        Ok(AppCgroup { dir, procs })
    }

    /// OOM kills in the application's cgroup so far (0 if unreadable).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.events_path())
            .ok()
            .and_then(|t| parse_oom_kills(&t))
            .unwrap_or(0)
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("memory.events")
    }

    /// For the child, between fork and exec: join the cgroup and take back the
    /// default OOM score. Only async-signal-safe calls; failures leave the child
    /// where it is (it still runs, unconfined).
    pub fn enter_in_child(&self) {
        // Best effort: outside the cgroup the app still runs, unlimited.
        write_c(&self.procs, b"0");
    }
}

/// Call `seen(total)` whenever the kernel counts a new OOM kill in the cgroup (the
/// kernel signals a change of `memory.events` as a modification).
pub async fn watch_oom_kills(cg: std::sync::Arc<AppCgroup>, mut seen: impl FnMut(u64)) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    struct Watch(Inotify);
    impl AsRawFd for Watch {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }
    let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
        i.add_watch(&cg.events_path(), AddWatchFlags::IN_MODIFY)?;
        Ok(i)
    });
    let registered = watch.map_err(std::io::Error::from).and_then(|i| {
        // SAFETY: `Watch` owns the inotify descriptor, so it stays open and the same
        // for the whole life of the AsyncFd, which owns the `Watch`.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                Watch(i),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(std::io::Error::from)
    });
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(
                "watching {}: {e}; OOM kills are reported only at exit",
                cg.events_path().display()
            );
            return;
        }
    };
    let mut last = cg.oom_kills();
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match ready.get_inner().0.read_events() {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::error!("reading OOM notifications: {e}");
                return;
            }
        }
        let now = cg.oom_kills();
        if now > last {
            seen(now);
            last = now;
        }
    }
}

/// For the child, between fork and exec, whenever the agent protected itself: the
/// default OOM score back (children inherit -1000, and a guest whose every process is
/// -1000 has nothing the OOM killer may kill: the kernel panics). A failure fails the
/// spawn, visibly, rather than run the application unkillable.
pub fn reset_oom_score_in_child() -> std::io::Result<()> {
    if write_c(c"/proc/self/oom_score_adj", b"0") {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// open, write, close: async-signal-safe, for `pre_exec`. True if all was written.
fn write_c(path: &std::ffi::CStr, bytes: &[u8]) -> bool {
    // SAFETY: `path` is NUL-terminated and outlives the call; open/write/close are
    // async-signal-safe, and the descriptor is ours until closed here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        n == bytes.len() as isize
    }
}

/// PID 1 is the OOM killer's last choice.
pub fn protect_agent() -> std::io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", "-1000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        assert_eq!(parse_oom_kills("oom_group_kill 1\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn a_cgroup_is_created_with_its_limit() {
        // A plain directory stands in for the cgroup root: the files are the contract.
        let root = std::env::temp_dir().join(format!("cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let cg = AppCgroup::create(&root, Some(64 << 20)).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("app/memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(cg.oom_kills(), 0);
        std::fs::write(cg.events_path(), "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(cg.oom_kills(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
