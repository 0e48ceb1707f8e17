//! The platform's side of one running MicroVM: suspend, resume and terminate (agent
//! hook plus QMP), the events poller that suspends on `idle`, and the endpoint that
//! forwards client connections to the agent's ingress and resumes on demand.
//!
//! Every pause, resume and termination goes through [`Host`], under one lock,
//! whoever asks: an action, an idle event, a client connection, a timer.

use crate::http::Reply;
use crate::vm::Vm;
use crate::{host, signals};
use microvm_protocol::events::{EventType, EventsPage};
use microvm_protocol::run::ResumeEnvelope;
use microvm_protocol::{paths, ports};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the run's `idlePolicy` asks of the host (the agent only reports idleness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleSettings {
    /// Terminate after this long suspended; absent: stay suspended.
    pub suspended_for: Option<Duration>,
    /// Resume on the next client connection to the endpoint.
    pub auto_resume: bool,
}

impl IdleSettings {
    /// From the `idlePolicy` parameter as given (validated).
    pub fn from_parameter(p: &Value) -> IdleSettings {
        IdleSettings {
            suspended_for: p["suspendedDurationSeconds"]
                .as_u64()
                .map(Duration::from_secs),
            auto_resume: p["autoResumeEnabled"] == true,
        }
    }
}

pub struct Host {
    pub vm: Vm,
    state: Mutex<HostState>,
    /// Held while the event poller has a request in flight: the VM is never paused
    /// under an open vsock request (see vm::PAUSE_SETTLE).
    poll_gate: Mutex<()>,
    idle: Option<IdleSettings>,
    /// Where the execution role's credentials come from; None without a role.
    role: Option<crate::credentials::Source>,
    /// The last set a rotation sent.
    last_rotation: Mutex<Option<microvm_protocol::run::Credentials>>,
}

#[derive(Default)]
struct HostState {
    suspended: bool,
    /// The agent answered /suspend and has not answered a /resume since (its VM may
    /// run again, e.g. after a save was undone): it holds its logs until it does.
    agent_suspended: bool,
    /// Counts suspensions, so a stale suspended-duration timer does nothing.
    epoch: u64,
    terminated: bool,
}

/// An agent answer as the runner prints it: `{"status": N, "answer": {...}}`.
fn answer(r: std::io::Result<Reply>) -> Result<Value, String> {
    let r = r.map_err(|e| format!("agent unreachable: {e}"))?;
    Ok(json!({"status": r.status, "answer": r.json()}))
}

