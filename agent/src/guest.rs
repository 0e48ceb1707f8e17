//! What only a real guest does: read `microvm.*` kernel parameters, load the kernel
//! modules the image lists, and announce itself to the host over vsock.
//!
//! Dotted kernel parameters never reach init's argv or environment, so they are read
//! from /proc/cmdline.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image's list of modules to load, one path per line relative to
/// `/lib/modules/<release>/`, in load order.
pub const MODULE_LIST: &str = "/etc/microvm/modules";

/// `microvm.*` settings from the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub control: Option<String>,
    pub ingress: Option<String>,
    pub image_config: Option<String>,
    pub hostname: Option<String>,
    pub log: Option<String>,
    /// Host vsock port to announce readiness to.
    pub announce: Option<u32>,
    /// Test-only: lowers the 60 s minimum idle duration (see activity.rs).
    pub test_min_idle_seconds: Option<u64>,
}

pub fn parse_cmdline(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        let v = v.to_string();
        match k {
            "microvm.control" => c.control = Some(v),
            "microvm.ingress" => c.ingress = Some(v),
            "microvm.image_config" => c.image_config = Some(v),
            "microvm.hostname" => c.hostname = Some(v),
            "microvm.log" => c.log = Some(v),
            "microvm.announce" => c.announce = v.parse().ok(),
            "microvm.test_min_idle_seconds" => c.test_min_idle_seconds = v.parse().ok(),
            _ => {}
        }
    }
    c
}

pub fn read_cmdline() -> Cmdline {
    std::fs::read_to_string("/proc/cmdline")
        .map(|t| parse_cmdline(&t))
        .unwrap_or_default()
}

/// Module paths from the image's list: comments and blanks skipped, order kept.
pub fn parse_module_list(text: &str, base: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| base.join(l))
        .collect()
}

/// Load the listed modules with finit_module(2), in order. Already loaded (or built
/// in) is fine; a failure is reported and the rest still load.
pub fn load_modules() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(MODULE_LIST) else {
        return Vec::new();
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = Path::new("/lib/modules").join(release);
    let mut failures = Vec::new();
    let t0 = std::time::Instant::now();
    let list = parse_module_list(&text, &base);
    for path in &list {
        let r = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty())
                    .or_else(|e| match e {
                        nix::errno::Errno::EEXIST => Ok(()),
                        e => Err(e),
                    })
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            tracing::error!("load module {}: {e}", path.display());
            failures.push(format!("module {}: {e}", path.display()));
        }
    }
    tracing::info!(
        modules = list.len(),
        ms = t0.elapsed().as_millis() as u64,
        "modules loaded"
    );
    failures
}

/// Tell the host we are up: connect to it (CID 2) on `port` and send one JSON line.
/// Bounded: the host may not listen, and boot must go on regardless.
pub async fn announce(port: u32, line: String) {
    use tokio::io::AsyncWriteExt;
    for attempt in 0..50u32 {
        let addr = tokio_vsock::VsockAddr::new(crate::control::transport::HOST_CID, port);
        match tokio_vsock::VsockStream::connect(addr).await {
            Ok(mut s) => {
                let _ = s.write_all(format!("{line}\n").as_bytes()).await;
                let _ = s.shutdown(std::net::Shutdown::Both);
                tracing::info!(port, "announced to the host");
                return;
            }
            Err(e) if attempt == 49 => {
                tracing::warn!(port, "cannot announce to the host: {e}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_settings() {
        let c = parse_cmdline(
            "console=ttyS0 root=/dev/nvme0n1 microvm.control=vsock:7000 microvm.announce=9999 \
             microvm.hostname=box microvm.log=debug quiet microvm.unknown=1",
        );
        assert_eq!(c.control.as_deref(), Some("vsock:7000"));
        assert_eq!(c.announce, Some(9999));
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(c.image_config, None);
        assert_eq!(parse_cmdline("microvm.announce=x").announce, None);
        assert_eq!(parse_cmdline(""), Cmdline::default());
    }

    #[test]
    fn module_list_keeps_order() {
        let l = parse_module_list(
            "# virtio first\nkernel/drivers/virtio/virtio.ko\n\n  kernel/net/vmw_vsock/vsock.ko \n",
            Path::new("/lib/modules/6.1"),
        );
        assert_eq!(
            l,
            [
                PathBuf::from("/lib/modules/6.1/kernel/drivers/virtio/virtio.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/net/vmw_vsock/vsock.ko")
            ]
        );
    }
}
