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
pub mod snapshot;
mod vsock;

pub use image::{tool, tools_available, tools_available_for, Arch, Image};
pub use qmp::{Qmp, PAUSE_SETTLE};
pub use snapshot::Snapshot;
pub use vsock::{connect_hybrid, SOCKET};

use serde_json::{json, Value};
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The host port the agent announces itself on (`microvm.announce=`): the host's
/// choice, passed on the kernel command line.
pub const ANNOUNCE_PORT: u32 = 9999;

#[derive(Debug, Clone)]
pub struct VmOpts {
    pub mem_mib: u32,
    pub cid: u32,
    /// Extra kernel command-line words (`microvm.log=debug`, ...). A snapshot freezes
    /// the command line: with words here, boot cold.
    pub cmdline: String,
    pub boot_timeout: Duration,
    /// A NIC with QEMU user-mode networking; None: loopback only (on a snapshot
    /// layout the NIC is always there, restricted, with no forwards).
    pub net: Option<NetOpts>,
    /// Boot the kernel even when the image has a snapshot.
    pub cold_boot: bool,
}

/// The guest's NIC: QEMU user-mode networking (10.0.2.0/24, the guest 10.0.2.15, the
/// gateway 10.0.2.2, DNS 10.0.2.3).
#[derive(Debug, Clone, Default)]
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
            cold_boot: false,
        }
    }
}

/// How a machine is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// NVMe root (built into the kernel), vsock on the root bus: boots only cold.
    /// Images without an initramfs, and arm64 (vsock hot-unplug on `-M virt` is
    /// unverified).
    Nvme,
    /// What a save and a restore need (../shared/notes/snapshots.md): a virtio-blk
    /// root (migratable; the agent's initramfs stage mounts it) on a qcow2 overlay
    /// per VM, vsock on a PCIe root port (hot-unplugged before a save, hotplugged
    /// after a load: QEMU cannot migrate it), and always a NIC (a restoring QEMU needs
    /// the saved one's devices).
    Snapshot,
}

/// Everything needed to start this VM's QEMU again (a resume from a file).
struct Launch {
    image: Image,
    opts: VmOpts,
    layout: Layout,
    append: String,
}

pub struct Vm {
    pub dir: PathBuf,
    /// None until started and while saved to a file; Drop kills whatever exists.
    qemu: Mutex<Option<Child>>,
    backend: Mutex<Option<Child>>,
    /// QEMU start to the agent's announcement.
    pub boot_time: Duration,
    /// What the agent announced (JSON), as sent: older agents send fewer fields.
    pub announced: Value,
    pub started: Instant,
    /// Restored from the image's snapshot (its image-build hooks already ran).
    pub from_snapshot: bool,
    /// Saved to a file: no QEMU runs, yet the VM is not off.
    saved: AtomicBool,
    /// Gone for good: a save that could not be undone, or a restore that failed after
    /// the guest ran again (its memory file no longer matches its disk).
    lost: AtomicBool,
    /// A restore's `cont` was sent: from then on the guest writes to its overlay.
    continued: AtomicBool,
    /// The file under this VM's overlay as it was at boot: a rebuilt image replaces
    /// it at the same path, and a suspended VM must not wake on another disk.
    backing: Vec<(PathBuf, FileId)>,
    launch: Launch,
}

/// Which file a path names (device, inode, size, mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64, u64, i64);

impl FileId {
    fn of(path: &Path) -> Result<FileId, String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(FileId(m.dev(), m.ino(), m.size(), m.mtime()))
    }
}

/// A save's figures.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub bytes: u64,
    pub took: Duration,
}

/// Children die with the thread that started them, even if it is SIGKILLed: no
/// QEMU or backend may outlive its runner.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // QEMU must not quit under the agent: Ctrl-C reaches the runner only, and a dead
    // runner's QEMU is killed outright.
    die_with_parent_by(cmd, libc::SIGKILL)
}

