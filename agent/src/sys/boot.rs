//! Bringing up the guest when we are PID 1: console, mounts, /dev links, hostname,
//! loopback, PATH.
//!
//! Every step is best effort: a guest whose /sys refuses to mount is still a guest the
//! host must be able to talk to and power off, so failures are logged and boot goes on.

use nix::mount::MsFlags;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const DEFAULT_HOSTNAME: &str = "microvm";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
) -> MountSpec {
    MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The filesystems of a minimal guest, in mount order (parents before children).
pub const MOUNTS: [MountSpec; 8] = [
    m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    m(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "mode=0620,ptmxmode=0666",
    ),
    m("shm", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    m("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    m("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    m(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "",
    ),
];

/// Mount points listed in /proc/self/mountinfo (field 5, octal escapes decoded).
pub fn parse_mountinfo(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which of `MOUNTS` still need mounting, given what is mounted.
/// The agent's own files under /run, when /run itself is not the agent's.
const AGENT_RUN: MountSpec = m("tmpfs", "/run/microvm", "tmpfs", NOSUID_NODEV, "mode=0755");

pub fn plan_mounts(mounted: &HashSet<String>) -> Vec<&'static MountSpec> {
    MOUNTS
        .iter()
        .filter(|s| !mounted.contains(s.target))
        .collect()
}

/// Variables PID 1 must see before it starts anything: a kernel hands init almost none.
pub fn missing_env(has_path: bool) -> Option<(&'static str, &'static str)> {
    (!has_path).then_some(("PATH", DEFAULT_PATH))
}

pub use microvm_protocol::status::BootReport;

/// PID 1's duties. Not called when we are not PID 1. Runs before logging is set up
/// (the log level may come from /proc/cmdline): failures are returned, not logged.
pub fn init_pid1() -> BootReport {
    let mut report = BootReport::default();
    if let Some((k, v)) = missing_env(std::env::var_os("PATH").is_some()) {
        std::env::set_var(k, v);
    }
    // /proc first: the plan reads mountinfo from it.
    let mut mounted = read_mounted();
    if !mounted.contains("/proc") {
        match mount_one(&MOUNTS[0]) {
            Ok(()) => report.mounted.push("/proc".into()),
            Err(e) => report.failures.push(format!("mount /proc: {e}")),
        }
        mounted = read_mounted();
    }
    for spec in plan_mounts(&mounted) {
        match mount_one(spec) {
            Ok(()) => report.mounted.push(spec.target.to_string()),
            Err(e) => report.failures.push(format!("mount {}: {e}", spec.target)),
        }
    }
    if mounted.contains("/run") {
        // A /run that was there before us (a namespace sharing the host's mounts) is
        // not ours: the agent's own files (resolver, the application's AWS config)
        // go on a tmpfs of their own in this mount namespace, never into the host's.
        match mount_one(&AGENT_RUN) {
            Ok(()) => report.mounted.push(AGENT_RUN.target.to_string()),
            Err(e) => report
                .failures
                .push(format!("mount {}: {e}", AGENT_RUN.target)),
        }
    }
    // Always there, so that the application's view of it is read-only from its start
    // (a directory it could create first would be its own to fill with links).
    if let Err(e) = std::fs::create_dir_all(AGENT_RUN.target) {
        report
            .failures
            .push(format!("create {}: {e}", AGENT_RUN.target));
    }
    early_console_report(&mut report);
    dev_links(&mut report);
    if let Err(e) = loopback_up() {
        report.failures.push(format!("bring lo up: {e}"));
    }
    // Ctrl-Alt-Del becomes SIGINT to us instead of an instant reboot of the guest.
    // In a child PID namespace the kernel refuses this (EINVAL): nothing to disable.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        if e != nix::errno::Errno::EINVAL {
            report.failures.push(format!("disable ctrl-alt-del: {e}"));
        }
    }
    report
}

pub fn set_hostname(report: &mut BootReport, hostname: &str) {
    if let Err(e) = nix::unistd::sethostname(hostname) {
        report.failures.push(format!("sethostname {hostname}: {e}"));
    }
}

/// What boot did, in the agent's log.
pub fn log(report: &BootReport) {
    for f in &report.failures {
        tracing::warn!("boot: {f}");
    }
    tracing::info!(mounted = ?report.mounted, "boot done");
}

/// A proxied connection costs two descriptors; the kernel's default soft limit of
/// 1024 would cap ingress near 500 connections. Raise the soft limit to the hard one
/// (the application inherits it).
pub fn raise_nofile(report: &mut BootReport) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                report
                    .failures
                    .push(format!("raise RLIMIT_NOFILE to {hard}: {e}"));
            }
        }
        Ok(_) => {}
        Err(e) => report
            .failures
            .push(format!("getrlimit(RLIMIT_NOFILE): {e}")),
    }
}

