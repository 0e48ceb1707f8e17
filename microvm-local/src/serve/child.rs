//! One MicroVM's runner: this same binary's `run-microvm --interactive`, driven by
//! lines on its stdin (`suspend`, `resume`, `terminate`) and read back from the JSON
//! values on its stdout (the RunMicrovm output, action reports, events). Its own
//! idle policy acts by itself (suspend on idle, resume on a connection, terminate
//! after the suspended duration) and says so in reports the server follows.
//!
//! The runner dies with the server (SIGTERM on the parent's death: it then
//! terminates its MicroVM cleanly), and its QEMU dies with it.

use serde_json::Value;
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// What the server learns from a runner, as it happens.
pub trait Observer: Send + Sync + 'static {
    /// The RunMicrovm output: the agent answered `/run` (or refused it).
    fn ran(&self, id: &str, output: &Value);
    /// A report of an action the runner took by itself (idle policy).
    fn acted(&self, id: &str, action: &str, ok: bool);
    /// The runner exited: the MicroVM is gone. `why` is the last thing it said.
    fn exited(&self, id: &str, status: std::process::ExitStatus, why: String);
}

type Waiter = (String, oneshot::Sender<Result<Value, String>>);

pub struct Child {
    pub pid: u32,
    /// Set, under its lock, just before the runner is reaped: while it is false the
    /// pid is still the runner's (alive or a zombie), never another process's.
    reaped: Arc<Mutex<bool>>,
    stdin: Mutex<Option<ChildStdin>>,
    waiters: Arc<Mutex<VecDeque<Waiter>>>,
}

/// Actions the runner takes by itself; their reports are not answers to ours.
const OWN_ACTIONS: [&str; 5] = [
    "suspend (idle)",
    "resume (ingress)",
    "terminate (suspendedDurationSeconds)",
    "resume (to terminate)",
    "rotate credentials",
];

impl Child {
    /// Start the runner. The receiver gets the RunMicrovm output, or is dropped if
    /// the runner exits first.
    pub fn spawn(
        observer: Arc<dyn Observer>,
        id: &str,
        dir: &Path,
        args: &[String],
    ) -> std::io::Result<(Arc<Child>, oneshot::Receiver<Value>)> {
        let log = std::fs::File::create(dir.join("runner.log"))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        // A Ctrl-C meant for the server reaches the server, which terminates every
        // MicroVM in order; a dead server's runners get SIGTERM and do the same.
        crate::vm::die_with_parent_by(&mut cmd, libc::SIGTERM);
        // Forked from a thread that lives as long as the process (PDEATHSIG follows
        // the forking thread).
        let mut child = crate::vm::spawn_kept(cmd)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("runner stdout not piped"))?;
        let me = Arc::new(Child {
            pid: child.id(),
            reaped: Arc::new(Mutex::new(false)),
            stdin: Mutex::new(child.stdin.take()),
            waiters: Arc::new(Mutex::new(VecDeque::new())),
        });
        let (ran_tx, ran_rx) = oneshot::channel();
        let waiters = me.waiters.clone();
        let reaped = me.reaped.clone();
        let id = id.to_string();
        let log_path = dir.join("runner.log");
        std::thread::spawn(move || {
            let mut ran = Some(ran_tx);
            let values = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
                .into_iter::<Value>();
            for v in values {
                let Ok(v) = v else { break };
                if v.get("event").is_some() {
                    continue;
                }
                let Some(action) = v.get("action").and_then(Value::as_str) else {
                    if v.get("microvmId").is_some() {
                        observer.ran(&id, &v);
                        if let Some(tx) = ran.take() {
                            let _ = tx.send(v);
                        }
                    }
                    continue;
                };
                let ok = v.get("error").is_none() && v["status"] == 200;
                if OWN_ACTIONS.contains(&action) {
                    observer.acted(&id, action, ok);
                    continue;
                }
                let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = w.iter().position(|(a, _)| a == action) {
                    if let Some((_, tx)) = w.remove(i) {
                        let _ = tx.send(match v.get("error") {
                            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
                            None => Ok(v.clone()),
                        });
                    }
                }
            }
            // Exited but not reaped first, so that `signal` never reaches a process
            // that took its pid since.
            let reap = || reaped.lock().unwrap_or_else(|p| p.into_inner());
            let status = if wait_unreaped(child.id()) {
                let mut r = reap();
                *r = true;
                child.wait()
            } else {
                // Not known to have exited: not waited for under the lock, which
                // `signal` callers (shutdown among them) must never block on.
                *reap() = true;
                child.wait()
            };
            waiters.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let why = last_words(&log_path);
            match status {
                Ok(s) => observer.exited(&id, s, why),
                Err(e) => observer.exited(
                    &id,
                    std::os::unix::process::ExitStatusExt::from_raw(255 << 8),
                    format!("{why} (wait: {e})"),
                ),
            }
        });
        Ok((me, ran_rx))
    }

    /// Tell the runner to do `action`, without waiting.
    pub fn send(&self, action: &str) -> Result<(), String> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let s = stdin.as_mut().ok_or("the runner's stdin is closed")?;
        writeln!(s, "{action}")
            .and_then(|_| s.flush())
            .map_err(|e| format!("the runner is gone: {e}"))
    }

    /// Do `action` and wait for its report (the report's JSON, or its error).
    pub async fn act(&self, action: &str, timeout: Duration) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((action.to_string(), tx));
        self.send(action)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the MicroVM's runner exited".into()),
            Err(_) => Err(format!(
                "no report of {action} within {}s",
                timeout.as_secs()
            )),
        }
    }

    /// End the runner's input: it terminates its MicroVM (if it still runs) and exits.
    pub fn close(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn signal(&self, sig: libc::c_int) {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if !*reaped {
            // SAFETY: kill(2) on our unreaped child (the lock keeps it unreaped);
            // no memory is involved.
            unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            }
        }
    }
}

/// Wait for child `pid` to exit without reaping it (`waitid` with `WNOWAIT`): true
/// once it has; false at once if it cannot be waited for (the caller's `wait` then
/// says why).
fn wait_unreaped(pid: u32) -> bool {
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills in; zeroed is a valid
        // value, and the pointer is to a local that outlives the call.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return true;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// The last line the runner wrote on stderr that says something (its last error).
fn last_words(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.starts_with("microvm-local:"))
        .map(|l| l.trim_start_matches("microvm-local:").trim().to_string())
        .unwrap_or_default()
}
