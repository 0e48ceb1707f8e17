//! What a VM boots from (an image as `make rootfs` writes it) and with (QEMU and the
//! vsock backend).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
}

impl Image {
    /// An image directory as `make rootfs` writes it (rootfs.ext4 + vmlinuz), or the
    /// path of a rootfs.ext4 with vmlinuz beside it.
    pub fn open(path: &Path) -> Result<Image, String> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let rootfs = if path.is_dir() {
            dir.join("rootfs.ext4")
        } else {
            path.to_path_buf()
        };
        let kernel = dir.join("vmlinuz");
        for p in [&rootfs, &kernel] {
            if !p.is_file() {
                return Err(format!(
                    "{} not found: build the image with `make rootfs` first",
                    p.display()
                ));
            }
        }
        Ok(Image { rootfs, kernel })
    }
}

/// Where QEMU and the backend come from: the checkout's `.tools/bin` (where `make
/// setup` installs vhost-device-vsock) if this build came from one that has it,
/// else `PATH`.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/bin")
        .join(name);
    if local.is_file() {
        return local;
    }
    PathBuf::from(name)
}

/// Whether QEMU and the backend can be started; the error says what to install.
pub fn tools_available() -> Result<(), String> {
    for t in ["qemu-system-x86_64", "vhost-device-vsock"] {
        let ok = Command::new(tool(t))
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Err(format!("{t} not found: run `make setup`"));
        }
    }
    Ok(())
}
