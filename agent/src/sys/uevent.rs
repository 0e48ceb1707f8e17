//! Kernel uevents (NETLINK_KOBJECT_UEVENT, multicast group 1), for the one thing the
//! agent needs from them: its vsock device going away and coming back.
//!
//! After a snapshot restore the host hot-plugs a new vhost-user vsock device (perhaps
//! with another guest CID) and nothing else tells the host the guest is ready. Which
//! uevents mean what (kernel 6.1, `drivers/base/dd.c` and `drivers/virtio/virtio.c`):
//!
//! - The driver core sends `ACTION=bind` once a driver's probe succeeded
//!   (`driver_bound`): for the vsock device `SUBSYSTEM=virtio`,
//!   `DRIVER=vmw_vsock_virtio_transport` (the driver's name is its module's), and the
//!   virtio bus adds `MODALIAS=virtio:d00000013v...` (device id 19, `VIRTIO_ID_VSOCK`).
//!   The transport's probe has read the new CID by then (`virtio_vsock_update_guest_cid`)
//!   and made the device the transport, so this is the moment to announce again.
//! - Unplugging sends `ACTION=unbind` (after the driver is detached, so without
//!   `DRIVER`) and then `ACTION=remove`, both with the virtio `MODALIAS`: the device is
//!   recognised by its modalias there.
//!
//! Kernel messages are `ACTION@DEVPATH` then `KEY=VALUE` strings, each NUL-terminated;
//! udev's re-broadcasts (starting `libudev`) are ignored.

use nix::sys::socket::{
    bind, recvfrom, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// The virtio vsock driver's name (its module's).
pub const VSOCK_DRIVER: &str = "vmw_vsock_virtio_transport";

/// The virtio bus's modalias prefix of a vsock device (`VIRTIO_ID_VSOCK` = 19).
pub const VSOCK_MODALIAS: &str = "virtio:d00000013v";

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// One kernel uevent: its variables (`ACTION`, `DEVPATH`, `SUBSYSTEM`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub vars: HashMap<String, String>,
}

