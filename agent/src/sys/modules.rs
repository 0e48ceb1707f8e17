//! Kernel modules the image lists, loaded with finit_module(2) (real guest only: in a
//! test namespace the kernel is the host's).

use std::path::{Path, PathBuf};

/// The image's list of modules to load, one path per line relative to
/// `/lib/modules/<release>/`, in load order.
pub const MODULE_LIST: &str = "/etc/microvm/modules";

/// Module paths from the image's list: comments and blanks skipped, order kept.
pub fn parse_module_list(text: &str, base: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| base.join(l))
        .collect()
}

/// Load the image's modules ([`MODULE_LIST`]).
pub fn load_modules() -> Vec<String> {
    load_list(Path::new(MODULE_LIST))
}

/// Load the modules `list` names with finit_module(2), in order. Already loaded (or
/// built in) is fine; a failure is reported and the rest still load. No list: nothing
/// to load.
pub fn load_list(list: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(list) else {
        return Vec::new();
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = Path::new("/lib/modules").join(release);
    let mut failures = Vec::new();
    let t0 = std::time::Instant::now();
    let list_path = list;
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
        list = %list_path.display(),
        modules = list.len(),
        ms = t0.elapsed().as_millis() as u64,
        "modules loaded"
    );
    failures
}

/// Where the kernel finds its module loader for autoloading.
pub const MODPROBE_SYSCTL: &str = "/proc/sys/kernel/modprobe";

/// Switch off the kernel's module autoloading (`request_module` answers ENOENT for
/// an empty `kernel.modprobe`). A real guest only: the sysctl is the machine's.
pub fn disable_autoload() -> std::io::Result<()> {
    std::fs::write(MODPROBE_SYSCTL, "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
