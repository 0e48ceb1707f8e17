//! The guest's network interface, from `microvm.*` kernel parameters (or the `/run`
//! envelope's `network`, which carries the same settings): an IPv4
//! address and prefix, a default gateway, an MTU, DNS servers. No `microvm.ip`: only
//! loopback, as before. Interface ioctls as in [`super::netdev`], no netlink, no DHCP
//! (the host knows the address it hands out; a DHCP exchange would cost boot time).
//!
//! The resolver configuration goes to [`RESOLV_CONF`] under /run (a tmpfs), so it
//! works on a read-only root; images link `/etc/resolv.conf` to it.

use super::netdev;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub const RESOLV_CONF: &str = "/run/microvm/resolv.conf";

/// How long boot waits for the NIC to show up after its driver loaded.
const NIC_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    pub interface: Option<String>,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub dns: Vec<Ipv4Addr>,
}

/// The raw `microvm.ip`, `microvm.gateway`, `microvm.mtu`, `microvm.dns` and
/// `microvm.iface` values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetParams {
    pub ip: Option<String>,
    pub gateway: Option<String>,
    pub mtu: Option<String>,
    pub dns: Option<String>,
    pub iface: Option<String>,
}

impl NetParams {
    /// None without `microvm.ip`; an error names the parameter that is wrong.
    pub fn settings(&self) -> Result<Option<NetSettings>, String> {
        let Some(ip) = &self.ip else {
            if self.gateway.is_some() || self.dns.is_some() || self.mtu.is_some() {
                return Err("microvm.gateway, microvm.mtu and microvm.dns need microvm.ip".into());
            }
            return Ok(None);
        };
        let (addr, prefix) = ip
            .split_once('/')
            .ok_or_else(|| format!("microvm.ip={ip}: expected ADDRESS/PREFIX"))?;
        let address: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("microvm.ip={ip}: {addr} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("microvm.ip={ip}: prefix must be 1-32"))?;
        let gateway = match &self.gateway {
            None => None,
            Some(g) => {
                let gw: Ipv4Addr = g
                    .parse()
                    .map_err(|_| format!("microvm.gateway={g}: not an IPv4 address"))?;
                if !same_subnet(address, gw, prefix) {
                    return Err(format!("microvm.gateway={g}: not on {address}/{prefix}"));
                }
                Some(gw)
            }
        };
        let mtu = match &self.mtu {
            None => None,
            Some(m) => Some(
                m.parse::<u32>()
                    .ok()
                    .filter(|m| (68..=65_535).contains(m))
                    .ok_or_else(|| format!("microvm.mtu={m}: must be 68-65535"))?,
            ),
        };
        let dns = match &self.dns {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|d| {
                    d.parse::<Ipv4Addr>()
                        .map_err(|_| format!("microvm.dns={list}: {d} is not an IPv4 address"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if dns.len() > 3 {
            return Err(format!(
                "microvm.dns={}: at most 3 servers (resolv.conf's limit)",
                self.dns.as_deref().unwrap_or("")
            ));
        }
        if let Some(i) = &self.iface {
            if i.is_empty() || i.len() > 15 || i.contains(['/', ':']) {
                return Err(format!("microvm.iface={i}: not an interface name"));
            }
        }
        Ok(Some(NetSettings {
            interface: self.iface.clone(),
            address,
            prefix,
            gateway,
            mtu,
            dns,
        }))
    }
}

pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let m = u32::from(netmask(prefix));
    u32::from(a) & m == u32::from(b) & m
}

/// The resolver configuration for `dns`.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# written by microvm-agent from microvm.dns\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// Configure the interface; a line for the boot report, or what failed.
pub fn apply(s: &NetSettings) -> Result<String, String> {
    let name = match &s.interface {
        Some(n) => n.clone(),
        None => first_nic(NIC_WAIT)
            .ok_or("no network interface besides lo (is virtio_net in the image's modules?)")?,
    };
    let sock = netdev::control_socket().map_err(|e| format!("network socket: {e}"))?;
    let step = |what: &str, r: std::io::Result<()>| r.map_err(|e| format!("{name}: {what}: {e}"));
    step(
        "address",
        netdev::set_inet(&sock, &name, libc::SIOCSIFADDR as _, s.address),
    )?;
    step(
        "netmask",
        netdev::set_inet(&sock, &name, libc::SIOCSIFNETMASK as _, netmask(s.prefix)),
    )?;
    if let Some(mtu) = s.mtu {
        step("mtu", netdev::set_mtu(&sock, &name, mtu))?;
    }
    step("up", netdev::up(&sock, &name))?;
    if let Some(gw) = s.gateway {
        match netdev::add_default_route(&sock, gw) {
            // Configured once already (the kernel parameters, then the run): kept.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => step("default route", r)?,
        }
    }
    if !s.dns.is_empty() {
        std::fs::create_dir_all("/run/microvm")
            .and_then(|_| std::fs::write(RESOLV_CONF, resolv_conf(&s.dns)))
            .map_err(|e| format!("{RESOLV_CONF}: {e}"))?;
    }
    let mut line = format!("network {name} {}/{}", s.address, s.prefix);
    if let Some(gw) = s.gateway {
        line.push_str(&format!(" via {gw}"));
    }
    if let Some(mtu) = s.mtu {
        line.push_str(&format!(" mtu {mtu}"));
    }
    if !s.dns.is_empty() {
        let dns: Vec<String> = s.dns.iter().map(Ipv4Addr::to_string).collect();
        line.push_str(&format!(" dns {}", dns.join(",")));
    }
    Ok(line)
}

/// The first interface that is not loopback, waiting up to `wait` for its driver.
fn first_nic(wait: Duration) -> Option<String> {
    let t0 = Instant::now();
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lo")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return Some(n);
        }
        if t0.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(ip: &str, gw: Option<&str>, mtu: Option<&str>, dns: Option<&str>) -> NetParams {
        NetParams {
            ip: Some(ip.into()),
            gateway: gw.map(Into::into),
            mtu: mtu.map(Into::into),
            dns: dns.map(Into::into),
            iface: None,
        }
    }

    #[test]
    fn full_settings() {
        let s = params(
            "10.0.2.15/24",
            Some("10.0.2.2"),
            Some("1500"),
            Some("10.0.2.3,1.1.1.1"),
        )
        .settings()
        .unwrap()
        .unwrap();
        assert_eq!(s.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(s.prefix, 24);
        assert_eq!(s.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(s.mtu, Some(1500));
        assert_eq!(s.dns.len(), 2);
        assert_eq!(
            resolv_conf(&s.dns),
            "# written by microvm-agent from microvm.dns\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn nothing_means_loopback_only() {
        assert_eq!(NetParams::default().settings(), Ok(None));
        let orphan = NetParams {
            gateway: Some("10.0.2.2".into()),
            ..NetParams::default()
        };
        assert!(orphan.settings().unwrap_err().contains("need microvm.ip"));
    }

    #[test]
    fn every_bad_value_names_its_parameter() {
        for (p, want) in [
            (params("10.0.2.15", None, None, None), "microvm.ip"),
            (params("10.0.2.300/24", None, None, None), "microvm.ip"),
            (params("10.0.2.15/33", None, None, None), "microvm.ip"),
            (params("10.0.2.15/0", None, None, None), "microvm.ip"),
            (
                params("10.0.2.15/24", Some("10.0.3.2"), None, None),
                "microvm.gateway",
            ),
            (
                params("10.0.2.15/24", Some("gw"), None, None),
                "microvm.gateway",
            ),
            (
                params("10.0.2.15/24", None, Some("67"), None),
                "microvm.mtu",
            ),
            (params("10.0.2.15/24", None, Some("x"), None), "microvm.mtu"),
            (
                params("10.0.2.15/24", None, None, Some("1.1.1.1,x")),
                "microvm.dns",
            ),
            (
                params(
                    "10.0.2.15/24",
                    None,
                    None,
                    Some("1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4"),
                ),
                "microvm.dns",
            ),
        ] {
            let e = p.settings().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        let bad_iface = NetParams {
            iface: Some("../eth0".into()),
            ..params("10.0.2.15/24", None, None, None)
        };
        assert!(bad_iface
            .settings()
            .unwrap_err()
            .starts_with("microvm.iface"));
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert!(same_subnet(
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            24
        ));
    }
}
