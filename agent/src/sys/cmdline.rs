//! `microvm.*` kernel parameters. Dotted kernel parameters never reach init's argv or
//! environment, so a guest's agent reads them from /proc/cmdline.

/// `microvm.*` settings from the kernel command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub control: Option<String>,
    pub ingress: Option<String>,
    pub image_config: Option<String>,
    pub hostname: Option<String>,
    pub log: Option<String>,
    /// Host vsock port to announce readiness to.
    pub announce: Option<u32>,
    /// `microvm.ip`, `.gateway`, `.mtu`, `.dns`, `.iface` (see `network.rs`).
    pub net: super::network::NetParams,
}

pub fn parse_cmdline(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for word in text.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        let v = v.to_string();
        match k {
            "microvm.control" => c.control = Some(v),
            "microvm.ingress" => c.ingress = Some(v),
            "microvm.image_config" => c.image_config = Some(v),
            "microvm.hostname" => c.hostname = Some(v),
            "microvm.log" => c.log = Some(v),
            "microvm.announce" => c.announce = v.parse().ok(),
            "microvm.ip" => c.net.ip = Some(v),
            "microvm.gateway" => c.net.gateway = Some(v),
            "microvm.mtu" => c.net.mtu = Some(v),
            "microvm.dns" => c.net.dns = Some(v),
            "microvm.iface" => c.net.iface = Some(v),
            _ => {}
        }
    }
    c
}

pub fn read_cmdline() -> Cmdline {
    std::fs::read_to_string("/proc/cmdline")
        .map(|t| parse_cmdline(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_settings() {
        let c = parse_cmdline(
            "console=ttyS0 root=/dev/nvme0n1 microvm.control=vsock:7000 microvm.announce=9999 \
             microvm.hostname=box microvm.log=debug quiet microvm.unknown=1",
        );
        assert_eq!(c.control.as_deref(), Some("vsock:7000"));
        assert_eq!(c.announce, Some(9999));
        assert_eq!(c.hostname.as_deref(), Some("box"));
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(c.image_config, None);
        assert_eq!(parse_cmdline("microvm.announce=x").announce, None);
        assert_eq!(parse_cmdline(""), Cmdline::default());
    }
}
