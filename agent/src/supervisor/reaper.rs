//! The one owner of waitpid(2). It runs on SIGCHLD and reaps every child, orphans
//! re-parented to us included. Nothing else in the agent may wait for a child
//! (tokio::process would race it), so spawns go through the reaper, which holds its
//! table lock across fork so a fast-exiting child cannot be reaped before it is known.

use microvm_protocol::status::Exit;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

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
