//! The application's privileges: the user it runs as, the capabilities it keeps, and
//! the parts of the kernel's interface it sees read-only.
//!
//! The agent is PID 1 with every capability; the application is not the machine's
//! owner. By default it keeps the container runtimes' default capability set (the
//! one Docker and containerd give a container: no clock, no module loading, no
//! network configuration), its bounding set holds nothing more, and `no_new_privs`
//! is set, so no set-user-ID or file-capability program gives any back.
//! `additionalOsCapabilities: ["ALL"]` grants every capability except [`withheld`],
//! which would let the application take the guest from the agent.
//!
//! Capabilities do not cover everything a root process can write: cgroupfs files,
//! `/proc/sys` and `/proc/<pid>` are guarded by file modes, which root passes. The
//! application therefore gets a mount namespace of its own with a fresh `/proc` in
//! which PID 1 is invisible, and [`READ_ONLY`] views (`/sys` and everything below it,
//! `/proc/sys`, ...): it cannot raise its own `memory.max`, change a sysctl or reboot
//! the guest behind the agent's back. Remounting needs CAP_SYS_ADMIN, which is never
//! granted. What file modes and mounts cannot stop (a key request running
//! `/sbin/request-key`, `CLONE_INTO_CGROUP`, user namespaces, another process's
//! limits) the seccomp filter refuses (`seccomp.rs`).
//!
//! Everything the child does between fork and exec is a raw system call on data
//! prepared here beforehand: the agent is multithreaded, so the child may not
//! allocate or take a lock (musl's setuid family signals every thread, hence
//! `syscall(SYS_setresuid)` and friends, which change the calling thread only: in
//! the child it is the only one).

use std::ffi::CString;

/// Capability numbers and names (linux/capability.h), for status and documentation.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A set of capabilities, bit N for capability N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub const EMPTY: CapSet = CapSet(0);

    fn of(names: &[&str]) -> CapSet {
        CapSet(names.iter().fold(0, |m, n| {
            m | NAMES.iter().position(|x| x == n).map_or(0, |i| 1 << i)
        }))
    }

    /// Every capability up to `last` (the running kernel's `cap_last_cap`).
    pub fn all(last: u32) -> CapSet {
        CapSet(if last >= 63 {
            u64::MAX
        } else {
            (1u64 << (last + 1)) - 1
        })
    }

    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn without(self, other: CapSet) -> CapSet {
        CapSet(self.0 & !other.0)
    }

    /// `CAP_CHOWN`-style names, lowest number first (unknown numbers as `CAP_N`).
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|&c| self.contains(c))
            .map(|c| match NAMES.get(c as usize) {
                Some(n) => format!("CAP_{n}"),
                None => format!("CAP_{c}"),
            })
            .collect()
    }
}

/// The default set: the OCI runtimes' (Docker's, containerd's) default for a
/// container, which programs written for containers expect.
pub fn default_set() -> CapSet {
    CapSet::of(&[
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ])
}

/// Withheld even under `["ALL"]`, each because it hands over the guest: the network
/// (NET_ADMIN), mounts and namespaces (SYS_ADMIN), kernel code (SYS_MODULE, BPF, and
/// PERFMON with it), raw memory and ports (SYS_RAWIO), the agent's own memory
/// (SYS_PTRACE: ptrace or /proc/1/mem of PID 1), power (SYS_BOOT: reboot(2) past
/// the agent's orderly shutdown, and AUDIT_CONTROL: audit's panic-on-failure mode),
/// the agent's share of the machine (SYS_NICE: PID 1's threads set to SCHED_IDLE;
/// SYS_RESOURCE: the application beyond the OOM killer's reach, so that an OOM finds
/// nothing to kill and the kernel panics) and the console (SYSLOG: kernel messages,
/// a panic's among them, switched off).
pub fn withheld() -> CapSet {
    CapSet::of(&[
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_MODULE",
        "BPF",
        "PERFMON",
        "SYS_RAWIO",
        "SYS_PTRACE",
        "SYS_BOOT",
        "AUDIT_CONTROL",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYSLOG",
    ])
}

