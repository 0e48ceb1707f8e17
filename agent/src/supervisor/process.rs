//! The application's process: spawn through the reaper, exit policy with restart
//! backoff, signal forwarding to its process group, and a bounded stop.

use super::cgroup::AppCgroup;
use super::privileges::{Confinement, Policy};
use super::reaper::Reaper;
use crate::backoff::Backoff;
use crate::config::ExitPolicy;
use microvm_protocol::status::{AppPrivileges, AppStatus, Exit};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// An EC2-style StateReason code for how the application ended: no whitespace,
/// dotted, stable.
pub fn state_reason(exit: Exit) -> String {
    exit_reason(exit, false)
}

/// The state reason, knowing whether the kernel's OOM killer struck the application's
/// cgroup during the run (then the exit, whatever it is, is a consequence).
pub fn exit_reason(exit: Exit, oom_killed: bool) -> String {
    if oom_killed {
        return OUT_OF_MEMORY.into();
    }
    match exit {
        Exit::Code(c) => format!("Application.ExitCode.{c}"),
        Exit::Signal(s) => format!("Application.Signal.{}", signal_name(s)),
    }
}

/// The state reason of an application the OOM killer struck.
pub const OUT_OF_MEMORY: &str = "Application.OutOfMemory";

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

/// What the application is; argv, environment, directory, and where its output goes.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Write ends of the log pipes; kept by us so every restart writes to the same
    /// pipes, and so a flush can tell "drained" from the pipe itself (FIONREAD).
    pub stdout: Option<Arc<OwnedFd>>,
    pub stderr: Option<Arc<OwnedFd>>,
    /// The cgroup it runs in (a real guest), with its OOM count.
    pub cgroup: Option<Arc<AppCgroup>>,
    /// The agent made itself the OOM killer's last choice: the app gets the default
    /// score back as it starts, cgroup or not.
    pub reset_oom_score: bool,
    /// Who it runs as and what it may do; None leaves it the agent's privileges (the
    /// agent is not PID 1 and owns nothing to protect).
    pub confine: Option<Policy>,
}

fn output(fd: &Option<Arc<OwnedFd>>) -> std::io::Result<Stdio> {
    Ok(match fd {
        Some(fd) => Stdio::from(fd.try_clone()?),
        None => Stdio::inherit(),
    })
}

impl AppSpec {
    /// The command to spawn and, when confined, the privileges it will run with.
    fn command(&self) -> std::io::Result<(Command, Option<AppPrivileges>)> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output(&self.stdout)?)
            .stderr(output(&self.stderr)?)
            // Its own process group, so signals reach its whole tree and not us.
            .process_group(0);
        // The user database is read at each start: a restart sees the image as it is.
        let confinement = self
            .confine
            .as_ref()
            .map(|p| Confinement::prepare(p, self.working_dir.as_deref()))
            .transpose()?;
        // Confined, the child enters it after its mounts (see Confinement).
        if let (Some(dir), None) = (&self.working_dir, &confinement) {
            cmd.current_dir(dir);
        }
        let home_set = self.env.iter().any(|(k, _)| k == "HOME");
        // The run-as user's home; unconfined (not PID 1), the agent's own, as before.
        let home = match &confinement {
            Some(c) => c.identity.home.clone(),
            None => std::env::var("HOME").ok(),
        }
        .unwrap_or_else(|| "/".into());
        if !home_set {
            cmd.env("HOME", home);
        }
        let privileges = confinement.as_ref().map(|c| AppPrivileges {
            uid: c.identity.uid,
            gid: c.identity.gid,
            groups: c.identity.groups.clone(),
            capabilities: c.effective.names(),
            bounding_set: c.keep.names(),
            no_new_privs: true,
            read_only: c.read_only_paths(),
        });
        if self.cgroup.is_some() || self.reset_oom_score || confinement.is_some() {
            let (cg, reset) = (self.cgroup.clone(), self.reset_oom_score);
            // SAFETY: the closure runs in the child between fork and exec and makes
            // only async-signal-safe calls (open, write, close, and the raw system
            // calls of `apply_in_child`), allocating nothing.
            unsafe {
                cmd.pre_exec(move || {
                    // The cgroup first: confinement makes cgroupfs read-only.
                    if let Some(cg) = &cg {
                        cg.enter_in_child();
                    }
                    if reset {
                        super::cgroup::reset_oom_score_in_child()?;
                    }
                    if let Some(c) = &confinement {
                        c.apply_in_child()?;
                    }
                    Ok(())
                });
            }
        }
        Ok((cmd, privileges))
    }
}

pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A run this long counts as healthy and resets the backoff.
pub const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);

pub fn restart_backoff() -> Backoff {
    Backoff::new(RESTART_BACKOFF_INITIAL, RESTART_BACKOFF_CAP)
}

/// The delay before the next start, given how long the last run lasted: a healthy
/// run starts the doubling over.
pub fn restart_delay(backoff: &mut Backoff, ran_for: Duration) -> Duration {
    if ran_for >= RESTART_BACKOFF_RESET {
        backoff.reset();
    }
    backoff.next_delay()
}

pub struct Supervisor {
    reaper: Arc<Reaper>,
    spec: AppSpec,
    policy: ExitPolicy,
    status: watch::Sender<AppStatus>,
    stopping: AtomicBool,
    stop_wakeup: Notify,
}

