//! A real guest: QEMU (software emulation) with a vhost-device-vsock backend, driven
//! over the Firecracker-style hybrid vsock Unix socket (`CONNECT <port>\n` -> `OK <n>\n`).
//!
//! Rules from ../shared/notes/vm-testbed.md that this code keeps: the host never
//! connects before the guest has announced itself (the agent connects to the host's
//! announce port); an early connection closed before `OK` is retried; the backend
//! outlives QEMU, so both are killed by PID; a fresh socket directory per VM; QEMU's
//! exit code says nothing, the serial log and the agent's answers do.

mod image;
mod qmp;
mod vsock;

pub use image::{tool, tools_available, tools_available_for, Arch, Image};
pub use qmp::PAUSE_SETTLE;

use serde_json::Value;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The host port the agent announces itself on (`microvm.announce=`): the host's
/// choice, passed on the kernel command line.
pub const ANNOUNCE_PORT: u32 = 9999;

#[derive(Debug, Clone)]
pub struct VmOpts {
    pub mem_mib: u32,
    pub cid: u32,
    /// Extra kernel command-line words (`microvm.log=debug`, ...).
    pub cmdline: String,
    pub boot_timeout: Duration,
    /// A NIC with QEMU user-mode networking; None: loopback only.
    pub net: Option<NetOpts>,
}

/// The guest's NIC: QEMU user-mode networking (10.0.2.0/24, the guest 10.0.2.15, the
/// gateway 10.0.2.2, DNS 10.0.2.3).
#[derive(Debug, Clone)]
pub struct NetOpts {
    /// Guest port on [`FORWARD_ADDR`] -> a TCP address on this machine, one
    /// connection each through `bridge`.
    pub forwards: Vec<(u16, std::net::SocketAddr)>,
    /// A program QEMU runs as `<bridge> bridge HOST:PORT` per forwarded connection
    /// (the `microvm-local` binary).
    pub bridge: PathBuf,
    /// Full NAT egress to wherever this machine reaches. Off by default (restricted:
    /// only the forwards); no test ever turns it on.
    pub open_egress: bool,
}

/// Where forwarded endpoints appear in the guest (QEMU refuses a forward on the
/// gateway's own address).
pub const FORWARD_ADDR: &str = "10.0.2.100";
/// The agent's network parameters for user-mode networking.
pub const GUEST_NET_CMDLINE: &str =
    "microvm.ip=10.0.2.15/24 microvm.gateway=10.0.2.2 microvm.dns=10.0.2.3";

/// QEMU's `-netdev` value for `net`.
pub fn netdev_arg(net: &NetOpts) -> Result<String, String> {
    let bridge = net.bridge.to_str().ok_or("bridge path is not UTF-8")?;
    // QEMU's option syntax: a comma inside a value is written twice.
    if bridge.contains([' ', '\'', '"']) {
        return Err(format!(
            "bridge path {bridge:?} may hold no spaces or quotes"
        ));
    }
    let mut arg = format!(
        "user,id=n0,net=10.0.2.0/24,restrict={}",
        if net.open_egress { "off" } else { "on" }
    );
    for (port, host) in &net.forwards {
        arg.push_str(&format!(
            ",guestfwd=tcp:{FORWARD_ADDR}:{port}-cmd:{} bridge {host}",
            bridge.replace(',', ",,")
        ));
    }
    Ok(arg)
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            mem_mib: 128,
            cid: 3,
            cmdline: String::new(),
            boot_timeout: Duration::from_secs(60),
            net: None,
        }
    }
}

pub struct Vm {
    pub dir: PathBuf,
    /// None until started; Drop kills whatever exists.
    qemu: Mutex<Option<Child>>,
    backend: Child,
    /// QEMU start to the agent's announcement.
    pub boot_time: Duration,
    /// What the agent announced (JSON), as sent: older agents send fewer fields.
    pub announced: Value,
    pub started: Instant,
}

/// Children die with the thread that started them, even if it is SIGKILLed: no
/// QEMU or backend may outlive its runner.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // A process group of its own: Ctrl-C in the terminal reaches the runner only,
    // which terminates the MicroVM cleanly; QEMU must not quit under the agent.
    cmd.process_group(0);
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

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, String> {
    let p = dir.join(name);
    std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
}

impl Vm {
    pub fn boot(image: &Image, opts: &VmOpts, dir: &Path) -> Result<Vm, String> {
        if let Some(net) = &opts.net {
            netdev_arg(net)?;
        }
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
            .stderr(log_file(dir, "backend.log")?)
            .spawn()
            .map_err(|e| format!("start vhost-device-vsock: {e}"))?;
        // From here on, Drop cleans up whatever was started.
        let mut vm = Vm {
            dir: dir.to_path_buf(),
            qemu: Mutex::new(None),
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
        vm.started = Instant::now();
        let qemu = die_with_parent(&mut qemu_command(image, opts, dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?)
            .spawn()
            .map_err(|e| {
                format!(
                    "start {}: {e} (`make setup` installs it)",
                    image.arch.qemu()
                )
            })?;
        vm.qemu = Mutex::new(Some(qemu));
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
            if crate::signals::stopping() {
                return Err("stopped during boot".into());
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

    /// The contract version the agent announced; `None` for agents older than the
    /// versioned contract, which announce without it.
    pub fn protocol_version(&self) -> Option<u64> {
        self.announced.get("protocolVersion")?.as_u64()
    }

    /// The agent's own version, when it announced one.
    pub fn agent_version(&self) -> Option<&str> {
        self.announced.get("agentVersion")?.as_str()
    }

    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
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

fn qemu_command(image: &Image, opts: &VmOpts, dir: &Path) -> Command {
    let mem = format!("{}M", opts.mem_mib);
    let append = format!(
        "console={} panic=-1 loglevel=4 root=/dev/nvme0n1 rootfstype=ext4 rw \
         microvm.announce={ANNOUNCE_PORT} {} {}",
        image.arch.console(),
        if opts.net.is_some() {
            GUEST_NET_CMDLINE
        } else {
            ""
        },
        opts.cmdline
    );
    let mut c = Command::new(tool(image.arch.qemu()));
    c.args(image.arch.machine_args())
        .args(["-accel", "tcg"])
        .args(["-m", &mem, "-smp", "1"])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .arg("-chardev")
        .arg(format!(
            "socket,id=vs0,path={}",
            dir.join("vhost.sock").display()
        ))
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
        .args(["-device", "nvme,drive=root,serial=root"]);
    if let Some(net) = &opts.net {
        // Checked in `boot` before QEMU starts; an error here leaves the NIC out.
        if let Ok(arg) = netdev_arg(net) {
            c.arg("-netdev")
                .arg(arg)
                .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        }
    }
    c
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
        // Sockets and logs of a VM that is gone; kept when the caller asked for them.
        if std::env::var_os("MICROVM_LOCAL_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
