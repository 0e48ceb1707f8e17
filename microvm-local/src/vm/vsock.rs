//! The host's side of vsock: the Firecracker-style hybrid socket
//! (`CONNECT <port>\n` -> `OK <n>\n`), and the agent's control channel over it.

use super::Vm;
use crate::http::{self, Reply};
use microvm_protocol::{paths, ports, Hook};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hybrid socket's name in a VM's directory.
pub const SOCKET: &str = "vm.vsock";

/// A stream to guest `port` through the hybrid vsock socket at `socket`, with no
/// read timeout (the caller sets the one its exchange needs).
///
/// Errors keep their kind: `NotFound`/`ConnectionRefused` when nothing listens on
/// `socket` (no backend), `TimedOut` when the backend takes the connection but never
/// answers `CONNECT` (wedged, or the guest is paused), anything else when the guest
/// kept refusing `port`.
pub fn connect_hybrid(socket: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut last = None;
    for _ in 0..20 {
        let started = Instant::now();
        let mut s = UnixStream::connect(socket)?;
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
            s.set_read_timeout(None)?;
            return Ok(s);
        }
        if line.is_empty() && started.elapsed() >= CONNECT_TIMEOUT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "CONNECT {port}: no answer from the vsock backend within {CONNECT_TIMEOUT:?} (backend wedged, or the guest paused?)"
                ),
            ));
        }
        // Closed before OK: the guest side was not ready; retry.
        last = Some(String::from_utf8_lossy(&line).into_owned());
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(std::io::Error::other(format!(
        "CONNECT {port} refused: {last:?}"
    )))
}

impl Vm {
    /// A stream to guest `port` through this VM's hybrid vsock socket, reads bounded
    /// by the longest hook call.
    pub fn connect(&self, port: u32) -> std::io::Result<UnixStream> {
        let s = connect_hybrid(&self.dir.join(SOCKET), port)?;
        s.set_read_timeout(Some(http::HOOK_TIMEOUT))?;
        Ok(s)
    }

    /// One request on the agent's control channel.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
        http::send(self.connect(ports::CONTROL)?, method, path, &[], body)
    }

    /// `POST` a hook (by name: `ready`, `run`, ...) with a JSON body (or none).
    pub fn hook(&self, hook: &str, body: &str) -> std::io::Result<Reply> {
        let path = match Hook::from_name(hook) {
            Some(h) => h.path(),
            // Not a hook: still sent, so a caller can see the agent's 404.
            None => format!("{}{hook}", microvm_protocol::HOOK_PATH_PREFIX),
        };
        let stream = self.connect(ports::CONTROL)?;
        http::send_within(
            http::HOOK_TIMEOUT,
            stream,
            "POST",
            &path,
            &[],
            body.as_bytes(),
        )
    }

    /// `GET /v1/status`, as JSON.
    pub fn status(&self) -> std::io::Result<Value> {
        Ok(self.request("GET", paths::STATUS, b"")?.json())
    }
}