impl Uevent {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// What a uevent means for the vsock device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockChange {
    /// The transport is bound to a (new) vsock device: announce again.
    Bound,
    /// The device was unbound or removed (`unbind`, `remove`).
    Gone(&'static str),
}

/// A kernel uevent from a netlink datagram; None for anything else (udev's).
pub fn parse(datagram: &[u8]) -> Option<Uevent> {
    let mut parts = datagram.split(|b| *b == 0);
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    let mut vars: HashMap<String, String> = parts
        .filter_map(|p| std::str::from_utf8(p).ok())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.entry("ACTION".into()).or_insert_with(|| action.into());
    vars.entry("DEVPATH".into())
        .or_insert_with(|| devpath.into());
    Some(Uevent { vars })
}

/// Whether `e` is about the vsock device, and what happened to it.
pub fn vsock_change(e: &Uevent) -> Option<VsockChange> {
    if e.get("SUBSYSTEM") != Some("virtio") {
        return None;
    }
    let is_vsock = e.get("DRIVER") == Some(VSOCK_DRIVER)
        || e.get("MODALIAS")
            .is_some_and(|m| m.starts_with(VSOCK_MODALIAS));
    if !is_vsock {
        return None;
    }
    match e.get("ACTION")? {
        "bind" => Some(VsockChange::Bound),
        "unbind" => Some(VsockChange::Gone("unbind")),
        "remove" => Some(VsockChange::Gone("remove")),
        _ => None,
    }
}

/// A socket on the kernel's uevent broadcasts.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl Listener {
    /// Subscribe (within a tokio runtime).
    pub fn open() -> std::io::Result<Listener> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it: the descriptor
        // stays open and the same for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Listener {
            fd,
            buf: vec![0; 16 * 1024],
        })
    }

    /// The next kernel uevent. Errors are the socket's (ENOBUFS after an overflow is
    /// one: uevents were lost, and the caller decides).
    pub async fn next(&mut self) -> std::io::Result<Uevent> {
        loop {
            let mut ready = self.fd.readable().await?;
            let got = ready.try_io(|fd| {
                recvfrom::<NetlinkAddr>(fd.as_raw_fd(), &mut self.buf).map_err(std::io::Error::from)
            });
            match got {
                // Only the kernel (port id 0) speaks for devices: a process in the
                // guest sending to the group must not trigger announcements.
                Ok(Ok((n, Some(from)))) if from.pid() == 0 => {
                    if let Some(e) = parse(&self.buf[..n.min(self.buf.len())]) {
                        return Ok(e);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(parts: &[&str]) -> Vec<u8> {
        let mut d = Vec::new();
        for p in parts {
            d.extend_from_slice(p.as_bytes());
            d.push(0);
        }
        d
    }

    const DEV: &str = "/devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio1";

    #[test]
    fn a_kernel_bind_of_the_vsock_transport_is_the_device_back() {
        let d = datagram(&[
            &format!("bind@{DEV}"),
            "ACTION=bind",
            &format!("DEVPATH={DEV}"),
            "SUBSYSTEM=virtio",
            "DRIVER=vmw_vsock_virtio_transport",
            "MODALIAS=virtio:d00000013v00001AF4",
            "SEQNUM=1234",
        ]);
        let e = parse(&d).unwrap();
        assert_eq!(e.get("ACTION"), Some("bind"));
        assert_eq!(e.get("DEVPATH"), Some(DEV));
        assert_eq!(e.get("SEQNUM"), Some("1234"));
        assert_eq!(vsock_change(&e), Some(VsockChange::Bound));
    }

    #[test]
    fn unplugging_is_unbind_then_remove_known_by_the_modalias() {
        for action in ["unbind", "remove"] {
            let d = datagram(&[
                &format!("{action}@{DEV}"),
                &format!("ACTION={action}"),
                &format!("DEVPATH={DEV}"),
                "SUBSYSTEM=virtio",
                "MODALIAS=virtio:d00000013v00001AF4",
            ]);
            let e = parse(&d).unwrap();
            assert!(
                matches!(vsock_change(&e), Some(VsockChange::Gone(a)) if a == action),
                "{action}"
            );
        }
    }

    #[test]
    fn other_devices_and_actions_are_not_the_vsock_device() {
        let cases: [&[&str]; 5] = [
            // virtio-net bound
            &[
                "bind@/devices/x/virtio2",
                "ACTION=bind",
                "SUBSYSTEM=virtio",
                "DRIVER=virtio_net",
                "MODALIAS=virtio:d00000001v00001AF4",
            ],
            // the PCI function under the vsock device
            &[
                "bind@/devices/x",
                "ACTION=bind",
                "SUBSYSTEM=pci",
                "DRIVER=virtio-pci",
                "MODALIAS=pci:v00001AF4d00001053sv00001AF4sd00001100bc00sc00i00",
            ],
            // the vsock device added, not yet bound
            &[
                "add@/devices/x/virtio1",
                "ACTION=add",
                "SUBSYSTEM=virtio",
                "MODALIAS=virtio:d00000013v00001AF4",
            ],
            // the vsock module itself
            &["add@/module/vsock", "ACTION=add", "SUBSYSTEM=module"],
            // a virtio device with an id that merely starts alike (0x130)
            &[
                "bind@/devices/x/virtio3",
                "ACTION=bind",
                "SUBSYSTEM=virtio",
                "DRIVER=other",
                "MODALIAS=virtio:d00000130v00001AF4",
            ],
        ];
        for parts in cases {
            let e = parse(&datagram(parts)).unwrap();
            assert_eq!(vsock_change(&e), None, "{parts:?}");
        }
    }

    #[test]
    fn udev_messages_and_garbage_are_not_kernel_uevents() {
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"\xff\xfe@x\0"), None);
        // Variables win over the header; the header fills in what is missing.
        let e = parse(&datagram(&["bind@/a", "SUBSYSTEM=virtio"])).unwrap();
        assert_eq!(e.get("ACTION"), Some("bind"));
        assert_eq!(e.get("DEVPATH"), Some("/a"));
    }
}
