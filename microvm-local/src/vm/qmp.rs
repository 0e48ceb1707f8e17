//! QEMU's machine protocol: pause and continue, and the steps of a save and a
//! restore (device hot-unplug and hotplug, migration to and from a file).

use super::Vm;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Quiet time around a pause: vhost-device-vsock 0.3.0 can wedge for good when the VM
/// is stopped while vsock packets are in flight, or a CONNECT arrives while the device
/// restarts after `cont` (the same family as the boot-time pitfall in vm-testbed.md).
pub const PAUSE_SETTLE: Duration = Duration::from_millis(300);

/// One QMP session: commands and their answers, with the asynchronous events that
/// arrive in between kept for [`Qmp::wait_event`].
pub struct Qmp {
    w: UnixStream,
    r: BufReader<UnixStream>,
    events: VecDeque<Value>,
}

impl Qmp {
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("qmp {}: {e}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let w = s.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            w,
            r: BufReader::new(s),
            events: VecDeque::new(),
        };
        q.read()?; // the greeting
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("qmp read: {e}"))?;
        if line.is_empty() {
            return Err("qmp: QEMU closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("qmp: {e}: {line}"))
    }

    /// Run `command` with `arguments` (`Value::Null`: none); its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("qmp {command}: {e}"))?;
        self.answer(command)
    }

    /// The answer to the command just sent; events that come first are kept.
    fn answer(&mut self, command: &str) -> Result<Value, String> {
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push_back(v);
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(format!("qmp {command}: {e}"));
            }
            return Ok(v["return"].clone());
        }
    }

    /// Run `command` with `fd` attached (SCM_RIGHTS), as `getfd` wants its descriptor.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, String> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let msg = format!(
            "{}\n",
            json!({ "execute": command, "arguments": arguments })
        );
        let fds = [fd.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.w.as_raw_fd(),
            &[std::io::IoSlice::new(msg.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| format!("qmp {command}: {e}"))?;
        // The descriptor went with the first byte; the rest is plain stream data.
        self.w
            .write_all(&msg.as_bytes()[sent..])
            .map_err(|e| format!("qmp {command}: {e}"))?;
        self.answer(command)
    }

    /// Wait for event `name` whose `data` satisfies `matches`.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, String> {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e["event"] == name && matches(&e["data"]))
            {
                return Ok(self.events.remove(i).unwrap_or_default());
            }
            if t0.elapsed() > timeout {
                return Err(format!("qmp: no {name} event within {timeout:?}"));
            }
            let left = timeout
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(1));
            self.r
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let read = self.read();
            self.r
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            match read {
                Ok(v) if v.get("event").is_some() => self.events.push_back(v),
                Ok(_) => {}
                Err(e) if e.contains("timed out") || e.contains("temporarily unavailable") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Poll `query-migrate` until the migration completed (either side of it).
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let st = self.execute("query-migrate", Value::Null)?;
            match st["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(format!(
                        "migration {}: {}",
                        st["status"],
                        st["error-desc"].as_str().unwrap_or("no reason given")
                    ))
                }
                _ => {}
            }
            if t0.elapsed() > timeout {
                return Err(format!("migration not complete within {timeout:?}: {st}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A path for QEMU's `exec:` migration URI, which goes through `/bin/sh -c`: single
/// quotes, and nothing in the path that could end them.
pub fn shell_quoted(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if s.contains('\'') || s.contains('\n') {
        return Err(format!("{s:?} may hold no quote or newline"));
    }
    Ok(format!("'{s}'"))
}

impl Vm {
    /// One QMP command (`stop`, `cont`, ...) on a session of its own; its `return`.
    pub fn qmp(&self, command: &str) -> Result<Value, String> {
        Qmp::connect(&self.dir.join("qmp.sock"))?.execute(command, Value::Null)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_paths_are_quoted_for_the_shell_or_refused() {
        assert_eq!(
            shell_quoted(Path::new("/tmp/a b/mem.zst")).unwrap(),
            "'/tmp/a b/mem.zst'"
        );
        assert!(shell_quoted(Path::new("/tmp/x'; rm -rf /; '")).is_err());
        assert!(shell_quoted(Path::new("/tmp/a\nb")).is_err());
    }
}
