//! Facts only a real guest has: its vsock CID and its memory.

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
