//! A real guest: QEMU (software emulation) with a vhost-device-vsock backend, driven
//! over the Firecracker-style hybrid vsock Unix socket (`CONNECT <port>\n` -> `OK <n>\n`).
//!
//! Rules from ../shared/notes/vm-testbed.md that this code keeps: the host never
//! connects before the guest has announced itself (the agent connects to the host's
//! announce port); an early connection closed before `OK` is retried; the backend
//! outlives QEMU, so both are killed by PID; a fresh socket directory per VM; QEMU's
//! exit code says nothing, the serial log and the agent's answers do.

use crate::{read_reply, Reply};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest port of the agent's control channel.
pub const CONTROL_PORT: u32 = 9000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Quiet time around a pause: vhost-device-vsock 0.3.0 can wedge for good when the VM
/// is stopped while vsock packets are in flight, or a CONNECT arrives while the device
/// restarts after `cont` (the same family as the boot-time pitfall in vm-testbed.md).
pub const PAUSE_SETTLE: Duration = Duration::from_millis(300);

/// The guest port of the agent's ingress.
pub const INGRESS_PORT: u32 = 9080;
/// The host port the agent announces itself on.
pub const ANNOUNCE_PORT: u32 = 9999;

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

/// Where QEMU and the backend come from.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/bin")
        .join(name);
    if local.is_file() {
        return local;
    }
    PathBuf::from(name)
}

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

#[derive(Debug, Clone)]
pub struct VmOpts {
    pub mem_mib: u32,
    pub cid: u32,
    /// Extra kernel command-line words (`microvm.log=debug`, ...).
    pub cmdline: String,
    pub boot_timeout: Duration,
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            mem_mib: 128,
            cid: 3,
            cmdline: String::new(),
            boot_timeout: Duration::from_secs(60),
        }
    }
}

pub struct Vm {
    pub dir: PathBuf,
    /// None until started; Drop kills whatever exists.
    qemu: std::sync::Mutex<Option<Child>>,
    backend: Child,
    /// QEMU start to the agent's announcement.
    pub boot_time: Duration,
    /// What the agent announced (JSON).
    pub announced: Value,
    pub started: Instant,
}

/// Children die with the thread that started them, even if it is SIGKILLed: no
/// QEMU or backend may outlive its runner.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