/// The capabilities an application keeps (its bounding set), from the image config.
pub fn granted(all_requested: bool, last_cap: u32) -> CapSet {
    if all_requested {
        CapSet::all(last_cap).without(withheld())
    } else {
        default_set().without(CapSet::all(63).without(CapSet::all(last_cap)))
    }
}

/// The kernel's highest capability number (`/proc/sys/kernel/cap_last_cap`).
pub fn parse_last_cap(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|&n: &u32| n < 64)
}

/// Who the application runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group), the primary group first.
    pub groups: Vec<u32>,
    /// The home directory from /etc/passwd, if the user has an entry.
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not in the image's /etc/passwd: add it to the image, or give a numeric uid[:gid]")]
    UnknownUser(String),
    #[error(
        "group {0:?} is not in the image's /etc/group: add it to the image, or give a numeric gid"
    )]
    UnknownGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// (name, gid, members) of each well-formed /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolve the image config's `user` (`name`, `uid`, `name:group`, `uid:gid`, any mix)
/// against the image's /etc/passwd and /etc/group texts, as container runtimes do: a
/// numeric uid need not have an entry (its group is then 0 and its home `/`); a
/// name must.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == u)
                .ok_or_else(|| UserError::UnknownUser(u.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        // Only a numeric uid gets here without an entry.
        None => u.parse().unwrap_or(0),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, gid, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&gid) {
                groups.push(gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: entry.map(|e| e.home.to_string()).filter(|h| !h.is_empty()),
    })
}

/// Where the application sees the kernel's interface read-only, bound over
/// themselves (recursively: every mount below `/sys`, the cgroup tree among them, is
/// then remounted read-only on its own). `/proc` is the fresh one mounted for the
/// application; `/run/microvm` holds what the agent writes for it (resolver, AWS
/// config), which it may read and never redirect.
pub const READ_ONLY: [&str; 7] = [
    "/sys",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/bus",
    "/proc/irq",
    "/proc/fs",
    "/run/microvm",
];

/// The largest /etc/passwd or /etc/group the agent reads (a root application could
/// replace either with /dev/zero or a FIFO before a restart).
pub const MAX_USER_DB: u64 = 1 << 20;

/// Mount points strictly below `prefix` in a /proc/self/mountinfo text, parents first.
pub fn mounts_below(mountinfo: &str, prefix: &str) -> Vec<String> {
    let below = format!("{}/", prefix.trim_end_matches('/'));
    let mut found: Vec<String> = crate::sys::boot::parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(&below))
        .collect();
    found.sort_by_key(|m| (m.matches('/').count(), m.clone()));
    found
}

/// What the application may do, decided from the image config and the role.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The image config's `user`; None runs it as root (uid 0, gid 0).
    pub user: Option<String>,
    /// `additionalOsCapabilities: ["ALL"]`.
    pub all_capabilities: bool,
}

/// One read-only view: the path, whether to bind it over itself first (a submount
/// already copied by a recursive bind needs only the remount), and the flags it
/// keeps (nosuid, nodev, noexec).
#[derive(Debug)]
struct ReadOnly {
    path: CString,
    bind: bool,
    flags: libc::c_ulong,
}

/// Everything the child applies, prepared before the fork.
#[derive(Debug)]
pub struct Confinement {
    pub identity: Identity,
    /// The bounding set (and, for root, what exec gives back).
    pub keep: CapSet,
    /// Capabilities the process holds after exec: the kept set for root; for another
    /// user nothing, or the kept set as ambient capabilities under `["ALL"]`.
    pub effective: CapSet,
    change_ids: bool,
    last_cap: u32,
    /// A fresh /proc (hidepid=ptraceable) replaces the agent's.
    fresh_proc: bool,
    read_only: Vec<ReadOnly>,
    /// Entered after the mounts, so that the path is looked up in the application's
    /// tree (a directory under /proc/sys taken before would be the writable one).
    working_dir: Option<CString>,
    seccomp: Vec<libc::sock_filter>,
}