/// A process group of its own (a Ctrl-C in the terminal reaches the parent only,
/// which stops its children in order) and `sig` when the parent dies.
pub(crate) fn die_with_parent_by(cmd: &mut Command, sig: libc::c_int) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Spawn `cmd` (made with [`die_with_parent`]) from one thread that lives as long as
/// the process. PR_SET_PDEATHSIG fires when the *thread* that forked the child ends:
/// a VM restored from a short-lived thread (an endpoint client's, a test's scoped
/// thread) would be killed the moment that thread returned.
pub(crate) fn spawn_kept(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut c, back) in rx {
                let _ = back.send(c.spawn());
            }
        });
        Mutex::new(tx)
    });
    let (back, answer) = std::sync::mpsc::channel();
    let sent = keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, back));
    if let Err(std::sync::mpsc::SendError((c, _))) = sent {
        // The keeper is gone (it never ends by itself): spawn here, as before.
        cmd = c;
        return cmd.spawn();
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the process keeper thread ended")))
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
    /// Start a VM from `image`: restored from its snapshot when it has one (and
    /// `opts.cold_boot` is off), else booted.
    pub fn boot(image: &Image, opts: &VmOpts, dir: &Path) -> Result<Vm, String> {
        let layout = if image.arch == Arch::X86_64 && image.initrd.is_some() {
            Layout::Snapshot
        } else {
            Layout::Nvme
        };
        let mut opts = opts.clone();
        // The image's `resources[0].minimumMemoryInMiB` is a floor, as on the
        // platform (128 MiB is tight for a Node runtime).
        opts.mem_mib = opts.mem_mib.max(image.minimum_memory_mib.unwrap_or(0));
        if layout == Layout::Snapshot && opts.net.is_none() {
            opts.net = Some(NetOpts::default());
        }
        if let Some(net) = &opts.net {
            netdev_arg(net)?;
        }
        let snapshot = match (&image.snapshot, layout, opts.cold_boot) {
            (Some(s), Layout::Snapshot, false) => Some(s.clone()),
            _ => None,
        };
        let append = match &snapshot {
            Some(s) => {
                if !opts.cmdline.is_empty() {
                    return Err(format!(
                        "kernel parameters {:?}: the image's snapshot froze its command line; boot cold to change it",
                        opts.cmdline
                    ));
                }
                if s.memory_mib != opts.mem_mib {
                    return Err(format!(
                        "the image's snapshot has {} MiB of memory, not {}",
                        s.memory_mib, opts.mem_mib
                    ));
                }
                s.kernel_command_line.clone()
            }
            None => kernel_command_line(image.arch, layout, &opts),
        };
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Who owns the directory: a runner that died unclean (SIGKILL) leaves it, and
        // the next one sweeps it (`sweep_stale`).
        own(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut backing = Vec::new();
        if layout == Layout::Snapshot {
            let (file, fmt) = match &snapshot {
                Some(s) => (image.dir.join(&s.disk), "qcow2"),
                None => (image.rootfs.clone(), "raw"),
            };
            snapshot::overlay(&file, fmt, &dir.join("disk.qcow2"))?;
            // The whole chain: the snapshot's disk is itself an overlay on the rootfs.
            let mut chain = vec![file.clone()];
            if snapshot.is_some() {
                chain.push(image.rootfs.clone());
            }
            for f in chain {
                backing.push((f.clone(), FileId::of(&f)?));
            }
        }
        // From here on, Drop cleans up whatever was started.
        let mut vm = Vm {
            dir: dir.to_path_buf(),
            qemu: Mutex::new(None),
            backend: Mutex::new(None),
            boot_time: Duration::ZERO,
            announced: Value::Null,
            started: Instant::now(),
            from_snapshot: snapshot.is_some(),
            saved: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            continued: AtomicBool::new(false),
            backing,
            launch: Launch {
                image: image.clone(),
                opts,
                layout,
                append,
            },
        };
        let memory = snapshot.as_ref().map(|s| image.dir.join(&s.memory));
        vm.announced = vm.start(memory.as_deref(), true)?;
        vm.boot_time = vm.started.elapsed();
        Ok(vm)
    }

    /// How this VM is put together.
    pub fn layout(&self) -> Layout {
        self.launch.layout
    }

    /// The guest's memory: the options' or the image's minimum, whichever is more.
    pub fn memory_mib(&self) -> u32 {
        self.launch.opts.mem_mib
    }

    /// Start the backend and QEMU (booting, or loading `incoming`, a saved memory
    /// file), and wait for the agent's announcement; returns it. A stop signal cancels
    /// it when `cancellable` (a restore that terminate needs is not).
    fn start(&self, incoming: Option<&Path>, cancellable: bool) -> Result<Value, String> {
        // A failed earlier attempt may have left processes (one holding the disk's
        // lock): a start begins from none.
        self.kill_qemu();
        self.kill_backend();
        let dir = &self.dir;
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        self.start_backend()?;
        // Listen for the announcement before the guest can make it.
        let announce = self.announce_listener()?;
        let t0 = Instant::now();
        let image = &self.launch.image;
        let mut cmd = qemu_command(&self.launch, dir, incoming)?;
        die_with_parent(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "qemu.log")?);
        let qemu = spawn_kept(cmd).map_err(|e| {
            format!(
                "start {}: {e} (`make setup` installs it)",
                image.arch.qemu()
            )
        })?;
        *self.qemu.lock().unwrap_or_else(|p| p.into_inner()) = Some(qemu);
        if incoming.is_some() {
            let mut q = self.qmp_session()?;
            q.wait_migration(Duration::from_secs(120))
                .map_err(|e| format!("load: {e}"))?;
            self.attach_vsock(&mut q)?;
            self.continued.store(true, Ordering::SeqCst);
            q.execute("cont", Value::Null)?;
            // The guest runs again: cancelling now would throw away a restore that is
            // working (the memory file cannot be loaded a second time).
            return self.wait_announcement(&announce, t0, false);
        }
        self.wait_announcement(&announce, t0, cancellable)
    }

    /// A vhost-device-vsock backend for this VM's CID, on fresh sockets.
    fn start_backend(&self) -> Result<(), String> {
        self.kill_backend();
        let dir = &self.dir;
        let vhost = dir.join("vhost.sock");
        let uds = dir.join(SOCKET);
        for stale in [&vhost, &uds] {
            let _ = std::fs::remove_file(stale);
        }
        let mut backend = Command::new(tool("vhost-device-vsock"));
        die_with_parent(&mut backend)
            .arg("--guest-cid")
            .arg(self.launch.opts.cid.to_string())
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "backend.log")?);
        let backend = spawn_kept(backend).map_err(|e| format!("start vhost-device-vsock: {e}"))?;
        *self.backend.lock().unwrap_or_else(|p| p.into_inner()) = Some(backend);
        if !wait_for(&vhost, Duration::from_secs(10)) {
            return Err("vhost-device-vsock did not create its socket".into());
        }
        Ok(())
    }

    /// Where the agent's announcement arrives (the backend's `<uds>_<port>`).
    fn announce_listener(&self) -> Result<UnixListener, String> {
        let path = self.dir.join(format!("{SOCKET}_{ANNOUNCE_PORT}"));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(l)
    }

    /// The agent's announcement line (JSON; an empty or garbled line is no
    /// announcement), within the boot timeout from `t0`.
    fn wait_announcement(
        &self,
        announce: &UnixListener,
        t0: Instant,
        cancellable: bool,
    ) -> Result<Value, String> {
        loop {
            match announce.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut line = String::new();
                    let _ = s.read_to_string(&mut line);
                    match serde_json::from_str::<Value>(line.trim()) {
                        Ok(v) if v["event"] == "ready" => {
                            let cid = self.launch.opts.cid;
                            if v["cid"].as_u64().is_some_and(|c| c != u64::from(cid)) {
                                eprintln!(
                                    "microvm-local: warning: the agent announced CID {}, not {cid}",
                                    v["cid"]
                                );
                            }
                            return Ok(v);
                        }
                        _ => eprintln!("microvm-local: not an announcement: {line:?}"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("announce listener: {e}")),
            }
            if let Some(st) = self.exited() {
                return Err(format!(
                    "qemu exited during boot ({st}); serial:\n{}\nqemu:\n{}",
                    self.serial(),
                    std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
                ));
            }
            if cancellable && crate::signals::stopping() {
                return Err("stopped during boot".into());
            }
            if t0.elapsed() > self.launch.opts.boot_timeout {
                return Err(format!(
                    "guest did not announce itself within {:?}; serial:\n{}",
                    self.launch.opts.boot_timeout,
                    self.serial()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The vsock device back on its root port (after a load, or when a save is
    /// undone): QEMU cannot migrate it. The agent notices and announces itself again.
    fn attach_vsock(&self, q: &mut Qmp) -> Result<(), String> {
        q.execute(
            "chardev-add",
            json!({"id": VSOCK_CHARDEV, "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": self.dir.join("vhost.sock")}},
                "server": false}}}),
        )?;
        self.add_vsock_device(q)
    }

    fn add_vsock_device(&self, q: &mut Qmp) -> Result<(), String> {
        q.execute(
            "device_add",
            json!({"driver": "vhost-user-vsock-pci", "chardev": VSOCK_CHARDEV,
                   "id": VSOCK_DEVICE, "bus": ROOT_PORT}),
        )?;
        Ok(())
    }

    /// A QMP session, once QEMU has made its socket.
    fn qmp_session(&self) -> Result<Qmp, String> {
        let path = self.dir.join("qmp.sock");
        let t0 = Instant::now();
        loop {
            match Qmp::connect(&path) {
                Ok(q) => return Ok(q),
                Err(e) if t0.elapsed() > Duration::from_secs(10) => return Err(e),
                Err(_) => {
                    if let Some(st) = self.exited() {
                        return Err(format!(
                            "qemu exited ({st}): {}",
                            std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Save the VM's memory and device state to `file` (zstd) and end its QEMU and
    /// backend: the VM then costs no CPU and no memory. Its disk stays in the VM's
    /// overlay. Only a [`Layout::Snapshot`] VM can be saved. A save that fails is
    /// undone (the VM runs on, vsock back) or, if even that fails, the VM is
    /// [`Vm::lost`]; the error says which.
    pub fn save(&self, file: &Path) -> Result<Saved, String> {
        if self.launch.layout != Layout::Snapshot {
            return Err("this VM's layout cannot be saved (NVMe root or arm64): boot it from an image with an initramfs".into());
        }
        let t0 = Instant::now();
        // Quiet vsock first (see PAUSE_SETTLE), then the device goes: QEMU refuses to
        // migrate vhost-user-vsock.
        std::thread::sleep(PAUSE_SETTLE);
        let mut q = self.qmp_session()?;
        let mut done = SaveSteps::default();
        let tmp = file.with_extension("partial");
        let r = self.save_steps(&mut q, &tmp, &mut done).and_then(|()| {
            std::fs::rename(&tmp, file).map_err(|e| format!("save {}: {e}", file.display()))
        });
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(match self.undo_save(&mut q, done) {
                Ok(()) => format!("save failed ({e}); undone: the VM runs on as before"),
                Err(undo) => {
                    self.lose();
                    format!("save failed ({e}), and undoing it failed ({undo}): the VM is gone")
                }
            });
        }
        // Saved from here on: QEMU's exit is no power-off (a caller waiting for one,
        // the runner's main loop, must not take it for the end of the MicroVM).
        self.saved.store(true, Ordering::SeqCst);
        let _ = q.execute("quit", Value::Null);
        drop(q);
        self.wait_qemu(Duration::from_secs(20));
        self.kill_qemu();
        self.kill_backend();
        let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        Ok(Saved {
            bytes,
            took: t0.elapsed(),
        })
    }

    /// Unplug vsock, stop, and migrate into a zstd this runner owns: QEMU's own
    /// `exec:` child is SIGTERMed when the migration channel closes, possibly before
    /// its last block is out, so the runner hands QEMU a pipe (`getfd`) and waits for
    /// its compressor's exit status itself. `tmp` is whole when this returns Ok.
    fn save_steps(&self, q: &mut Qmp, tmp: &Path, done: &mut SaveSteps) -> Result<(), String> {
        q.execute("device_del", json!({"id": VSOCK_DEVICE}))?;
        done.unplug_asked = true;
        q.wait_event(
            "DEVICE_DELETED",
            |d| d["device"] == VSOCK_DEVICE,
            Duration::from_secs(15),
        )
        .map_err(|e| format!("vsock unplug: {e}"))?;
        done.unplugged = true;
        q.execute("chardev-remove", json!({"id": VSOCK_CHARDEV}))?;
        done.chardev_removed = true;
        q.execute("stop", Value::Null)?;
        done.stopped = true;
        let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        let out = std::fs::File::create(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut zstd = Command::new("zstd");
        die_with_parent(&mut zstd)
            .args(["-q", "-1", "-c"])
            .stdin(reader)
            .stdout(out)
            .stderr(log_file(&self.dir, "zstd.log")?);
        let mut zstd =
            spawn_kept(zstd).map_err(|e| format!("zstd: {e} (`make setup` installs it)"))?;
        let migrated = (|| {
            use std::os::fd::AsFd;
            q.execute_with_fd("getfd", json!({"fdname": MIGRATION_FD}), writer.as_fd())?;
            // QEMU holds the only write end now: its close at the end is zstd's EOF.
            drop(writer);
            q.execute("migrate", json!({"uri": format!("fd:{MIGRATION_FD}")}))?;
            q.wait_migration(Duration::from_secs(300))
                .map_err(|e| format!("save: {e}"))
        })();
        if let Err(e) = migrated {
            // QEMU refuses device_add while a migration is active: end it first.
            let _ = q.execute("migrate_cancel", Value::Null);
            let _ = zstd.kill();
            let _ = zstd.wait();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                match q.execute("query-migrate", Value::Null) {
                    Ok(st)
                        if matches!(
                            st["status"].as_str(),
                            Some("active" | "setup" | "cancelling")
                        ) =>
                    {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => break,
                }
            }
            return Err(e);
        }
        let t0 = Instant::now();
        loop {
            match zstd.try_wait() {
                Ok(Some(st)) if st.success() => break,
                Ok(Some(st)) => return Err(format!("zstd ended with {st}")),
                Ok(None) if t0.elapsed() > Duration::from_secs(60) => {
                    let _ = zstd.kill();
                    let _ = zstd.wait();
                    return Err("zstd did not finish within 60 s of the migration".into());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    let _ = zstd.kill();
                    let _ = zstd.wait();
                    return Err(format!("zstd: {e}"));
                }
            }
        }
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))
    }

    /// Undo what a failed save did, newest first; the VM runs again with vsock.
    fn undo_save(&self, q: &mut Qmp, done: SaveSteps) -> Result<(), String> {
        let mut done = done;
        if done.unplug_asked && !done.unplugged {
            // The unplug was asked and not seen through: the guest may still let the
            // device go. Wait until it is known either way (the VM was never stopped).
            let t0 = Instant::now();
            loop {
                if !vsock_present(q)? {
                    done.unplugged = true;
                    break;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let announce = if done.unplugged {
            if done.chardev_removed {
                // The old backend served a connection that is gone: a fresh one.
                self.start_backend()?;
            }
            Some(self.announce_listener()?)
        } else {
            None
        };
        if done.unplugged {
            if done.chardev_removed {
                self.attach_vsock(q)?;
            } else {
                self.add_vsock_device(q)?;
            }
        }
        if done.stopped {
            // After a completed migration too: `cont` takes the disks back.
            q.execute("cont", Value::Null)?;
        }
        match announce {
            Some(a) => self
                .wait_announcement(&a, Instant::now(), false)
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// Gone for good: nothing runs, nothing of it can be restored.
    fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.saved.store(false, Ordering::SeqCst);
        self.kill_qemu();
        self.kill_backend();
        let _ = std::fs::remove_file(self.suspend_file());
    }

    /// Give up a VM that cannot be restored: nothing of it runs or stays.
    pub fn discard(&self) {
        self.lose();
    }

    /// Saved to a file and not restored since.
    pub fn saved(&self) -> bool {
        self.saved.load(Ordering::SeqCst)
    }

    /// The VM is gone for good (see [`Vm::save`], [`Vm::resume_from_file`]).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Where a suspended VM's memory lives.
    fn suspend_file(&self) -> PathBuf {
        self.dir.join(SUSPEND_FILE)
    }

    /// Suspend through a file: save and end the VM (after the agent's /suspend).
    pub fn suspend_to_file(&self) -> Result<Saved, String> {
        let saved = self.save(&self.suspend_file())?;
        self.saved.store(true, Ordering::SeqCst);
        Ok(saved)
    }

    /// Stop the VM after its agent answered /suspend: saved to a file where the
    /// layout allows (then `Some`), else paused in memory (QMP stop).
    pub fn park(&self) -> Result<Option<Saved>, String> {
        match self.launch.layout {
            Layout::Snapshot => self.suspend_to_file().map(Some),
            Layout::Nvme => self.pause().map(|_| None),
        }
    }

    /// Undo [`Vm::park`]: restored from the file (`Some`: how long it took, to the
    /// agent's announcement) or continued.
    pub fn unpark(&self) -> Result<Option<Duration>, String> {
        self.unpark_for(true)
    }

    /// [`Vm::unpark`]; a stop signal cancels it only when `cancellable` (terminating
    /// a suspended VM must still restore it, so that its application hears of it).
    pub fn unpark_for(&self, cancellable: bool) -> Result<Option<Duration>, String> {
        if self.saved.load(Ordering::SeqCst) {
            return self.restore(cancellable).map(Some);
        }
        self.unpause().map(|_| None)
    }

    /// Restore a VM suspended to its file, and wait for its agent's announcement;
    /// the file is removed once loaded.
    pub fn resume_from_file(&self) -> Result<Duration, String> {
        self.restore(true)
    }

    fn restore(&self, cancellable: bool) -> Result<Duration, String> {
        let file = self.suspend_file();
        if self.lost() || !file.is_file() {
            return Err(format!(
                "{} is not there: the VM is not suspended to a file",
                file.display()
            ));
        }
        for (path, id) in &self.backing {
            if FileId::of(path).ok().as_ref() != Some(id) {
                self.lose();
                return Err(format!(
                    "{} changed while this MicroVM was suspended (the image was rebuilt): its disk is gone, and so is the MicroVM",
                    path.display()
                ));
            }
        }
        let t0 = Instant::now();
        self.continued.store(false, Ordering::SeqCst);
        if let Err(e) = self.start(Some(&file), cancellable) {
            if self.continued.load(Ordering::SeqCst) {
                // The guest ran and wrote to its overlay: the file's memory no longer
                // matches the disk, and loading it again would corrupt it.
                self.lose();
                return Err(format!(
                    "{e}; the guest had run again after the load: the MicroVM is gone"
                ));
            }
            self.kill_qemu();
            self.kill_backend();
            return Err(e);
        }
        self.saved.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&file);
        Ok(t0.elapsed())
    }

    /// QEMU's pid while it runs (None before it starts and while saved to a file).
    pub fn qemu_pid(&self) -> Option<u32> {
        let mut q = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        let c = q.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    fn kill_qemu(&self) {
        if let Some(mut c) = self.qemu.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kill_backend(&self) {
        if let Some(mut c) = self
            .backend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = c.kill();
            let _ = c.wait();
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

    /// Wait for QEMU to exit (power-off), true if it did within `timeout`. A VM saved
    /// to a file (or being saved) is not off.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            let running = self.qemu.lock().map(|q| q.is_some()).unwrap_or(false);
            let saved = self.saved.load(Ordering::SeqCst);
            if self.lost() || (!saved && (!running || self.exited().is_some())) {
                return true;
            }
            if t0.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the QEMU process alone to end (after `quit`), whatever the VM's state.
    fn wait_qemu(&self, timeout: Duration) -> bool {
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

/// The runner's pid, in each VM directory.
const OWNER_FILE: &str = "owner.pid";
/// A VM suspended to a file keeps its memory here, in its directory.
const SUSPEND_FILE: &str = "suspended.mem.zst";

/// Mark `dir` as this process's: while it lives, [`runner_alive`] says so. The
/// mark is the pid and the process's start time, so that another process given
/// the same pid later (after a reboot, say) is not taken for the owner.
pub fn own(dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let mark = match start_time(pid as i32) {
        Some(t) => format!("{pid} {t}"),
        None => pid.to_string(),
    };
    // Whole or not at all: a reader never sees half a mark.
    let tmp = dir.join(format!("{OWNER_FILE}.tmp"));
    std::fs::write(&tmp, mark).and_then(|()| std::fs::rename(&tmp, dir.join(OWNER_FILE)))
}

/// A process's start time (clock ticks after boot).
fn start_time(pid: i32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/PID/stat`'s 22nd field, `starttime`.
fn stat_start_time(stat: &str) -> Option<u64> {
    // The name (field 2) is in parentheses and may hold anything, ')' included:
    // field 3 comes after the last one.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Unmark `dir` (see [`own`]): it is done, and no sweep should ever take it.
pub fn disown(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(OWNER_FILE));
}

/// The pid that marked `dir` as its own (see [`own`]).
pub fn owner(dir: &Path) -> Option<i32> {
    Some(mark(dir)?.0)
}

/// `dir`'s owner mark: the pid and, unless an older runner wrote it, its start time.
fn mark(dir: &Path) -> Option<(i32, Option<u64>)> {
    let mark = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    let mut words = mark.split_whitespace();
    let pid = words.next()?.parse::<i32>().ok().filter(|p| *p > 0)?;
    let started = match words.next() {
        Some(w) => Some(w.parse::<u64>().ok()?),
        None => None,
    };
    Some((pid, started))
}

/// Whether the runner that owns the VM directory `dir` is alive; `None` when the
/// directory names no owner (not a VM directory, or one still being made).
pub fn runner_alive(dir: &Path) -> Option<bool> {
    let (pid, started) = mark(dir)?;
    Some(process_exists(pid) && started.is_none_or(|t| start_time(pid).is_none_or(|now| now == t)))
}

/// Whether the VM of directory `dir` is suspended to a file (no QEMU, no backend:
/// nothing answers on its vsock socket until its runner resumes it).
pub fn saved_in(dir: &Path) -> bool {
    dir.join(SUSPEND_FILE).exists()
}

/// Remove the VM directories under `base` whose runner is gone (overlays and suspend
/// files of a runner that was SIGKILLed, tens of MB each); returns them. A directory
/// without an owner, or whose owner lives, is left alone.
pub fn sweep_stale(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if runner_alive(&dir) == Some(false) && std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir);
        }
    }
    swept
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists; it sends
    // nothing and touches no memory of ours.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// How far a save got, so that a failure undoes exactly that.
#[derive(Debug, Default, Clone, Copy)]
struct SaveSteps {
    unplug_asked: bool,
    unplugged: bool,
    chardev_removed: bool,
    stopped: bool,
}

/// Whether the vsock device is still on the machine (after an unplug was asked).
fn vsock_present(q: &mut Qmp) -> Result<bool, String> {
    let list = q.execute("qom-list", json!({"path": "/machine/peripheral"}))?;
    Ok(list
        .as_array()
        .is_some_and(|l| l.iter().any(|p| p["name"] == VSOCK_DEVICE)))
}

/// The name QEMU knows the migration pipe's write end by (`getfd`).
const MIGRATION_FD: &str = "migfd";

/// The vsock device and its chardev, by the names a save and a restore use.
const VSOCK_DEVICE: &str = "vsock0";
const VSOCK_CHARDEV: &str = "vs0";
/// The PCIe root port the vsock device sits on, so it can be unplugged and added.
const ROOT_PORT: &str = "rp0";

fn kernel_command_line(arch: Arch, layout: Layout, opts: &VmOpts) -> String {
    let root = match layout {
        Layout::Nvme => "root=/dev/nvme0n1 rootfstype=ext4 rw",
        Layout::Snapshot => "microvm.root=/dev/vda",
    };
    let mut words = vec![
        format!("console={}", arch.console()),
        "panic=-1 loglevel=4".into(),
        root.into(),
        format!("microvm.announce={ANNOUNCE_PORT}"),
    ];
    if opts.net.is_some() {
        words.push(GUEST_NET_CMDLINE.into());
    }
    if !opts.cmdline.is_empty() {
        words.push(opts.cmdline.clone());
    }
    words.join(" ")
}

/// QEMU's command line. A restoring QEMU (`incoming`) must be the saved one's device
/// for device, minus vsock (added after the load), so both come from here.
fn qemu_command(launch: &Launch, dir: &Path, incoming: Option<&Path>) -> Result<Command, String> {
    let (image, opts) = (&launch.image, &launch.opts);
    let mem = format!("{}M", opts.mem_mib);
    let mut c = Command::new(tool(image.arch.qemu()));
    c.args(image.arch.machine_args())
        .args(["-accel", "tcg"])
        .args(["-m", &mem, "-smp", "1"])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .args([
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
        ])
        // Appended, not truncated: a restored VM's console follows its history.
        .arg("-chardev")
        .arg(format!(
            "file,id=ser0,path={},append=on",
            dir.join("serial.log").display()
        ))
        .args(["-serial", "chardev:ser0"])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-append")
        .arg(&launch.append);
    let vsock_chardev = format!(
        "socket,id={VSOCK_CHARDEV},path={}",
        dir.join("vhost.sock").display()
    );
    match launch.layout {
        Layout::Nvme => {
            c.arg("-chardev")
                .arg(vsock_chardev)
                .args([
                    "-device",
                    &format!("vhost-user-vsock-pci,chardev={VSOCK_CHARDEV},id={VSOCK_DEVICE}"),
                ])
                .arg("-drive")
                .arg(format!(
                    "file={},if=none,id=root,format=raw,snapshot=on",
                    image.rootfs.display()
                ))
                .args(["-device", "nvme,drive=root,serial=root"]);
        }
        Layout::Snapshot => {
            let initrd = image
                .initrd
                .as_ref()
                .ok_or("a snapshot layout needs the image's initrd.cpio")?;
            c.arg("-initrd")
                .arg(initrd)
                .args([
                    "-device",
                    &format!("pcie-root-port,id={ROOT_PORT},bus=pcie.0,chassis=1"),
                ])
                .arg("-drive")
                .arg(format!(
                    "file={},if=none,id=root,format=qcow2",
                    dir.join("disk.qcow2").display()
                ))
                .args(["-device", "virtio-blk-pci,drive=root"]);
            match incoming {
                None => {
                    c.arg("-chardev").arg(vsock_chardev).args([
                        "-device",
                        &format!("vhost-user-vsock-pci,chardev={VSOCK_CHARDEV},id={VSOCK_DEVICE},bus={ROOT_PORT}"),
                    ]);
                }
                Some(file) => {
                    c.arg("-S")
                        .arg("-incoming")
                        .arg(format!("exec:zstd -q -dc {}", qmp::shell_quoted(file)?));
                }
            }
        }
    }
    if let Some(net) = &opts.net {
        c.arg("-netdev")
            .arg(netdev_arg(net)?)
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
    }
    Ok(c)
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill_qemu();
        self.kill_backend();
        // Sockets and logs of a VM that is gone; kept when the caller asked for them.
        if std::env::var_os("MICROVM_LOCAL_KEEP").is_some() {
            // Kept on purpose: no sweep takes it later.
            let _ = std::fs::remove_file(self.dir.join(OWNER_FILE));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_whose_runner_is_gone_is_swept_and_no_other() {
        let base = std::env::temp_dir().join(format!("sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        for (name, owner) in [
            ("dead", Some(dead.to_string())),
            ("alive", Some(std::process::id().to_string())),
            ("reused", Some(format!("{} 1", std::process::id()))),
            ("unowned", None),
            ("garbled", Some("x".to_string())),
        ] {
            let d = base.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("disk.qcow2"), b"overlay").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
        }
        // Field 22 of a stat line whose name holds ") (" and blanks.
        let fields: Vec<String> = (3..=52).map(|n| (n * 10).to_string()).collect();
        let line = format!("4242 (a) (b c) {}\n", fields.join(" "));
        assert_eq!(stat_start_time(&line), Some(220));
        assert_eq!(stat_start_time("4242 (a) 1 2"), None);
        // Owned as `own` marks it: alive (this process, its own start time).
        let d = base.join("marked");
        std::fs::create_dir_all(&d).unwrap();
        own(&d).unwrap();
        assert_eq!(runner_alive(&d), Some(true));
        let mut swept = sweep_stale(&base);
        swept.sort();
        // "reused": this pid, but a process that started at another time.
        assert_eq!(swept, vec![base.join("dead"), base.join("reused")]);
        let mut left: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["alive", "garbled", "marked", "unowned"]);
        assert!(sweep_stale(&base.join("absent")).is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn egress_is_restricted_unless_opened() {
        let net = NetOpts {
            forwards: vec![(4566, "127.0.0.1:4566".parse().unwrap())],
            bridge: "/usr/bin/microvm-local".into(),
            open_egress: false,
        };
        assert_eq!(
            netdev_arg(&net).unwrap(),
            "user,id=n0,net=10.0.2.0/24,restrict=on,guestfwd=tcp:10.0.2.100:4566-cmd:/usr/bin/microvm-local bridge 127.0.0.1:4566"
        );
        assert!(netdev_arg(&NetOpts::default())
            .unwrap()
            .contains("restrict=on"));
        let open = NetOpts {
            open_egress: true,
            ..NetOpts::default()
        };
        assert!(netdev_arg(&open).unwrap().contains("restrict=off"));
    }
}
