//! Facts only a real guest has: its machine, its vsock CID and its memory.

/// The running kernel's machine name (`uname -m`), so the host sees which
/// architecture it booted, from the kernel rather than from how the agent was built.
pub fn machine() -> Option<String> {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.machine().to_string_lossy().into_owned())
}

/// This guest's CID, once the vsock transport is up.
pub fn local_cid() -> Option<u32> {
    vsock::get_local_cid().ok()
}

/// Guest memory as the kernel reports it (KiB): total and available.
pub fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}