impl Vm {
    pub fn boot(image: &Image, opts: &VmOpts, dir: &Path) -> Result<Vm, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let vhost = dir.join("vhost.sock");
        let uds = dir.join("vm.vsock");
        let backend = die_with_parent(&mut Command::new(tool("vhost-device-vsock")))
            .arg("--guest-cid")
            .arg(opts.cid.to_string())
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("backend.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("start vhost-device-vsock: {e}"))?;
        // From here on, Drop cleans up whatever was started.
        let mut vm = Vm {
            dir: dir.to_path_buf(),
            qemu: std::sync::Mutex::new(None),
            backend,
            boot_time: Duration::ZERO,
            announced: Value::Null,
            started: Instant::now(),
        };
        if !wait_for(&vhost, Duration::from_secs(10)) {
            return Err("vhost-device-vsock did not create its socket".into());
        }
        // Listen for the announcement before the guest can make it.
        let announce = UnixListener::bind(dir.join(format!("vm.vsock_{ANNOUNCE_PORT}")))
            .map_err(|e| e.to_string())?;
        announce.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mem = format!("{}M", opts.mem_mib);
        let append = format!(
            "console=ttyS0 panic=-1 loglevel=4 root=/dev/nvme0n1 rootfstype=ext4 rw \
             microvm.announce={ANNOUNCE_PORT} {}",
            opts.cmdline
        );
        vm.started = Instant::now();
        let qemu = die_with_parent(&mut Command::new(tool("qemu-system-x86_64")))
            .args([
                "-M",
                "q35,memory-backend=mem",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ])
            .args(["-m", &mem, "-smp", "1"])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
            .arg("-chardev")
            .arg(format!("socket,id=vs0,path={}", vhost.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vs0"])
            .args([
                "-display",
                "none",
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("serial.log").display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ))
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-append")
            .arg(append)
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=root,format=raw,snapshot=on",
                image.rootfs.display()
            ))
            .args(["-device", "nvme,drive=root,serial=root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("start qemu: {e}"))?;
        vm.qemu = std::sync::Mutex::new(Some(qemu));
        loop {
            match announce.accept() {
                Ok((mut s, _)) => {
                    vm.boot_time = vm.started.elapsed();
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut line = String::new();
                    let _ = s.read_to_string(&mut line);
                    vm.announced = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
                    return Ok(vm);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("announce listener: {e}")),
            }
            if let Some(st) = vm.exited() {
                return Err(format!(
                    "qemu exited during boot ({st}); serial:\n{}",
                    vm.serial()
                ));
            }
            if vm.started.elapsed() > opts.boot_timeout {
                return Err(format!(
                    "guest did not announce itself within {:?}; serial:\n{}",
                    opts.boot_timeout,
                    vm.serial()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    /// A stream to guest `port` through the hybrid vsock socket.
    pub fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        let mut last = None;
        for _ in 0..20 {
            let started = Instant::now();
            let mut s = UnixStream::connect(self.dir.join("vm.vsock"))?;
            // A wedged backend never answers CONNECT: fail in seconds, not minutes.
            s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            // Byte by byte: whatever follows "OK <n>\n" belongs to the guest's stream.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.last() != Some(&b'\n') && line.len() < 64 {
                match s.read(&mut b) {
                    Ok(1) => line.push(b[0]),
                    _ => break,
                }
            }
            if line.starts_with(b"OK ") {
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                return Ok(s);
            }
            if line.is_empty() && started.elapsed() >= CONNECT_TIMEOUT {
                return Err(std::io::Error::other(format!(
                    "CONNECT {port}: no answer from the vsock backend within {CONNECT_TIMEOUT:?} (backend wedged?)"
                )));
            }
            // Closed before OK: the guest side was not ready; retry.
            last = Some(String::from_utf8_lossy(&line).into_owned());
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "CONNECT {port} refused: {last:?}"
        )))
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
        let mut s = self.connect(CONTROL_PORT)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        read_reply(&mut BufReader::new(s))
    }

    pub fn hook(&self, hook: &str, body: &str) -> std::io::Result<Reply> {
        self.request(
            "POST",
            &format!("{}{hook}", crate::HOOK_PREFIX),
            body.as_bytes(),
        )
    }

    pub fn status(&self) -> std::io::Result<Value> {
        Ok(self.request("GET", "/v1/status", b"")?.json())
    }

    /// One QMP command (`stop`, `cont`, ...); returns its `return` value.
    pub fn qmp(&self, command: &str) -> Result<Value, String> {
        let s = UnixStream::connect(self.dir.join("qmp.sock")).map_err(|e| format!("qmp: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut next = || -> Result<Value, String> {
            loop {
                let mut line = String::new();
                r.read_line(&mut line)
                    .map_err(|e| format!("qmp read: {e}"))?;
                if line.is_empty() {
                    return Err("qmp closed".into());
                }
                let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
                if v.get("event").is_none() {
                    return Ok(v);
                }
            }
        };
        next()?; // greeting
        for cmd in ["qmp_capabilities", command] {
            w.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let v = next()?;
            if let Some(e) = v.get("error") {
                return Err(format!("qmp {cmd}: {e}"));
            }
            if cmd == command {
                return Ok(v["return"].clone());
            }
        }
        Ok(Value::Null)
    }

    /// Pause the VM (after the agent answered /suspend), once vsock traffic settled.
    pub fn pause(&self) -> Result<(), String> {
        std::thread::sleep(PAUSE_SETTLE);
        self.qmp("stop").map(|_| ())
    }

    /// Continue a paused VM; the device restarts before the first CONNECT.
    pub fn unpause(&self) -> Result<(), String> {
        self.qmp("cont")?;
        std::thread::sleep(PAUSE_SETTLE);
        Ok(())
    }

    /// QEMU's exit status, if it has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut q = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        q.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait for QEMU to exit (power-off), true if it did within `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            let running = self.qemu.lock().map(|q| q.is_some()).unwrap_or(false);
            if !running || self.exited().is_some() {
                return true;
            }
            if t0.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(q) = self.qemu.get_mut() {
            if let Some(c) = q.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}
