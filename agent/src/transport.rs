//! Where the host's links listen (the control channel and ingress): vsock in a guest,
//! a Unix socket in tests. Everything above [`Listener::accept`] is the same code for
//! both.

use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};

pub use microvm_protocol::ports::HOST_CID;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Vsock(u32),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Vsock(p) => write!(f, "vsock:{p}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Addr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("vsock:") {
            return p
                .parse::<u32>()
                .map(Addr::Vsock)
                .map_err(|_| format!("bad vsock port {p:?}: want vsock:PORT"));
        }
        match s.strip_prefix("unix:") {
            Some(p) if !p.is_empty() => Ok(Addr::Unix(PathBuf::from(p))),
            _ => Err(format!("bad address {s:?}: want vsock:PORT or unix:PATH")),
        }
    }
}

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type Stream = Pin<Box<dyn Io>>;

enum Inner {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
}

pub struct Listener {
    inner: Inner,
    /// What listens here ("control", "ingress"), for the refusal log line.
    role: &'static str,
}

impl Listener {
    pub fn bind(addr: &Addr, role: &'static str) -> std::io::Result<Listener> {
        let inner = match addr {
            Addr::Vsock(port) => {
                let a = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
                Inner::Vsock(tokio_vsock::VsockListener::bind(a)?)
            }
            Addr::Unix(path) => {
                // A socket file left by an earlier run would make bind fail.
                let _ = std::fs::remove_file(path);
                Inner::Unix(tokio::net::UnixListener::bind(path)?)
            }
        };
        Ok(Listener { inner, role })
    }

    /// The next connection from an allowed peer. Peers that are not the host are
    /// refused here, logged, and never reach the HTTP layer.
    pub async fn accept(&self) -> std::io::Result<Stream> {
        loop {
            match &self.inner {
                Inner::Unix(l) => return Ok(Box::pin(l.accept().await?.0)),
                Inner::Vsock(l) => {
                    let (s, peer) = l.accept().await?;
                    if peer_allowed(peer.cid()) {
                        return Ok(Box::pin(s));
                    }
                    tracing::warn!(
                        cid = peer.cid(),
                        port = peer.port(),
                        "refused {} connection from a CID that is not the host",
                        self.role
                    );
                    drop(s);
                }
            }
        }
    }
}

pub fn peer_allowed(cid: u32) -> bool {
    cid == HOST_CID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!("vsock:9000".parse(), Ok(Addr::Vsock(9000)));
        assert_eq!("unix:/a/b".parse(), Ok(Addr::Unix("/a/b".into())));
        for bad in ["vsock:", "vsock:x", "unix:", "tcp:1", "9000"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
        assert_eq!(Addr::Vsock(5).to_string(), "vsock:5");
    }

    #[test]
    fn only_the_host_cid() {
        assert!(peer_allowed(2));
        for cid in [0, 1, 3, 4, u32::MAX] {
            assert!(!peer_allowed(cid), "{cid}");
        }
    }
}