impl Supervisor {
    pub fn new(reaper: Arc<Reaper>, spec: AppSpec, policy: ExitPolicy) -> Arc<Self> {
        Arc::new(Supervisor {
            reaper,
            spec,
            policy,
            status: watch::Sender::new(AppStatus::default()),
            stopping: AtomicBool::new(false),
            stop_wakeup: Notify::new(),
        })
    }

    /// The application as `/v1/status` shows it, orphans reaped included.
    pub fn status(&self) -> AppStatus {
        let mut s = self.status.borrow().clone();
        s.orphans_reaped = self.reaper.orphans_reaped();
        s
    }

    pub fn is_running(&self) -> bool {
        self.status.borrow().running
    }

    /// Start the application and keep it per the exit policy. Resolves with the exit
    /// (and its state reason) that ends supervision under the `terminate` policy, or
    /// None when stopped.
    pub async fn run(self: Arc<Self>) -> Option<(Exit, String)> {
        let mut backoff = restart_backoff();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            let started = Instant::now();
            let oom_before = self.oom_kills();
            let spawned = self.spec.command().and_then(|(mut cmd, privileges)| {
                self.reaper.spawn(&mut cmd).map(|s| (s, privileges))
            });
            let exit = match spawned {
                Ok(((pid, rx), privileges)) => {
                    tracing::info!(pid, command = ?self.spec.command, "application started");
                    self.status.send_modify(|s| {
                        s.pid = Some(pid);
                        s.running = true;
                        s.starts += 1;
                        s.spawn_error = None;
                        s.restart_backoff_ms = None;
                        s.privileges = privileges;
                    });
                    // The sender is dropped only if the reaper table is torn down.
                    rx.await.unwrap_or(Exit::Signal(Signal::SIGKILL as i32))
                }
                Err(e) => {
                    let msg = format!("cannot start {:?}: {e}", self.spec.command[0]);
                    tracing::error!("{msg}");
                    self.status.send_modify(|s| s.spawn_error = Some(msg));
                    // The shell convention for "command not found / not executable".
                    Exit::Code(127)
                }
            };
            let oom_kills = self.oom_kills();
            let reason = exit_reason(exit, oom_kills > oom_before);
            tracing::warn!(?exit, reason, "application exited");
            self.status.send_modify(|s| {
                s.oom_kills = oom_kills;
                s.running = false;
                s.last_exit = Some(exit);
                s.state_reason = Some(reason.clone());
            });
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            match self.policy {
                ExitPolicy::Terminate => return Some((exit, reason)),
                ExitPolicy::Restart => {
                    let delay = restart_delay(&mut backoff, started.elapsed());
                    self.status.send_modify(|s| {
                        s.restarts += 1;
                        s.restart_backoff_ms = Some(delay.as_millis() as u64);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop_wakeup.notified() => return None,
                    }
                }
            }
        }
    }

    fn oom_kills(&self) -> u64 {
        self.spec.cgroup.as_ref().map_or(0, |c| c.oom_kills())
    }

    /// Pass a signal to the application's whole process group.
    pub fn forward(&self, sig: Signal) {
        let s = self.status.borrow().clone();
        if let (Some(pid), true) = (s.pid, s.running) {
            if let Err(e) = killpg(Pid::from_raw(pid), sig) {
                tracing::warn!("forward {sig} to process group {pid}: {e}");
            }
        }
    }

    /// SIGTERM, `grace`, SIGKILL; bounded whatever the application does.
    pub async fn stop(&self, grace: Duration) -> Option<Exit> {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_wakeup.notify_waiters();
        let mut rx = self.status.subscribe();
        for (sig, wait) in [
            (Signal::SIGTERM, grace),
            (Signal::SIGKILL, Duration::from_secs(2)),
        ] {
            if !rx.borrow().running {
                break;
            }
            self.forward(sig);
            let _ = tokio::time::timeout(wait, rx.wait_for(|s| !s.running)).await;
        }
        let s = rx.borrow().clone();
        if s.running {
            tracing::error!(pid = ?s.pid, "application survived SIGKILL");
        }
        s.last_exit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reasons_have_no_whitespace() {
        assert_eq!(state_reason(Exit::Code(3)), "Application.ExitCode.3");
        assert_eq!(
            state_reason(Exit::Signal(libc::SIGSEGV)),
            "Application.Signal.SIGSEGV"
        );
        assert_eq!(state_reason(Exit::Signal(99)), "Application.Signal.99");
        assert_eq!(
            exit_reason(Exit::Signal(9), true),
            "Application.OutOfMemory"
        );
        assert_eq!(exit_reason(Exit::Code(1), true), "Application.OutOfMemory");
        assert_eq!(
            exit_reason(Exit::Signal(9), false),
            "Application.Signal.SIGKILL"
        );
        for r in [Exit::Code(-1), Exit::Signal(9)].map(state_reason) {
            assert!(!r.chars().any(char::is_whitespace), "{r}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let quick = Duration::from_millis(5);
        let mut b = restart_backoff();
        let d = restart_delay(&mut b, quick);
        assert_eq!(d, RESTART_BACKOFF_INITIAL);
        let mut seen = vec![d];
        for _ in 0..12 {
            seen.push(restart_delay(&mut b, quick));
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[4], Duration::from_millis(1600));
        assert_eq!(*seen.last().unwrap(), RESTART_BACKOFF_CAP);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            restart_delay(&mut b, RESTART_BACKOFF_RESET),
            RESTART_BACKOFF_INITIAL
        );
    }
}
