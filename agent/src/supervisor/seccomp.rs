//! The application's seccomp filter: a short deny list for what capabilities and
//! read-only mounts cannot stop (Docker's default profile denies the same calls, for
//! the same reasons).
//!
//! - `keyctl`, `add_key`, `request_key`: a key request runs `/sbin/request-key` as
//!   root with every capability (a path the kernel hard-codes), and the application,
//!   root on the same writable root filesystem, could put its own program there.
//! - `clone3`: `CLONE_INTO_CGROUP` moves a child into any cgroup whose
//!   `cgroup.procs` the caller may write by file mode, read-only mount or not: out of
//!   the application's memory limit. It answers ENOSYS, so C libraries fall back to
//!   `clone`, which has no such flag.
//! - `clone` and `unshare` with `CLONE_NEWUSER`: a user namespace hands every
//!   capability back inside it, and with it most of the kernel's attack surface.
//! - `prlimit64` on another process: a process of the same uid (the root application
//!   and PID 1) may lower another's limits with no capability, and PID 1 without
//!   descriptors or memory dies. `setrlimit`, which C libraries implement as
//!   `prlimit64(0, ...)`, still works.
//!
//! A call of another architecture (i386 or x32 on x86_64) is refused outright: it
//! would name other numbers.

/// `SECCOMP_MODE_FILTER` (linux/seccomp.h).
pub const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
/// `struct seccomp_data`: nr, arch, instruction pointer, then six 64-bit args (the
/// low half first on both little-endian architectures).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 system calls on x86_64 carry this bit in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const CLONE_NEWUSER: u32 = libc::CLONE_NEWUSER as u32;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> libc::sock_filter {
    stmt(RET_K, RET_ERRNO | (e as u32 & 0xffff))
}

/// The filter, as classic BPF.
pub fn program() -> Vec<libc::sock_filter> {
    let nr = |n: libc::c_long| n as u32;
    let mut p = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        errno(libc::EPERM),
        stmt(LD_W_ABS, NR),
    ];
    if cfg!(target_arch = "x86_64") {
        p.extend([jump(JGE_K, X32_SYSCALL_BIT, 0, 1), errno(libc::EPERM)]);
    }
    for n in [libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key] {
        p.extend([jump(JEQ_K, nr(n), 0, 1), errno(libc::EPERM)]);
    }
    p.extend([jump(JEQ_K, nr(libc::SYS_clone3), 0, 1), errno(libc::ENOSYS)]);
    // The number matched: decide on the first argument, and nothing else is tried.
    for n in [libc::SYS_clone, libc::SYS_unshare] {
        p.extend([
            jump(JEQ_K, nr(n), 0, 4),
            stmt(LD_W_ABS, ARG0_LOW),
            jump(JSET_K, CLONE_NEWUSER, 0, 1),
            errno(libc::EPERM),
            stmt(RET_K, RET_ALLOW),
        ]);
    }
    p.extend([
        jump(JEQ_K, nr(libc::SYS_prlimit64), 0, 4),
        stmt(LD_W_ABS, ARG0_LOW),
        jump(JEQ_K, 0, 1, 0),
        errno(libc::EPERM),
        stmt(RET_K, RET_ALLOW),
        stmt(RET_K, RET_ALLOW),
    ]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the program as the kernel would on (arch, nr, arg0): its return value.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            match i.code {
                LD_W_ABS => {
                    a = match i.k {
                        NR => nr,
                        ARCH => arch,
                        ARG0_LOW => arg0,
                        k => panic!("load of offset {k}"),
                    }
                }
                RET_K => return i.k,
                JEQ_K | JGE_K | JSET_K => {
                    let t = match i.code {
                        JEQ_K => a == i.k,
                        JGE_K => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                c => panic!("opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_filter_denies_what_it_says_and_allows_the_rest() {
        let p = program();
        assert!(p.len() < 64, "a short filter: {}", p.len());
        let nr = |n: libc::c_long| n as u32;
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let call = |n: libc::c_long, arg0: u32| run(&p, AUDIT_ARCH, nr(n), arg0);
        for n in [libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key] {
            assert_eq!(call(n, 0), eperm);
        }
        assert_eq!(call(libc::SYS_clone3, 0), RET_ERRNO | libc::ENOSYS as u32);
        let newuser = libc::CLONE_NEWUSER as u32;
        for n in [libc::SYS_clone, libc::SYS_unshare] {
            assert_eq!(call(n, newuser | libc::SIGCHLD as u32), eperm);
            assert_eq!(call(n, libc::CLONE_NEWNS as u32), RET_ALLOW);
            assert_eq!(call(n, 0), RET_ALLOW);
        }
        assert_eq!(call(libc::SYS_prlimit64, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_prlimit64, 1), eperm);
        for n in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_exit_group,
        ] {
            assert_eq!(call(n, 1), RET_ALLOW, "{n}");
        }
        // Another architecture's numbers are never trusted.
        assert_eq!(run(&p, 0x4000_0003, nr(libc::SYS_read), 0), eperm);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(run(&p, AUDIT_ARCH, X32_SYSCALL_BIT | 1, 0), eperm);
        }
    }
}