static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `serve`'s runners: failed actions are JSON lines on stdout as well.
pub fn report_errors_as_json() {
    JSON_ERRORS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// One line per action on stdout (JSON), errors on stderr (and, for `serve`'s
/// runners, as `{"action", "error"}` on stdout).
pub fn report(action: &str, r: Result<Value, String>) {
    match r {
        Ok(mut v) => {
            v["action"] = json!(action);
            println!("{v}");
        }
        Err(e) => {
            eprintln!("microvm-local: {action}: {e}");
            if JSON_ERRORS.load(std::sync::atomic::Ordering::SeqCst) {
                println!("{}", json!({"action": action, "error": e}));
            }
        }
    }
}

impl Host {
    pub fn new(vm: Vm, idle: Option<IdleSettings>) -> Host {
        Host {
            vm,
            state: Mutex::new(HostState::default()),
            poll_gate: Mutex::new(()),
            idle,
            role: None,
            last_rotation: Mutex::new(None),
        }
    }

    pub fn with_role(mut self, role: Option<crate::credentials::Source>) -> Host {
        self.role = role;
        self
    }

    pub fn role_source(&self) -> Option<crate::credentials::Source> {
        self.role
    }

    /// The role's next credentials, if there is a role.
    pub fn next_credentials(&self) -> Option<microvm_protocol::run::Credentials> {
        let now = crate::host::now_nanos() / 1_000_000_000;
        self.role.map(|r| r.next(|k| std::env::var(k).ok(), now))
    }

    /// The agent warned that the credentials expire soon: hand it the next set, unless
    /// the role's source has none newer than the last one sent (the agent warns again
    /// a minute later; re-sending the same set would only make it warn again).
    fn rotate_credentials(&self) -> Result<Value, String> {
        // Never on vsock while a pause or save is under way (see vm::PAUSE_SETTLE);
        // a suspended MicroVM gets fresh credentials with its /resume anyway.
        let _gate = self.poll_gate.lock().unwrap_or_else(|p| p.into_inner());
        if self.suspended() {
            return Err("suspended: the next /resume carries fresh credentials".into());
        }
        let c = self.next_credentials().ok_or("no execution role")?;
        {
            let last = self.last_rotation.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&c) {
                return Err(format!(
                    "the role's source has no newer credentials than {} (expiring {}); not sent again",
                    c.access_key_id,
                    c.expiration.as_deref().unwrap_or("never")
                ));
            }
        }
        let body = serde_json::to_vec(&c).map_err(|e| e.to_string())?;
        let r = self
            .vm
            .request("POST", paths::CREDENTIALS, &body)
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{}: {}", r.status, r.json()));
        }
        // Only a set the agent took counts as sent: a failed one is sent again.
        *self.last_rotation.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(json!({"accessKeyId": c.access_key_id, "expiration": c.expiration}))
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn terminated(&self) -> bool {
        self.lock().terminated
    }

    /// Suspended (paused, or saved to a file) and not terminated since.
    pub fn suspended(&self) -> bool {
        let st = self.lock();
        st.suspended && !st.terminated
    }

    pub fn suspend(self: &Arc<Self>) -> Result<Value, String> {
        let _gate = self.poll_gate.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        if st.suspended || st.terminated {
            return Ok(json!({"status": 200, "answer": {"state": "SUSPENDED"}}));
        }
        let mut v = answer(self.vm.hook("suspend", ""))?;
        if v["status"] == 200 {
            st.agent_suspended = true;
            match self.vm.park() {
                Ok(Some(saved)) => {
                    v["savedToFile"] =
                        json!({"bytes": saved.bytes, "ms": saved.took.as_millis() as u64});
                }
                Ok(None) => {}
                Err(e) if self.vm.lost() => {
                    st.terminated = true;
                    return Err(e);
                }
                Err(e) => {
                    // The VM runs on, its agent SUSPENDED: both must agree again.
                    let back = self.tell_resume().map(|v| {
                        if v["status"] == 200 {
                            st.agent_suspended = false;
                        }
                        v["status"].clone()
                    });
                    return Err(format!(
                        "{e}; the agent was told to resume: {}",
                        back.map_or_else(|e| e, |s| format!("status {s}"))
                    ));
                }
            }
            st.suspended = true;
            st.epoch += 1;
            if let Some(after) = self.idle.and_then(|i| i.suspended_for) {
                let (host, epoch) = (self.clone(), st.epoch);
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    let st = host.lock();
                    if st.suspended && st.epoch == epoch && !st.terminated {
                        drop(st);
                        report("terminate (suspendedDurationSeconds)", host.terminate());
                    }
                });
            }
        }
        Ok(v)
    }

    /// `/resume`'s body: the host's clock, fresh entropy, and (as on the platform) a
    /// resumed MicroVM's fresh credentials.
    fn resume_envelope(&self) -> Result<String, String> {
        let body = ResumeEnvelope {
            clock: Some(host::clock()),
            entropy: Some(host::entropy_b64()),
            credentials: self.next_credentials(),
        };
        serde_json::to_string(&body).map_err(|e| e.to_string())
    }

    /// `/resume` to the agent of a VM that runs again, retried a few times: an agent
    /// left SUSPENDED while its VM runs would hold its logs and its idle accounting.
    fn tell_resume(&self) -> Result<Value, String> {
        let mut last = Err("not sent".to_string());
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let body = self.resume_envelope()?;
            last = answer(self.vm.hook("resume", &body));
            match &last {
                Ok(v) if v["status"] == 200 => return last,
                // The agent refused the request itself: sending it again changes nothing.
                Ok(v) if v["status"] == 400 || v["status"] == 409 => return last,
                _ => {}
            }
        }
        last
    }

    fn resume_locked(&self, st: &mut HostState) -> Result<Value, String> {
        self.resume_for(st, true)
    }

    fn resume_for(&self, st: &mut HostState, cancellable: bool) -> Result<Value, String> {
        if !st.suspended {
            if st.agent_suspended {
                // The VM runs but its agent never heard a /resume that worked.
                let v = self.tell_resume()?;
                st.agent_suspended = v["status"] != 200;
                return Ok(v);
            }
            return Ok(json!({"status": 200, "answer": {"state": "RUNNING"}}));
        }
        let restored = match self.vm.unpark_for(cancellable) {
            Ok(r) => r,
            Err(e) => {
                if self.vm.lost() {
                    st.terminated = true;
                }
                return Err(e);
            }
        };
        st.suspended = false;
        let mut v = self.tell_resume()?;
        st.agent_suspended = v["status"] != 200;
        if let Some(took) = restored {
            v["restoredFromFile"] = json!({"ms": took.as_millis() as u64});
        }
        Ok(v)
    }

    pub fn resume(&self) -> Result<Value, String> {
        let mut st = self.lock();
        self.resume_locked(&mut st)
    }

    pub fn terminate(&self) -> Result<Value, String> {
        let mut st = self.lock();
        if st.terminated {
            return Ok(json!({"status": 200, "answer": {"state": "TERMINATED"}}));
        }
        if st.suspended {
            // The application's /terminate hook runs, as for a running MicroVM, and
            // its last lines are shipped: the guest first gets the clock (a request
            // signed with a clock hours behind is refused), entropy and credentials,
            // which only /resume carries. A stop signal does not cancel this restore.
            report("resume (to terminate)", self.resume_for(&mut st, false));
            if st.terminated || st.suspended {
                // Not restored: nothing runs to terminate, and nothing will.
                self.vm.discard();
                st.terminated = true;
                return Err(
                    "the suspended MicroVM could not be restored to terminate it; discarded".into(),
                );
            }
        }
        st.terminated = true;
        answer(self.vm.hook("terminate", ""))
    }

    /// One action of `--then` or `--interactive`.
    pub fn act(self: &Arc<Self>, action: &str) -> Result<Value, String> {
        match action {
            "status" => answer(self.vm.request("GET", paths::STATUS, b"")),
            "suspend" => self.suspend(),
            "resume" => self.resume(),
            "terminate" => self.terminate(),
            a if a.starts_with("sleep=") => {
                let s: u64 = a[6..].parse().map_err(|_| format!("bad action {a}"))?;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(s) && !signals::stopping() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(json!({"slept": s}))
            }
            a => Err(format!(
                "unknown action {a:?}: use suspend, resume, terminate, status, sleep=N"
            )),
        }
    }

    /// Follow the agent's events, printing each; with an idle policy, suspend on `idle`.
    pub fn poll_events(self: Arc<Self>) {
        let mut after = 0u64;
        while !signals::stopping() {
            if self.terminated() {
                return;
            }
            let got = {
                let _gate = self.poll_gate.lock().unwrap_or_else(|p| p.into_inner());
                if self.lock().suspended {
                    None
                } else {
                    let path = format!("{}?after={after}&waitSeconds=2", paths::EVENTS);
                    self.vm.request("GET", &path, b"").ok().map(|r| r.json())
                }
            };
            let Some(v) = got else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            match serde_json::from_value::<EventsPage>(v.clone()) {
                Ok(page) => {
                    for e in page.events {
                        after = after.max(e.seq);
                        println!("{}", json!({"event": e}));
                        if e.kind == EventType::Idle && self.idle.is_some() {
                            report("suspend (idle)", self.suspend());
                        }
                        if e.kind == EventType::CredentialsExpiring && self.role.is_some() {
                            report("rotate credentials", self.rotate_credentials());
                        }
                    }
                }
                Err(_) => {
                    // A page this runner cannot type (an event type from a newer
                    // agent, or an error answer): shown as sent, never acted on.
                    let events = v["events"].as_array().cloned().unwrap_or_default();
                    if events.is_empty() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    for e in events {
                        after = after.max(e["seq"].as_u64().unwrap_or(after));
                        println!("{}", json!({"event": e}));
                    }
                }
            }
        }
    }

    /// The MicroVM's endpoint: each client connection goes to the agent's ingress
    /// over vsock; a suspended VM is resumed first (autoResumeEnabled), and the client
    /// waits until /resume has answered.
    pub fn serve_endpoint<S: Duplex>(
        self: Arc<Self>,
        clients: impl Iterator<Item = std::io::Result<S>>,
    ) {
        for client in clients {
            let Ok(client) = client else { continue };
            let host = self.clone();
            std::thread::spawn(move || {
                {
                    let mut st = host.lock();
                    if st.terminated {
                        return;
                    }
                    if st.suspended {
                        if !host.idle.is_some_and(|i| i.auto_resume) {
                            return;
                        }
                        report("resume (ingress)", host.resume_locked(&mut st));
                    }
                }
                let Ok(up) = host.vm.connect(ports::INGRESS) else {
                    return;
                };
                pipe(client, up);
            });
        }
    }
}