/// Read a small regular file, refusing what could hang or exhaust the agent.
pub(crate) fn read_user_db(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Looked at before it is opened: opening a device or a FIFO has effects of its own.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{path} is not a regular file"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(std::io::Error::other(format!("reading {path}: {e}"))),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| std::io::Error::other(format!("reading {path}: {e}")))?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{path} is not a regular file"
        )));
    }
    let mut text = String::new();
    file.take(MAX_USER_DB + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_USER_DB {
        return Err(std::io::Error::other(format!(
            "{path} is larger than {MAX_USER_DB} bytes"
        )));
    }
    Ok(text)
}

/// nosuid, nodev and noexec of the mount `path` is on (a bind remount keeps only
/// the flags it is given).
fn mount_flags(path: &str) -> Option<libc::c_ulong> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let mut flags = 0;
    for (f, m) in [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
    ] {
        if st.flags().contains(f) {
            flags |= m;
        }
    }
    Some(flags)
}

impl Confinement {
    /// Read the image's user database and the kernel's facts, and decide.
    pub fn prepare(policy: &Policy, working_dir: Option<&str>) -> std::io::Result<Confinement> {
        let (passwd, group) = (read_user_db("/etc/passwd")?, read_user_db("/etc/group")?);
        let identity = match &policy.user {
            Some(u) => resolve(u, &passwd, &group).map_err(std::io::Error::other)?,
            None => {
                // Root as before, with root's home from the image when it has one.
                let mut id = resolve("0", &passwd, &group).unwrap_or(Identity {
                    uid: 0,
                    gid: 0,
                    groups: vec![0],
                    home: None,
                });
                id.groups.clear();
                id
            }
        };
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|t| parse_last_cap(&t))
            .unwrap_or(40);
        // Never more than the agent has (a test namespace's agent may lack some).
        let keep = CapSet(granted(policy.all_capabilities, last_cap).0 & own_permitted()?.0);
        let effective = if identity.uid == 0 || policy.all_capabilities {
            keep
        } else {
            CapSet::EMPTY
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let fresh_proc = mount_flags("/proc").is_some();
        let mut read_only = Vec::new();
        let cstr = |p: &str| CString::new(p).map_err(std::io::Error::other);
        for p in READ_ONLY {
            // What is absent (no /run/microvm outside a guest's PID 1) has nothing
            // to protect.
            let Some(flags) = mount_flags(p) else {
                continue;
            };
            read_only.push(ReadOnly {
                path: cstr(p)?,
                bind: true,
                flags,
            });
            // The fresh /proc has no submounts; /sys keeps the agent's.
            if p == "/sys" {
                for sub in mounts_below(&mountinfo, p) {
                    if let Some(flags) = mount_flags(&sub) {
                        read_only.push(ReadOnly {
                            path: cstr(&sub)?,
                            bind: false,
                            flags,
                        });
                    }
                }
            }
        }
        Ok(Confinement {
            change_ids: policy.user.is_some(),
            identity,
            keep,
            effective,
            last_cap,
            fresh_proc,
            read_only,
            working_dir: working_dir.map(cstr).transpose()?,
            seccomp: super::seccomp::program(),
        })
    }

    /// The paths made read-only, for status.
    pub fn read_only_paths(&self) -> Vec<String> {
        self.read_only
            .iter()
            .map(|r| r.path.to_string_lossy().into_owned())
            .collect()
    }

