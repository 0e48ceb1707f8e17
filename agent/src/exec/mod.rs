//! Exec sessions and file transfer for the host, allowed only when the run enabled
//! shell ingress: who may start one ([`Exec::admit`]), how many run, and ending them
//! all when the MicroVM is suspended or terminated.
//!
//! Exec processes are the agent's children, reaped by its one reaper, and never the
//! application: no exit policy, no `stateReason`, and their output goes to the session
//! only. A session in progress (a file transfer too) holds the VM busy: an open shell
//! keeps it awake.

pub mod files;
pub mod pty;
pub mod session;
pub mod spawn;

use crate::activity::{Activity, Busy};
use crate::supervisor::Reaper;
use microvm_protocol::exec::{EndReason, MAX_SESSIONS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Whether sessions may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// No run yet (image-build phase, or `/run` in progress).
    NotYet,
    /// The run has no shell ingress.
    Forbidden,
    Open,
    /// Suspended or terminating: sessions were ended and no new one starts.
    Closed(EndReason),
}

/// Why a session may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the run did not enable shell ingress.
    Forbidden,
    /// 409: not in a state that runs sessions.
    NotNow,
    /// 429: [`MAX_SESSIONS`] are running.
    TooMany,
}

struct Registry {
    admission: Admission,
    /// The run's shell ingress, for re-opening after a resume.
    shell: bool,
    next: u64,
    live: HashMap<u64, watch::Sender<Option<EndReason>>>,
}

pub struct Exec {
    pub reaper: Arc<Reaper>,
    pub base: spawn::Base,
    activity: Arc<Activity>,
    registry: Mutex<Registry>,
    /// Woken whenever a session ends.
    ended: Notify,
}

/// A running session's place: it ends (its `end` says why) when the VM is suspended
/// or terminated; dropping it frees the place.
pub struct Ticket {
    exec: Arc<Exec>,
    id: u64,
    pub end: watch::Receiver<Option<EndReason>>,
    _busy: Busy,
}

impl Ticket {
    /// Resolves with why the session must end (a suspension or termination closing
    /// sessions); a registry that is gone counts as termination.
    pub fn ended(&self) -> impl std::future::Future<Output = EndReason> + Send + 'static {
        let mut end = self.end.clone();
        async move { ended(&mut end).await }
    }
}

/// See [`Ticket::ended`].
pub async fn ended(end: &mut watch::Receiver<Option<EndReason>>) -> EndReason {
    end.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| *r)
        .unwrap_or(EndReason::Terminate)
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.exec.lock().live.remove(&self.id);
        self.exec.ended.notify_waiters();
    }
}

impl Exec {
    pub fn new(reaper: Arc<Reaper>, base: spawn::Base, activity: Arc<Activity>) -> Arc<Exec> {
        Arc::new(Exec {
            reaper,
            base,
            activity,
            registry: Mutex::new(Registry {
                admission: Admission::NotYet,
                shell: false,
                next: 0,
                live: HashMap::new(),
            }),
            ended: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new session, if the run allows one now.
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, Refusal> {
        let mut g = self.lock();
        match g.admission {
            Admission::Open => {}
            Admission::Forbidden => return Err(Refusal::Forbidden),
            Admission::NotYet | Admission::Closed(_) => return Err(Refusal::NotNow),
        }
        if g.live.len() >= MAX_SESSIONS {
            return Err(Refusal::TooMany);
        }
        g.next += 1;
        let id = g.next;
        let (tx, end) = watch::channel(None);
        g.live.insert(id, tx);
        drop(g);
        Ok(Ticket {
            exec: self.clone(),
            id,
            end,
            _busy: self.activity.busy(),
        })
    }

    /// The run started: sessions may start if it has shell ingress.
    pub fn run_started(&self, shell: bool) {
        let mut g = self.lock();
        g.shell = shell;
        if g.admission == Admission::NotYet {
            g.admission = if shell {
                Admission::Open
            } else {
                Admission::Forbidden
            };
        }
    }

    /// The VM runs again after a suspension (or one that failed).
    pub fn reopen(&self) {
        let mut g = self.lock();
        if g.admission == Admission::Closed(EndReason::Suspend) {
            g.admission = if g.shell {
                Admission::Open
            } else {
                Admission::Forbidden
            };
        }
    }

    /// No new session from now on; every live one ends with `reason`. Waits up to
    /// `wait` for them to have sent their final frames; returns how many were live.
    pub async fn close(&self, reason: EndReason, wait: Duration) -> usize {
        let live = {
            let mut g = self.lock();
            // Terminating is final; a suspension never reopens what terminate closed.
            if g.admission != Admission::Closed(EndReason::Terminate) {
                g.admission = Admission::Closed(reason);
            }
            for tx in g.live.values() {
                tx.send_replace(Some(reason));
            }
            g.live.len()
        };
        if live > 0 {
            tracing::info!(sessions = live, ?reason, "ending exec sessions");
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                let notified = self.ended.notified();
                if self.lock().live.is_empty() {
                    return;
                }
                notified.await;
            }
        })
        .await;
        live
    }

    /// Sessions running now.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Arc<Exec> {
        Exec::new(
            Arc::new(Reaper::default()),
            spawn::Base::default(),
            Activity::new(),
        )
    }

    #[tokio::test]
    async fn admission_follows_the_run_and_its_suspensions() {
        let e = exec();
        assert_eq!(e.admit().err(), Some(Refusal::NotNow), "before /run");
        e.run_started(false);
        assert_eq!(e.admit().err(), Some(Refusal::Forbidden));
        let e = exec();
        e.run_started(true);
        let t = e.admit().unwrap();
        assert!(e.activity.is_busy(), "a session keeps the VM awake");
        let waiter = tokio::spawn(t.ended());
        let closing = {
            let e = e.clone();
            tokio::spawn(async move { e.close(EndReason::Suspend, Duration::from_secs(5)).await })
        };
        assert_eq!(waiter.await.unwrap(), EndReason::Suspend);
        assert_eq!(e.admit().err(), Some(Refusal::NotNow), "suspended");
        drop(t);
        assert_eq!(
            closing.await.unwrap(),
            1,
            "close waited for the one session"
        );
        assert!(!e.activity.is_busy());
        e.reopen();
        assert!(e.admit().is_ok());
        e.close(EndReason::Terminate, Duration::ZERO).await;
        e.reopen();
        assert_eq!(e.admit().err(), Some(Refusal::NotNow), "terminate is final");
    }

    #[tokio::test]
    async fn sessions_are_bounded() {
        let e = exec();
        e.run_started(true);
        let held: Vec<Ticket> = (0..MAX_SESSIONS).map(|_| e.admit().unwrap()).collect();
        assert_eq!(e.admit().err(), Some(Refusal::TooMany));
        drop(held);
        assert_eq!(e.live(), 0);
        assert!(e.admit().is_ok());
    }
}