/// A client connection of the endpoint: TCP (the one-shot runner's port) or a Unix
/// socket (`serve`'s runners, behind the server's authenticating proxy).
pub trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn close_write(&self);
}

impl Duplex for std::net::TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Copy both ways until either side closes.
fn pipe<S: Duplex>(client: S, up: std::os::unix::net::UnixStream) {
    let (Ok(mut c2), Ok(mut u2)) = (client.duplicate(), up.try_clone()) else {
        return;
    };
    let _ = up.set_read_timeout(None);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut u) = (client, up);
    let _ = std::io::copy(&mut u, &mut c);
    c.close_write();
    let _ = t.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_settings_keep_an_absent_suspended_duration_absent() {
        let s = IdleSettings::from_parameter(&json!({"maxIdleDurationSeconds": 900}));
        assert_eq!(
            s,
            IdleSettings {
                suspended_for: None,
                auto_resume: false
            }
        );
        let s = IdleSettings::from_parameter(&json!({"maxIdleDurationSeconds": 900,
            "suspendedDurationSeconds": 0, "autoResumeEnabled": true}));
        assert_eq!(s.suspended_for, Some(Duration::ZERO));
        assert!(s.auto_resume);
    }

    #[test]
    fn events_pages_parse_as_the_contract_types() {
        let page = json!({"events": [
            {"seq": 3, "type": "idle", "uptimeMs": 10, "unixTimeMs": 20, "idleForMs": 3000, "maxIdleMs": 3000},
            {"seq": 4, "type": "active", "uptimeMs": 11, "unixTimeMs": 21}
        ], "lastSeq": 4, "gap": false});
        let p: EventsPage = serde_json::from_value(page).unwrap();
        assert_eq!(p.events[0].kind, EventType::Idle);
        let line = json!({"event": p.events[0]}).to_string();
        assert!(line.contains("\"type\":\"idle\""), "{line}");
        assert!(line.contains("\"idleForMs\":3000"), "{line}");
    }
}
