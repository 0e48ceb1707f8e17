//! Network device ioctls on an AF_INET datagram socket: the small set boot and the
//! metadata service need (interface flags, an address, a netmask), without netlink.

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

/// A socket to issue interface ioctls through.
pub fn control_socket() -> std::io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// An `ifreq` naming `name` (at most 15 bytes; longer names are cut).
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let n = name.len().min(req.ifr_name.len() - 1);
    for (dst, src) in req.ifr_name.iter_mut().zip(&name.as_bytes()[..n]) {
        *dst = *src as libc::c_char;
    }
    req
}

/// Set `IFF_UP | IFF_RUNNING` on `name`.
pub fn up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq naming an
    // interface, through a socket we own; the union member used is the flags field.
    unsafe {
        check(libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as _,
            &mut req,
        ))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req))
    }
}

/// `SIOCSIFADDR` or `SIOCSIFNETMASK` of `name` to `addr`. Naming an alias
/// (`lo:imds`) adds a second address to the device.
pub fn set_inet(
    sock: &OwnedFd,
    name: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: the request reads `req`, a valid ifreq naming an interface with an
    // AF_INET address, through a socket we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &req) })
}

/// `SIOCSIFMTU` of `name`.
pub fn set_mtu(sock: &OwnedFd, name: &str, mtu: u32) -> std::io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = i32::try_from(mtu).unwrap_or(i32::MAX);
    // SAFETY: the request reads `req`, a valid ifreq naming an interface with its MTU
    // member set, through a socket we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU as _, &req) })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr and sockaddr_in are plain old data of the same size; all-zero
    // is valid for both, and the fields written are within sockaddr_in.
    unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        let sin = &mut sa as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
        (*sin).sin_addr.s_addr = u32::from(addr).to_be();
        sa
    }
}

/// `SIOCADDRT`: a default route through `gateway` (the kernel picks the device whose
/// subnet holds it).
pub fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: rtentry is plain old data; all-zero is a valid value (no device name).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads `rt`, a valid rtentry, through a socket we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &rt) })
}

/// An ioctl's return value as a result: negative means `errno` says why.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_cut_and_terminated() {
        let r = super::ifreq("a-very-long-interface-name");
        assert_eq!(r.ifr_name[14], b't' as libc::c_char);
        assert_eq!(r.ifr_name[15], 0);
        let r = super::ifreq("lo:imds");
        assert_eq!(r.ifr_name[7], 0);
    }
}
