//! The lifecycle operations themselves: what `/ready`, `/validate`, `/run`,
//! `/suspend`, `/resume` and `/terminate` do, and the agent's own termination.

use super::{
    Input, Lifecycle, CREDENTIALS_REWARN, CREDENTIALS_WARNING, LOG_FLUSH_DEADLINE,
    SELF_TERMINATE_REPORT_WINDOW,
};
use super::{EXEC_END_WAIT, LOG_HOLD_DEADLINE, STOP_GRACE, STORAGE_SYNC_TIMEOUT};
use crate::config::run::parse_rfc3339;
use crate::config::{Freshness, RunRequest, Toggle};
use crate::control::answer::Answer;
use crate::events::EventType;
use microvm_protocol::exec::EndReason;
use microvm_protocol::run::Credentials;
use microvm_protocol::status::{
    Exit, HookAnswer, HookOutcome, RunInfo, SuspendTimings, TerminateAnswer,
};
use microvm_protocol::{ApiError, ErrorCode, Hook};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Lifecycle {
    pub(super) async fn execute(self: &Arc<Self>, op: Hook, input: Input) -> Answer {
        match (op, input) {
            (Hook::Ready, _) => answer(self.call_hook(Hook::Ready, b"{}".to_vec()).await),
            (Hook::Validate, _) => answer(self.call_hook(Hook::Validate, b"{}".to_vec()).await),
            (Hook::Run, Input::Run(run)) => self.run(*run).await,
            (Hook::Suspend, _) => self.suspend().await,
            (Hook::Resume, input) => {
                let fresh = match input {
                    Input::Resume(f) => *f,
                    _ => Freshness::default(),
                };
                // The host runs the VM again, whatever becomes of this request: the
                // logs must not stay held (a refused clock step would otherwise keep
                // them so until /terminate).
                self.release_logs();
                if let Err(a) = self.refresh(fresh) {
                    return a;
                }
                let answer = answer(self.call_hook(Hook::Resume, b"{}".to_vec()).await);
                // Idle time counts again only once the guest really runs: a failed
                // resume leaves it SUSPENDED, and suspended time is never idle time.
                if answer.status == 200 {
                    self.ctx.activity.resume();
                    self.ctx.exec.reopen();
                }
                answer
            }
            (Hook::Terminate, input) => self.terminate(input).await,
            (op, input) => ApiError::new(
                ErrorCode::InternalError,
                format!("{op:?} started with {input:?}"),
            )
            .into(),
        }
    }

    async fn run(self: &Arc<Self>, run: RunRequest) -> Answer {
        if let Some(n) = run.test_min_idle {
            tracing::warn!(
                "test-only setting: minimum idle duration lowered to {}s",
                n.as_secs()
            );
        }
        if let Some(p) = &run.idle_policy {
            let min = run.test_min_idle.unwrap_or_else(crate::activity::min_idle);
            if Duration::from_secs(p.max_idle_duration_seconds) < min {
                return ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "idlePolicy.maxIdleDurationSeconds: must be at least {}, got {}",
                        min.as_secs(),
                        p.max_idle_duration_seconds
                    ),
                )
                .with_field("idlePolicy.maxIdleDurationSeconds")
                .into();
            }
        }
        let logs_destination = match self.plan_logs(&run) {
            Ok(d) => d,
            Err(a) => return a,
        };
        // Before the run's facts: the logs endpoint and the application may need it.
        let network = match &run.network {
            None => None,
            Some(n) => match self.configure_network(n.clone()).await {
                Ok(line) => Some(line),
                Err(a) => return a,
            },
        };
        {
            let mut g = self.lock();
            g.run = Some(RunInfo {
                microvm_id: run.microvm_id.clone(),
                region: run.region.clone(),
                logging: run.logging.clone(),
                idle_policy: run.idle_policy.clone(),
                maximum_duration_in_seconds: run.maximum_duration.map(|d| d.as_secs()),
                network,
                shell_ingress: run.shell_ingress,
            });
        }
        if let Some(md) = &self.ctx.metadata {
            md.set_run(
                &run.microvm_id,
                run.region.as_deref(),
                &run.run_hook_payload,
            );
        }
        if self.ctx.sdk_config_file {
            // The region is validated (config::run::valid_region) before it gets here.
            if let Err(e) = crate::sdkconfig::write(
                std::path::Path::new(crate::sdkconfig::PATH),
                run.region.as_deref(),
            ) {
                tracing::error!("writing {}: {e}", crate::sdkconfig::PATH);
            }
        }
        if let Err(a) = self.refresh(run.fresh.clone()) {
            return a;
        }
        if let (Some(logs), Some(dest)) = (&self.ctx.logs, logs_destination) {
            let creds = self.lock().credentials.clone();
            logs.configure(dest, creds.as_ref());
        }
        let mut hook = match self.call_hook(Hook::Run, run.app_body()).await {
            Ok(h) => h,
            Err(e) => return e,
        };
        if hook.outcome.http_status() == 200 {
            hook.microvm_id = Some(run.microvm_id.clone());
        }
        answer(Ok(hook))
    }

    /// Once a run has settled as RUNNING (not when /terminate preempted it): the idle
    /// reporter and the maximum-duration timer of its policy.
    pub(super) fn run_started(self: &Arc<Self>) {
        let (idle_policy, max_duration, shell) = match &self.lock().run {
            Some(r) => (
                r.idle_policy.clone(),
                r.maximum_duration_in_seconds,
                r.shell_ingress,
            ),
            None => return,
        };
        self.ctx.exec.run_started(shell);
        if let Some(policy) = idle_policy {
            let max_idle = Duration::from_secs(policy.max_idle_duration_seconds);
            tokio::spawn(crate::activity::report(
                self.ctx.activity.clone(),
                self.ctx.events.clone(),
                max_idle,
            ));
        }
        if let Some(secs) = max_duration {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                this.self_terminate("MaximumDuration.Exceeded".into()).await;
            });
        }
    }

    /// Where the application's lines go for this run (the effective logging union),
    /// decided before anything of the run is applied: a run refused for its logging
    /// leaves no trace in the metadata service, the clock or the credentials.
    fn plan_logs(&self, run: &RunRequest) -> Result<Option<crate::logs::Destination>, Answer> {
        let (Some(_), Ok(cfg)) = (&self.ctx.logs, &self.ctx.config) else {
            return Ok(None);
        };
        let has_creds = run.fresh.credentials.is_some() || self.lock().credentials.is_some();
        let effective = crate::logs::effective(run.logging.as_ref(), cfg.logging.as_ref());
        crate::logs::destination(
            &effective,
            &cfg.image_name,
            &run.microvm_id,
            run.region.as_deref(),
            run.logs_endpoint.as_deref(),
            has_creds,
        )
        .map(Some)
        .map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("logging: {e}"))
                .with_field("logging")
                .into()
        })
    }

    /// The run's `network` on the guest's NIC (interface ioctls, which may wait up to
    /// 3 s for the NIC to appear: off the runtime thread).
    async fn configure_network(
        &self,
        n: crate::sys::network::NetSettings,
    ) -> Result<String, Answer> {
        if !self.ctx.network_ours {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "network: this agent does not own its network (not a guest's PID 1, nor in a network namespace of its own)",
            )
            .with_field("network")
            .into());
        }
        let applied = tokio::task::spawn_blocking(move || crate::sys::network::apply(&n))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        match applied {
            Ok(line) => {
                tracing::info!("{line} (from /run)");
                Ok(line)
            }
            Err(e) => Err(
                ApiError::new(ErrorCode::BadRequest, format!("network: {e}"))
                    .with_field("network")
                    .into(),
            ),
        }
    }

    /// Send what the application wrote so far; reports whether it all left in time.
    async fn flush_logs(&self) -> Option<bool> {
        let logs = self.ctx.logs.as_ref()?;
        Some(logs.flush(LOG_FLUSH_DEADLINE).await)
    }

    /// Flush, then hold the sender until `/resume`: nothing is on the wire when the
    /// host saves the VM. True only if both finished in time.
    async fn flush_and_hold_logs(&self) -> Option<bool> {
        let logs = self.ctx.logs.as_ref()?;
        let flushed = logs.flush(LOG_FLUSH_DEADLINE).await;
        Some(logs.hold(LOG_HOLD_DEADLINE).await && flushed)
    }

    fn release_logs(&self) {
        if let Some(logs) = &self.ctx.logs {
            logs.release();
        }
    }

    /// Clock, entropy and credentials from the host, before the application hears of
    /// the run or the resume: a restored snapshot must not hand out stale time or a
    /// random stream that a sibling copy of the same snapshot also produces.
    fn refresh(self: &Arc<Self>, fresh: Freshness) -> Result<(), Answer> {
        if let Some(c) = fresh.clock {
            self.ctx.machine.set_clock(c.unix_time_nanos).map_err(|e| {
                ApiError::new(ErrorCode::ClockStepFailed, format!("clock_settime: {e}"))
            })?;
            // Wall-clock deadlines are recomputed from the new time.
            self.clock_stepped.notify_waiters();
        }
        if let Some(bytes) = &fresh.entropy {
            self.ctx.machine.add_entropy(bytes).map_err(|e| {
                ApiError::new(
                    ErrorCode::EntropyFailed,
                    format!("RNDADDENTROPY/RNDRESEEDCRNG: {e}"),
                )
            })?;
        }
        if let Some(c) = fresh.credentials {
            self.set_credentials(c);
        }
        Ok(())
    }

    /// New credentials for everyone at once: the agent's CloudWatch client, the
    /// metadata service, the status; and the host is warned before they expire, then
    /// once a minute until a newer set arrives. The same set sent again changes
    /// nothing (its warning timer runs on).
    pub fn set_credentials(self: &Arc<Self>, c: Credentials) {
        let generation = {
            let _one = self
                .credentials_gate
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self.lock().credentials.as_ref() == Some(&c) {
                return;
            }
            if let Some(logs) = &self.ctx.logs {
                logs.update_credentials(&c);
            }
            if let Some(md) = &self.ctx.metadata {
                md.set_credentials(&c);
            }
            let mut g = self.lock();
            g.credentials = Some(c.clone());
            g.credentials_generation += 1;
            // A new set's first warning is never held back by an older set's.
            g.credentials_warned = None;
            g.credentials_generation
        };
        let Some(expires) = c.expiration.as_deref().and_then(parse_rfc3339) else {
            return;
        };
        // The warning is a wall-clock deadline: computed from the expiration and the
        // wall clock now, and again whenever the clock is stepped (a restored snapshot
        // stood still on disk while the wall clock went on).
        let this = self.clone();
        tokio::spawn(async move {
            let current = |this: &Self| this.lock().credentials_generation == generation;
            loop {
                let stepped = this.clock_stepped.notified();
                tokio::pin!(stepped);
                stepped.as_mut().enable();
                let now = crate::clock::unix_secs();
                if now > expires {
                    // Expired: the host has heard it every minute for 20 minutes.
                    return;
                }
                let due = warning_delay(expires, now);
                let since = this.lock().credentials_warned.map(|t| t.elapsed());
                let delay = match (due, since) {
                    (Some(d), _) => Some(d),
                    (None, Some(s)) if s < CREDENTIALS_REWARN => Some(CREDENTIALS_REWARN - s),
                    (None, _) => None,
                };
                if let Some(delay) = delay {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stepped => {}
                    }
                    // Replaced meanwhile: the newer update has its own timer.
                    if !current(&this) {
                        return;
                    }
                    continue;
                }
                {
                    let mut g = this.lock();
                    if g.credentials_generation != generation {
                        return;
                    }
                    g.credentials_warned = Some(Instant::now());
                }
                this.ctx.events.emit(
                    EventType::CredentialsExpiring,
                    json!({"accessKeyId": c.access_key_id, "expiration": c.expiration}),
                );
            }
        });
    }

    /// Call the application's `hook` (unless the image disables it) and record it.
    async fn call_hook(&self, hook: Hook, body: Vec<u8>) -> Result<HookAnswer, Answer> {
        let Ok(cfg) = &self.ctx.config else {
            return Err(
                ApiError::new(ErrorCode::ImageConfigInvalid, "no valid image config").into(),
            );
        };
        let (toggle, timeout) = cfg.hooks.setting(hook);
        if toggle == Toggle::Disabled {
            self.record(hook, None, None);
            return Ok(hook_answer(hook, HookOutcome::Disabled));
        }
        let sup = self.ctx.supervisor.clone();
        let alive = move || sup.as_ref().is_some_and(|s| s.is_running());
        let t0 = Instant::now();
        let outcome = self
            .hooks
            .call(cfg.hooks.port(), hook, body, timeout, alive)
            .await;
        let took = t0.elapsed();
        tracing::info!(
            hook = hook.name(),
            ?outcome,
            ms = took.as_millis() as u64,
            "hook"
        );
        self.record(hook, Some(outcome.clone()), Some(took));
        if outcome.is_fault() {
            self.ctx.events.emit(
                EventType::HookFailed,
                json!({"hook": hook, "outcome": outcome}),
            );
        }
        Ok(hook_answer(hook, outcome))
    }

    fn record(&self, hook: Hook, outcome: Option<HookOutcome>, took: Option<Duration>) {
        let mut g = self.lock();
        let r = g.hooks.entry(hook).or_default();
        r.disabled = outcome.is_none();
        if outcome.is_some() {
            r.calls += 1;
        }
        r.last = outcome;
        r.last_duration_ms = took.map(|d| d.as_millis() as u64);
    }

    async fn terminate(self: &Arc<Self>, input: Input) -> Answer {
        // From SUSPENDED too (a self-termination): the hook's and the shutdown's
        // lines must not meet a held pipeline.
        self.release_logs();
        let exec_sessions = self
            .ctx
            .exec
            .close(EndReason::Terminate, EXEC_END_WAIT)
            .await;
        let app_running = self.ctx.supervisor.as_ref().is_some_and(|s| s.is_running());
        // The app's answer is reported, but it cannot stop the termination.
        let hook = if app_running && self.ctx.config.is_ok() {
            self.call_hook(Hook::Terminate, b"{}".to_vec()).await.ok()
        } else {
            None
        };
        let application_exit = match &self.ctx.supervisor {
            Some(sup) => sup.stop(STOP_GRACE).await,
            None => None,
        };
        self.release_logs();
        let logs_flushed = self.flush_logs().await;
        let storage_error = self.sync_storage(true).await.err();
        let reason = match input {
            Input::SelfTerminate(r) => r,
            _ => "Host.Terminate".to_string(),
        };
        let reason = {
            let mut g = self.lock();
            g.state_reason.get_or_insert(reason).clone()
        };
        Answer::typed(
            200,
            &TerminateAnswer {
                hook,
                application_exit,
                logs_flushed,
                storage_error,
                exec_sessions_ended: exec_sessions as u64,
                state_reason: reason,
                state: None,
            },
        )
    }

    /// The app's hook first (it may write state), then make the guest safe to snapshot:
    /// nothing dirty in the page cache that a restore elsewhere would miss.
    async fn suspend(&self) -> Answer {
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let mut hook = match self.call_hook(Hook::Suspend, b"{}".to_vec()).await {
            Ok(h) if h.outcome.http_status() == 200 => h,
            other => return answer(other),
        };
        let application_ms = ms(t0);
        // A snapshot would cut their streams anyway: they end now, saying why.
        hook.exec_sessions_ended =
            Some(self.ctx.exec.close(EndReason::Suspend, EXEC_END_WAIT).await as u64);
        let t1 = Instant::now();
        hook.logs_flushed = self.flush_and_hold_logs().await;
        let logs_flush_ms = ms(t1);
        let t2 = Instant::now();
        let synced = self.sync_storage(false).await;
        hook.timings = Some(SuspendTimings {
            application_ms,
            logs_flush_ms,
            storage_sync_ms: ms(t2),
        });
        if let Err(e) = synced {
            self.release_logs();
            self.ctx.exec.reopen();
            // The app believes it is suspended while the VM stays RUNNING: tell it to
            // resume, so both agree, and say what became of that.
            let resumed = match self.call_hook(Hook::Resume, b"{}".to_vec()).await {
                Ok(h) => match h.outcome {
                    HookOutcome::Disabled => "its resume hook is disabled".to_string(),
                    o if !o.is_fault() => "it was resumed".to_string(),
                    o => format!("resuming it failed: {}", json!(o)),
                },
                Err(a) => format!("resuming it failed: {}", a.body),
            };
            let msg =
                format!("{e}; the guest stays RUNNING and the application was told so: {resumed}");
            return ApiError::new(ErrorCode::QuiesceFailed, msg).into();
        }
        // From here until /resume, time does not count as idle.
        self.ctx.activity.suspend();
        answer(Ok(hook))
    }

    /// Bounded: a wedged disk must not wedge the lifecycle.
    async fn sync_storage(&self, final_: bool) -> Result<(), String> {
        let machine = self.ctx.machine.clone();
        let job = tokio::task::spawn_blocking(move || machine.sync_storage(final_));
        match tokio::time::timeout(STORAGE_SYNC_TIMEOUT, job).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("sync/remount: {e}")),
            Ok(Err(e)) => Err(format!("sync task: {e}")),
            Err(_) => Err(format!(
                "sync did not finish within {STORAGE_SYNC_TIMEOUT:?}"
            )),
        }
    }

    /// The agent ends the VM on its own; the host learns why from status and events.
    /// Boxed because a run schedules it, and it runs operations itself: the cycle
    /// needs a named future type.
    pub fn self_terminate(self: Arc<Self>, reason: String) -> super::BoxFuture {
        Box::pin(async move {
            {
                let mut g = self.lock();
                if g.state_reason.is_none() {
                    g.state_reason = Some(reason.clone());
                }
            }
            tracing::warn!(reason, "terminating on our own");
            let answer = self
                .request(Hook::Terminate, Input::SelfTerminate(reason.clone()))
                .await;
            tracing::info!(status = answer.status, "self-termination done");
            self.request_power(&reason, SELF_TERMINATE_REPORT_WINDOW);
        })
    }

    /// The application exited and the policy says the VM ends with it.
    pub async fn application_exited(self: Arc<Self>, exit: Exit, reason: String) {
        self.ctx.events.emit(
            EventType::ApplicationExited,
            json!({"stateReason": reason, "exit": exit}),
        );
        self.self_terminate(reason).await;
    }
}

/// How long until the host must hear `credentialsExpiring` for credentials expiring
/// at `expires` (Unix seconds), the wall clock being `now`; None: warn now.
pub fn warning_delay(expires: i64, now: i64) -> Option<Duration> {
    let warn_at = expires.saturating_sub(CREDENTIALS_WARNING.as_secs() as i64);
    (warn_at > now).then(|| Duration::from_secs(warn_at.saturating_sub(now) as u64))
}

fn hook_answer(hook: Hook, outcome: HookOutcome) -> HookAnswer {
    HookAnswer {
        hook,
        outcome,
        microvm_id: None,
        logs_flushed: None,
        state: None,
        timings: None,
        exec_sessions_ended: None,
    }
}

/// A hook's answer to the host, with the status its outcome calls for.
fn answer(hook: Result<HookAnswer, Answer>) -> Answer {
    match hook {
        Ok(h) => Answer::typed(h.outcome.http_status(), &h),
        Err(e) => e,
    }
}