/// Not PID 1: adopt orphans of our subtree, like init would.
pub fn init_subreaper() -> BootReport {
    let mut report = BootReport::default();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        report.failures.push(format!("PR_SET_CHILD_SUBREAPER: {e}"));
        tracing::warn!("cannot become a child subreaper: {e}; orphans will escape");
    }
    report
}

fn read_mounted() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

fn mount_one(spec: &MountSpec) -> nix::Result<()> {
    let target = Path::new(spec.target);
    if !target.exists() {
        std::fs::create_dir_all(target)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    }
    let data = (!spec.data.is_empty()).then_some(spec.data);
    let r = nix::mount::mount(
        Some(spec.source),
        target,
        Some(spec.fstype),
        spec.flags,
        data,
    );
    match r {
        // A kernel without devtmpfs still gets a writable /dev.
        Err(_) if spec.fstype == "devtmpfs" => nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            spec.flags,
            Some("mode=0755"),
        ),
        r => r,
    }
}

/// What [`early_console`] found and did, for the boot report.
static EARLY: AtomicU8 = AtomicU8::new(EARLY_NOTHING);
const EARLY_NOTHING: u8 = 0;
const EARLY_OPENED: u8 = 1;
const EARLY_MOUNTED: u8 = 2;
const EARLY_FAILED: u8 = 3;
const EARLY_PIPE: u8 = 4;

/// A kernel that finds no `/dev/console` on the root filesystem (an empty `/dev` and
/// no devtmpfs mounted for us: `devtmpfs.mount=0`, or a kernel built without it)
/// starts init with descriptors 0-2 closed. Rust's start-up code then opens
/// `/dev/null` on them and aborts when it cannot: PID 1 dies before `main`, and the
/// kernel panics. So the binary runs this from `.init_array`, before that start-up
/// code: as PID 1 with a closed standard descriptor, mount devtmpfs if need be, open
/// the console and put it on 0-2. Only libc and nix here: std is not started yet.
pub extern "C" fn early_console() {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    if nix::unistd::getpid().as_raw() != 1 || !(0..=2).any(closed) {
        return;
    }
    let open_console = || {
        open(
            "/dev/console",
            OFlag::O_RDWR | OFlag::O_NOCTTY,
            Mode::empty(),
        )
    };
    let console = open_console().or_else(|_| {
        let _ = nix::unistd::mkdir("/dev", Mode::from_bits_truncate(0o755));
        nix::mount::mount(
            Some("devtmpfs"),
            "/dev",
            Some("devtmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )?;
        EARLY.store(EARLY_MOUNTED, Ordering::Relaxed);
        open_console()
    });
    let Ok(console) = console else {
        let state = if no_console() {
            EARLY_PIPE
        } else {
            EARLY_FAILED
        };
        EARLY.store(state, Ordering::Relaxed);
        return;
    };
    if EARLY.load(Ordering::Relaxed) == EARLY_NOTHING {
        EARLY.store(EARLY_OPENED, Ordering::Relaxed);
    }
    // With 0-2 closed, open(2) returns one of them: that one is the console already
    // and must stay open.
    let console = std::os::fd::IntoRawFd::into_raw_fd(console);
    for fd in (0..=2).filter(|fd| *fd != console && closed(*fd)) {
        // SAFETY: dup2 onto a standard descriptor that is closed (checked above);
        // `console` is open for the duration of the call.
        unsafe { libc::dup2(console, fd) };
    }
    if console > 2 {
        // SAFETY: `console` is ours (from open above) and used by nothing else.
        unsafe { libc::close(console) };
    }
}

/// Whether descriptor `fd` is closed.
fn closed(fd: i32) -> bool {
    // SAFETY: F_GETFD on a bare number reads no memory; a closed one is EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) < 0 }
}

/// No console can be had (no `/dev`, no devtmpfs): the closed standard descriptors
/// get a pipe instead, so start-up finds them open and PID 1 lives. What the agent
/// writes there is lost (a non-blocking pipe nobody drains: the console writer counts
/// the drops); the control channel still says everything.
fn no_console() -> bool {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills a two-element array we own.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK) } != 0 {
        return false;
    }
    // Above the standard numbers first (pipe2 took the lowest free ones, perhaps the
    // wrong way round), then input reads the pipe and output and error write into it.
    // SAFETY: F_DUPFD and close on descriptors we own.
    let (read, write) = unsafe {
        let moved = (
            libc::fcntl(ends[0], libc::F_DUPFD, 3),
            libc::fcntl(ends[1], libc::F_DUPFD, 3),
        );
        libc::close(ends[0]);
        libc::close(ends[1]);
        moved
    };
    if read < 0 || write < 0 {
        for fd in [read, write].into_iter().filter(|fd| *fd >= 0) {
            // SAFETY: our own descriptor, used by nothing else.
            unsafe { libc::close(fd) };
        }
        return false;
    }
    for fd in (0..=2).filter(|fd| closed(*fd)) {
        // SAFETY: dup2 onto a closed standard descriptor from one we own.
        unsafe { libc::dup2(if fd == 0 { read } else { write }, fd) };
    }
    // SAFETY: our own descriptors, duplicated where they are needed.
    unsafe {
        libc::close(read);
        libc::close(write);
    }
    true
}

