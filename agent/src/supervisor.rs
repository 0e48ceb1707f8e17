//! The application's process: spawn, reap, exit policy, signal forwarding, stop.
//!
//! One reaper owns waitpid(2): it runs on SIGCHLD and reaps every child, orphans
//! re-parented to us included. Nothing else in the agent may wait for a child
//! (tokio::process would race it), so spawns go through the reaper, which holds its
//! table lock across fork so a fast-exiting child cannot be reaped before it is known.

use crate::config::ExitPolicy;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// An EC2-style StateReason code: no whitespace, dotted, stable.
    pub fn state_reason(self) -> String {
        match self {
            Exit::Code(c) => format!("Application.ExitCode.{c}"),
            Exit::Signal(s) => format!("Application.Signal.{}", signal_name(s)),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

/// Owner of waitpid(2).
#[derive(Default)]
pub struct Reaper {
    watched: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    orphans_reaped: AtomicU64,
}

impl Reaper {
    /// Fork and exec `cmd`, registered for its exit before anyone can reap it.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let mut watched = self
            .watched
            .lock()
            .map_err(|_| std::io::Error::other("reaper table poisoned"))?;
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping `child` neither waits nor kills; the reaper collects the status.
        drop(child);
        let (tx, rx) = oneshot::channel();
        watched.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Reap every child that has exited; deliver the statuses of the watched ones.
    pub fn reap_all(&self) {
        let Ok(mut watched) = self.watched.lock() else {
            return;
        };
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
            };
            match watched.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    self.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.load(Ordering::Relaxed)
    }

    /// Reap on SIGCHLD for as long as the agent lives.
    pub async fn run(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                // Without SIGCHLD delivery fall back to polling: zombies must not pile up.
                tracing::error!("cannot watch SIGCHLD ({e}); reaping every 100 ms instead");
                loop {
                    self.reap_all();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        loop {
            // A child may have exited before the handler was installed.
            self.reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
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
}

fn output(fd: &Option<Arc<OwnedFd>>) -> std::io::Result<Stdio> {
    Ok(match fd {
        Some(fd) => Stdio::from(fd.try_clone()?),
        None => Stdio::inherit(),
    })
}

impl AppSpec {
    fn command(&self) -> std::io::Result<Command> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output(&self.stdout)?)
            .stderr(output(&self.stderr)?)
            // Its own process group, so signals reach its whole tree and not us.
            .process_group(0);
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }
}

/// The application as the host sees it in `/v1/status`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub pid: Option<i32>,
    pub running: bool,
    pub starts: u32,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub state_reason: Option<String>,
    pub spawn_error: Option<String>,
    /// When restarting, how long the current backoff is.
    pub restart_backoff_ms: Option<u64>,
}

pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A run this long counts as healthy and resets the backoff.
pub const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);

/// The delay before the next start, given the previous delay and how long it ran.
pub fn next_backoff(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(p) if ran_for < RESTART_BACKOFF_RESET => (p * 2).min(RESTART_BACKOFF_CAP),
        _ => RESTART_BACKOFF_INITIAL,
    }
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

    pub fn status(&self) -> AppStatus {
        self.status.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.status.borrow().running
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.reaper.orphans_reaped()
    }

    /// Start the application and keep it per the exit policy. Resolves with the exit
    /// that ends supervision under the `terminate` policy (or None when stopped).
    pub async fn run(self: Arc<Self>) -> Option<Exit> {
        let mut backoff: Option<Duration> = None;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            let started = Instant::now();
            let spawned = self
                .spec
                .command()
                .and_then(|mut cmd| self.reaper.spawn(&mut cmd));
            let exit = match spawned {
                Ok((pid, rx)) => {
                    tracing::info!(pid, command = ?self.spec.command, "application started");
                    self.status.send_modify(|s| {
                        s.pid = Some(pid);
                        s.running = true;
                        s.starts += 1;
                        s.spawn_error = None;
                        s.restart_backoff_ms = None;
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
            let reason = exit.state_reason();
            tracing::warn!(?exit, reason, "application exited");
            self.status.send_modify(|s| {
                s.running = false;
                s.last_exit = Some(exit);
                s.state_reason = Some(reason);
            });
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            match self.policy {
                ExitPolicy::Terminate => return Some(exit),
                ExitPolicy::Restart => {
                    let delay = next_backoff(backoff, started.elapsed());
                    backoff = Some(delay);
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

/// Forward the signals an init passes on, for as long as the agent lives.
pub async fn forward_signals(sup: Arc<Supervisor>) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, sig) in kinds {
        let sup = sup.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tasks.spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::info!("forwarding {sig} to the application");
                        sup.forward(sig);
                    }
                });
            }
            Err(e) => tracing::error!("cannot handle {sig}: {e}"),
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reasons_have_no_whitespace() {
        assert_eq!(Exit::Code(3).state_reason(), "Application.ExitCode.3");
        assert_eq!(
            Exit::Signal(libc::SIGSEGV).state_reason(),
            "Application.Signal.SIGSEGV"
        );
        assert_eq!(Exit::Signal(99).state_reason(), "Application.Signal.99");
        for r in [Exit::Code(-1), Exit::Signal(9)].map(Exit::state_reason) {
            assert!(!r.chars().any(char::is_whitespace), "{r}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let quick = Duration::from_millis(5);
        let mut d = next_backoff(None, quick);
        assert_eq!(d, RESTART_BACKOFF_INITIAL);
        let mut seen = vec![d];
        for _ in 0..12 {
            d = next_backoff(Some(d), quick);
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(200));
        assert_eq!(seen[4], Duration::from_millis(1600));
        assert_eq!(*seen.last().unwrap(), RESTART_BACKOFF_CAP);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            next_backoff(Some(RESTART_BACKOFF_CAP), RESTART_BACKOFF_RESET),
            RESTART_BACKOFF_INITIAL
        );
    }
}