    /// In the child, between fork and exec. Raw system calls only; the first failure
    /// fails the spawn (the application never runs with more than it should).
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        // A failure names its step on the application's stderr (its log stream):
        // the spawn error alone would only say "Operation not permitted".
        let step = std::cell::Cell::new("unshare(CLONE_NEWNS)");
        let check = |r: libc::c_long| {
            if r >= 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            let msg = step.get().as_bytes();
            // SAFETY: write(2) of static bytes to our own stderr.
            unsafe {
                let head = b"microvm-agent: confining the application failed at ";
                libc::write(2, head.as_ptr().cast(), head.len());
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::write(2, b"\n".as_ptr().cast(), 1);
            }
            Err(err)
        };
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every call below is a system call on values prepared before the
        // fork (no allocation, no lock); pointers are to data owned by `self` or to
        // static C strings, which outlive the calls.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS).into())?;
            // Nothing the application mounts (it cannot) or remounts here goes back
            // to the agent; mounts the agent makes later reach it only if the
            // agent's own are shared, which they are not (private is the kernel's
            // default), so in practice it sees none of them.
            step.set("making / a slave mount");
            check(
                libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_SLAVE,
                    null.cast(),
                )
                .into(),
            )?;
            if self.fresh_proc {
                // hidepid=ptraceable: PID 1 (more capabilities than the application,
                // so never ptraceable by it) is not there at all: no /proc/1/*
                // (oom_score_adj, environ, task/) to write or read.
                step.set("a fresh /proc (hidepid=ptraceable)");
                check(
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"hidepid=ptraceable".as_ptr().cast(),
                    )
                    .into(),
                )?;
            }
            step.set("read-only bind mounts");
            for ro in &self.read_only {
                if ro.bind {
                    check(
                        libc::mount(
                            ro.path.as_ptr(),
                            ro.path.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            null.cast(),
                        )
                        .into(),
                    )?;
                }
                check(
                    libc::mount(
                        null,
                        ro.path.as_ptr(),
                        null,
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | ro.flags,
                        null.cast(),
                    )
                    .into(),
                )?;
            }
            if let Some(dir) = &self.working_dir {
                step.set("chdir to the working directory");
                check(libc::chdir(dir.as_ptr()).into())?;
            }
            let id = &self.identity;
            if self.change_ids && id.uid != 0 {
                // Keep the permitted set across the uid change: ambient capabilities
                // under ["ALL"] are raised from it.
                step.set("PR_SET_KEEPCAPS");
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into())?;
            }
            step.set("PR_CAPBSET_DROP");
            for cap in 0..=self.last_cap {
                if !self.keep.contains(cap) {
                    check(
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0).into(),
                    )?;
                }
            }
            // Always: without a `user` the application has no supplementary groups
            // (status says so), whatever groups the agent was started with.
            step.set("setgroups");
            check(libc::syscall(
                libc::SYS_setgroups,
                id.groups.len(),
                id.groups.as_ptr(),
            ))?;
            if self.change_ids {
                step.set("setresgid/setresuid");
                check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid))?;
                check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid))?;
            }
            let (lo, hi) = (self.effective.0 as u32, (self.effective.0 >> 32) as u32);
            // Inheritable only for the ambient set of a user other than root: root's
            // exec recomputes from the bounding set and would add it back.
            let (ilo, ihi) = if id.uid != 0 { (lo, hi) } else { (0, 0) };
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [
                CapData {
                    effective: lo,
                    permitted: lo,
                    inheritable: ilo,
                },
                CapData {
                    effective: hi,
                    permitted: hi,
                    inheritable: ihi,
                },
            ];
            step.set("capset");
            check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
            if id.uid != 0 {
                step.set("PR_CAP_AMBIENT_RAISE");
                for cap in 0..=self.last_cap {
                    if self.effective.contains(cap) {
                        check(
                            libc::prctl(
                                libc::PR_CAP_AMBIENT,
                                libc::PR_CAP_AMBIENT_RAISE,
                                cap as libc::c_ulong,
                                0,
                                0,
                            )
                            .into(),
                        )?;
                    }
                }
            }
            step.set("PR_SET_NO_NEW_PRIVS");
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
            // Last: after it, even the agent's own code in this child is filtered.
            step.set("the seccomp filter");
            let prog = libc::sock_fprog {
                len: self.seccomp.len() as libc::c_ushort,
                filter: self.seccomp.as_ptr().cast_mut(),
            };
            check(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    super::seccomp::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                    0,
                    0,
                )
                .into(),
            )?;
        }
        Ok(())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// This process's permitted set (capget).
