//! What a VM boots from (an image as `make rootfs` writes it) and with (QEMU and the
//! vsock backend).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Image {
    /// The image directory (what `make rootfs` wrote).
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub kernel: PathBuf,
    pub arch: Arch,
    /// The agent's initramfs stage (`initrd.cpio`): a virtio-blk root, so the VM can
    /// be saved.
    pub initrd: Option<PathBuf>,
    /// The snapshot taken after the image-build hooks, if one was.
    pub snapshot: Option<super::Snapshot>,
    /// `manifest.json`'s `minimumMemoryInMiB` (the image config's
    /// `resources[0].minimumMemoryInMiB`): the guest gets at least this much.
    pub minimum_memory_mib: Option<u32>,
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
        let manifest_path = dir.join("manifest.json");
        let booted = kernel_arch(&kernel);
        let arch = match (manifest_path.exists(), booted) {
            // Images from before manifests: the kernel says what it is.
            (false, Some(k)) => k,
            _ => arch_of(&read_manifest(&manifest_path)?)?,
        };
        if let Some(k) = booted.filter(|k| *k != arch) {
            return Err(format!(
                "{}: the manifest says {}, but vmlinuz is an {} kernel: rebuild the image",
                dir.display(),
                arch.model_name(),
                k.model_name()
            ));
        }
        let manifest = read_manifest(&manifest_path)?;
        let snapshot = match manifest.get("snapshot") {
            None | Some(serde_json::Value::Null) => None,
            Some(s) => {
                let s: super::Snapshot = serde_json::from_value(s.clone())
                    .map_err(|e| format!("{}: snapshot: {e}: rebuild the image", dir.display()))?;
                for f in [&s.memory, &s.disk] {
                    if !dir.join(f).is_file() {
                        return Err(format!(
                            "{}: the snapshot's {f} is missing: rebuild the image",
                            dir.display()
                        ));
                    }
                }
                Some(s)
            }
        };
        let initrd = Some(dir.join("initrd.cpio")).filter(|p| p.is_file());
        use microvm_protocol::limits::MINIMUM_MEMORY_MIB;
        let minimum_memory_mib = match manifest.get("minimumMemoryInMiB") {
            None | Some(serde_json::Value::Null) => None,
            Some(m) => Some(
                m.as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| MINIMUM_MEMORY_MIB.contains(m))
                    .ok_or_else(|| {
                        format!(
                            "{}: minimumMemoryInMiB {m} is not {}-{}: rebuild the image",
                            dir.display(),
                            MINIMUM_MEMORY_MIB.start(),
                            MINIMUM_MEMORY_MIB.end()
                        )
                    })?,
            ),
        };
        Ok(Image {
            minimum_memory_mib,
            dir,
            rootfs,
            kernel,
            arch,
            initrd,
            snapshot,
        })
    }
}

/// What an image records about itself (`manifest.json`). Images from before
/// manifests existed were all x86_64 (an empty record says so); a manifest that is
/// there but unreadable is an error, never a guess.
pub fn read_manifest(manifest: &Path) -> Result<serde_json::Value, String> {
    let text = match std::fs::read_to_string(manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(serde_json::json!({"architecture": "X86_64"}))
        }
        Err(e) => return Err(format!("read {}: {e}", manifest.display())),
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not JSON ({e}): rebuild the image", manifest.display()))?;
    arch_of(&v).map_err(|e| format!("{}: {e}: rebuild the image", manifest.display()))?;
    Ok(v)
}

/// The architecture a kernel image is for, from its boot header: an arm64 `Image`
/// has the magic `ARM\x64` at 0x38, an x86 bzImage `HdrS` at 0x202; None for
/// anything else.
pub fn kernel_arch(kernel: &Path) -> Option<Arch> {
    use std::io::Read;
    let mut head = [0u8; 0x206];
    let mut f = std::fs::File::open(kernel).ok()?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    if n >= 0x3c && &head[0x38..0x3c] == b"ARM\x64" {
        Some(Arch::Arm64)
    } else if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Some(Arch::X86_64)
    } else {
        None
    }
}

fn arch_of(manifest: &serde_json::Value) -> Result<Arch, String> {
    match manifest.get("architecture").and_then(|a| a.as_str()) {
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
        let arch = |s: &str| arch_of(&serde_json::from_str(s).unwrap());
        assert_eq!(
            arch(r#"{"architecture":"ARM_64","kernelRelease":"6.1"}"#),
            Ok(Arch::Arm64)
        );
        assert_eq!(arch(r#"{"architecture":"X86_64"}"#), Ok(Arch::X86_64));
        assert!(arch(r#"{"architecture":"aarch64"}"#)
            .unwrap_err()
            .contains("not one of X86_64, ARM_64"));
        assert!(arch(r#"{"kernelRelease":"6.1"}"#)
            .unwrap_err()
            .contains("no \"architecture\""));
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
        std::fs::write(dir.join("manifest.json"), "[").unwrap();
        let e = Image::open(&dir).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        // The image's memory floor, when it has one, within the model's reach.
        let with_min = |m: &str| {
            std::fs::write(
                dir.join("manifest.json"),
                format!(r#"{{"architecture":"X86_64","minimumMemoryInMiB":{m}}}"#),
            )
            .unwrap();
            Image::open(&dir)
        };
        assert_eq!(with_min("256").unwrap().minimum_memory_mib, Some(256));
        assert_eq!(with_min("null").unwrap().minimum_memory_mib, None);
        for bad in ["32", "-1", "\"256\"", "4294967296"] {
            let e = with_min(bad).unwrap_err();
            assert!(
                e.contains("minimumMemoryInMiB") && e.contains("rebuild"),
                "{e}"
            );
        }
        // A snapshot whose files are gone is an error, not a cold boot in disguise.
        std::fs::write(
            dir.join("manifest.json"),
            r#"{"architecture":"X86_64","snapshot":{"memory":"m.zst","disk":"d.qcow2",
                "memorySnapshotSizeInBytes":1,"diskSnapshotSizeInBytes":1,"memoryMiB":128,
                "kernelCommandLine":"x","createdAt":"2026-11-22T00:00:00Z","saveMs":1}}"#,
        )
        .unwrap();
        let e = Image::open(&dir).unwrap_err();
        assert!(e.contains("m.zst is missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kernel_names_its_architecture_and_a_manifest_that_disagrees_is_refused() {
        let dir = std::env::temp_dir().join(format!("image-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rootfs.ext4"), b"").unwrap();
        let mut arm = vec![0u8; 0x400];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let mut x86 = vec![0u8; 0x400];
        x86[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(dir.join("vmlinuz"), &arm).unwrap();
        assert_eq!(kernel_arch(&dir.join("vmlinuz")), Some(Arch::Arm64));
        // No manifest: the kernel decides (an arm64 image is never booted as x86).
        assert_eq!(Image::open(&dir).unwrap().arch, Arch::Arm64);
        std::fs::write(dir.join("manifest.json"), r#"{"architecture":"X86_64"}"#).unwrap();
        let e = Image::open(&dir).unwrap_err();
        assert!(
            e.contains("says X86_64") && e.contains("ARM_64 kernel"),
            "{e}"
        );
        std::fs::write(dir.join("vmlinuz"), &x86).unwrap();
        assert_eq!(Image::open(&dir).unwrap().arch, Arch::X86_64);
        std::fs::write(dir.join("vmlinuz"), b"short").unwrap();
        assert_eq!(kernel_arch(&dir.join("vmlinuz")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
