//! QEMU's machine protocol: pause and continue the VM.

use super::Vm;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Quiet time around a pause: vhost-device-vsock 0.3.0 can wedge for good when the VM
/// is stopped while vsock packets are in flight, or a CONNECT arrives while the device
/// restarts after `cont` (the same family as the boot-time pitfall in vm-testbed.md).
pub const PAUSE_SETTLE: Duration = Duration::from_millis(300);

impl Vm {
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
                // Asynchronous events interleave with answers; only answers count.
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
}