fn own_permitted() -> std::io::Result<CapSet> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capget reads the header and writes two CapData structs, both ours.
    let r = unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(CapSet(
        u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32,
    ))
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`, two of them for version 3 (bits 0-31, 32-63).
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1000::/home/app:/usr/sbin/nologin\n\
        nohome:x:1001:1001:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        adm:x:4:app,daemon\n\
        app:x:1000:\n\
        staff:x:50:app\n\
        weird:x:notanumber:app\n";

    fn id(user: &str) -> Result<Identity, UserError> {
        resolve(user, PASSWD, GROUP)
    }

    #[test]
    fn users_resolve_as_container_runtimes_do() {
        assert_eq!(
            id("app").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 4, 50],
                home: Some("/home/app".into())
            }
        );
        // A numeric uid with an entry is that entry.
        assert_eq!(id("1000").unwrap(), id("app").unwrap());
        // Without one: group 0, no home.
        assert_eq!(
            id("4242").unwrap(),
            Identity {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: None
            }
        );
        // An explicit group replaces the primary one; supplementary ones stay.
        assert_eq!(id("app:staff").unwrap().groups, vec![50, 4]);
        assert_eq!(id("app:7").unwrap().gid, 7);
        assert_eq!(id("4242:99").unwrap().groups, vec![99]);
        assert_eq!(id("root").unwrap().home.as_deref(), Some("/root"));
        assert_eq!(id("nohome").unwrap().home, None);
        assert_eq!(
            id("nobody").unwrap_err(),
            UserError::UnknownUser("nobody".into())
        );
        assert_eq!(
            id("app:wheel").unwrap_err(),
            UserError::UnknownGroup("wheel".into())
        );
        // A comment or a broken line is never a user.
        assert!(id("broken line").is_err());
        assert!(id("# a comment").is_err());
    }

    #[test]
    fn submounts_are_found_parents_first_with_escapes_undone() {
        let info = "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
            30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
            31 22 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n\
            32 31 0:12 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n\
            33 22 0:40 / /sys/my\\040dir rw - tmpfs tmpfs rw\n\
            34 1 0:41 / /sysroot rw - tmpfs tmpfs rw\n\
            35 1 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            mounts_below(info, "/sys"),
            [
                "/sys/my dir",
                "/sys/fs/cgroup",
                "/sys/kernel/debug",
                "/sys/kernel/debug/tracing"
            ]
        );
        assert!(mounts_below(info, "/proc").is_empty());
        assert!(mounts_below("", "/sys").is_empty());
    }

    #[test]
    fn the_default_set_is_the_container_runtimes_and_all_withholds_the_guest() {
        let d = default_set();
        assert_eq!(d.names().len(), 14);
        for denied in [
            "CAP_SYS_TIME",
            "CAP_SYS_MODULE",
            "CAP_NET_ADMIN",
            "CAP_SYS_ADMIN",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_PTRACE",
        ] {
            assert!(!d.names().contains(&denied.to_string()), "{denied}");
        }
        let all = granted(true, 40);
        assert_eq!(all.names().len(), 41 - 12);
        assert!(all.names().contains(&"CAP_SYS_TIME".to_string()));
        assert!(all.names().contains(&"CAP_CHECKPOINT_RESTORE".to_string()));
        for w in withheld().names() {
            assert!(!all.names().contains(&w));
        }
        // An older kernel: nothing past its last capability.
        assert_eq!(granted(true, 37).0 >> 38, 0);
        // The default set is within any 6.1 kernel's and never holds a withheld one.
        assert_eq!(granted(false, 40), d);
        assert_eq!(d.without(withheld()), d);
        assert_eq!(CapSet::all(63).0, u64::MAX);
        assert_eq!(CapSet(1 << 50).names(), ["CAP_50"]);
        assert_eq!(parse_last_cap("40\n"), Some(40));
        assert_eq!(parse_last_cap("64"), None);
        assert_eq!(parse_last_cap(""), None);
    }
}