/// The early console step, for the boot report.
fn early_console_report(report: &mut BootReport) {
    match EARLY.load(Ordering::Relaxed) {
        EARLY_OPENED => report.created.push("console on descriptors 0-2".into()),
        EARLY_MOUNTED => report
            .created
            .push("/dev (devtmpfs, before start-up) and console on descriptors 0-2".into()),
        EARLY_PIPE => report
            .failures
            .push("no console: /dev/console could not be opened or created (descriptors 0-2 on a pipe nobody reads)".into()),
        EARLY_FAILED => report.failures.push(
            "no console: /dev/console could not be opened or created, nor a pipe in its place".into(),
        ),
        _ => {}
    }
}

/// Links a program expects in `/dev` that devtmpfs does not make (udev would).
pub const DEV_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

fn dev_links(report: &mut BootReport) {
    for (link, target) in DEV_LINKS {
        if std::fs::symlink_metadata(link).is_ok() {
            continue;
        }
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => report.created.push(link.to_string()),
            Err(e) => report
                .failures
                .push(format!("link {link} -> {target}: {e}")),
        }
    }
}

fn loopback_up() -> std::io::Result<()> {
    super::netdev::up(&super::netdev::control_socket()?, "lo")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=4000k
40 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_points_with_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert!(m.contains("/"));
        assert!(m.contains("/proc"));
        assert!(m.contains("/dev"));
        assert!(m.contains("/mnt/with space"));
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn plan_skips_what_is_mounted_and_keeps_order() {
        let m = parse_mountinfo(MOUNTINFO);
        let plan: Vec<_> = plan_mounts(&m).iter().map(|s| s.target).collect();
        assert_eq!(
            plan,
            [
                "/sys",
                "/dev/pts",
                "/dev/shm",
                "/run",
                "/tmp",
                "/sys/fs/cgroup"
            ]
        );
        let all: Vec<_> = plan_mounts(&HashSet::new())
            .iter()
            .map(|s| s.target)
            .collect();
        assert_eq!(all.len(), 8);
        // Parents before children.
        let pos = |t| all.iter().position(|x| *x == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
    }

    #[test]
    fn path_is_set_only_when_missing() {
        assert_eq!(missing_env(false), Some(("PATH", DEFAULT_PATH)));
        assert_eq!(missing_env(true), None);
    }
}
