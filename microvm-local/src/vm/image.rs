//! What a VM boots from (an image as `make rootfs` writes it) and with (QEMU and the
//! vsock backend).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub arch: Arch,
}

/// The CPU architecture an image is built for, by the service model's names
/// (`cpuConfigurations`: `X86_64`, `ARM_64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// From `manifest.json`'s `architecture`.
    pub fn from_model(name: &str) -> Result<Arch, String> {
        match name {
            "X86_64" => Ok(Arch::X86_64),
            "ARM_64" => Ok(Arch::Arm64),
            other => Err(format!(
                "architecture {other:?} is not one of X86_64, ARM_64"
            )),
        }
    }

    pub fn model_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "X86_64",
            Arch::Arm64 => "ARM_64",
        }
    }

    /// The emulator that boots it.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// Machine and CPU. On arm64, `-cpu max` emulates pointer authentication slowly
    /// (boots take about 4x longer); a Cortex-A72 has none.
    pub fn machine_args(self) -> [&'static str; 4] {
        match self {
            Arch::X86_64 => ["-M", "q35,memory-backend=mem", "-cpu", "max"],
            Arch::Arm64 => ["-M", "virt,memory-backend=mem", "-cpu", "cortex-a72"],
        }
    }

    /// The serial console the kernel writes to (8250 on q35, PL011 on virt).
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }
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
        let arch = read_arch(&dir.join("manifest.json"))?;
        Ok(Image {
            rootfs,
            kernel,
            arch,
        })
    }
}

/// The architecture an image records. Images from before manifests existed were
/// all x86_64; a manifest that is there but unreadable is an error, never a guess.
fn read_arch(manifest: &Path) -> Result<Arch, String> {
    let text = match std::fs::read_to_string(manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arch::X86_64),
        Err(e) => return Err(format!("read {}: {e}", manifest.display())),
    };
    arch_of(&text).map_err(|e| format!("{}: {e}: rebuild the image", manifest.display()))
}

fn arch_of(manifest: &str) -> Result<Arch, String> {
    let v: serde_json::Value =
        serde_json::from_str(manifest).map_err(|e| format!("not JSON ({e})"))?;
    match v.get("architecture").and_then(|a| a.as_str()) {
        Some(a) => Arch::from_model(a),
        None => Err("no \"architecture\" string".into()),
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

/// Whether QEMU for x86_64 guests and the backend can be started; the error says
/// what to install.
pub fn tools_available() -> Result<(), String> {
    tools_available_for(Arch::X86_64)
}

/// Whether the emulator for `arch` and the backend can be started.
pub fn tools_available_for(arch: Arch) -> Result<(), String> {
    for t in [arch.qemu(), "vhost-device-vsock"] {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_the_architecture_by_the_models_names() {
        assert_eq!(
            arch_of(r#"{"architecture":"ARM_64","kernelRelease":"6.1"}"#),
            Ok(Arch::Arm64)
        );
        assert_eq!(arch_of(r#"{"architecture":"X86_64"}"#), Ok(Arch::X86_64));
        assert!(arch_of(r#"{"architecture":"aarch64"}"#)
            .unwrap_err()
            .contains("not one of X86_64, ARM_64"));
        assert!(arch_of(r#"{"kernelRelease":"6.1"}"#)
            .unwrap_err()
            .contains("no \"architecture\""));
        assert!(arch_of("[").unwrap_err().contains("not JSON"));
        for a in [Arch::X86_64, Arch::Arm64] {
            assert_eq!(Arch::from_model(a.model_name()), Ok(a));
        }
    }

    #[test]
    fn an_image_without_a_manifest_is_x86_64_and_a_bad_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("image-arch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rootfs.ext4"), b"").unwrap();
        std::fs::write(dir.join("vmlinuz"), b"").unwrap();
        assert_eq!(Image::open(&dir).unwrap().arch, Arch::X86_64);
        std::fs::write(dir.join("manifest.json"), r#"{"architecture":"ARM_64"}"#).unwrap();
        assert_eq!(Image::open(&dir).unwrap().arch, Arch::Arm64);
        std::fs::write(dir.join("manifest.json"), "{}").unwrap();
        let e = Image::open(&dir).unwrap_err();
        assert!(e.contains("manifest.json") && e.contains("rebuild"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
