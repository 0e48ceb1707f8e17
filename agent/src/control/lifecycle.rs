//! Runs lifecycle operations decided by [`super::state`]: the application's hooks,
//! the freshness steps, stopping the application and asking for power-off.
//!
//! Every started operation runs in a task of its own and publishes its answer on a
//! watch channel; HTTP handlers only wait on that channel. A host that hangs up
//! mid-request therefore never leaves an operation half done or the state wedged, and
//! a retry simply waits on the same channel (Join) instead of calling the app again.

use super::state::{self, Base, Decision, Op, Phase};
use crate::config::{Credentials, Freshness, Hook, ImageConfig, Logging, RunRequest, Toggle};
use crate::hooks::{self, Outcome};
use crate::logs::Logs;
use crate::machine::{Machine, Role};
use crate::supervisor::{Exit, Supervisor};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// SIGTERM to SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long /suspend and /terminate wait for captured logs to be sent.
pub const LOG_FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// Longest we wait for sync(2) before answering anyway.
pub const STORAGE_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// After the agent ended the VM itself (application exit, maximum duration), how long
/// the host has to read `/v1/status` before power-off; a host `/terminate` cuts it short.
pub const SELF_TERMINATE_REPORT_WINDOW: Duration = Duration::from_secs(5);

/// An answer to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn new(status: u16, body: Value) -> Self {
        Answer { status, body }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Answer::new(status, json!({"error": code, "message": message.into()}))
    }
}

/// What a request carries into its operation.
#[derive(Debug)]
pub enum Input {
    Empty,
    Run(Box<RunRequest>),
    Resume(Box<Freshness>),
    /// Terminate started by the agent itself, with the reason.
    SelfTerminate(String),
}

/// Ask the main loop to power off, at once or after `after`.
#[derive(Debug, Clone)]
pub struct PowerRequest {
    pub reason: String,
    pub after: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct HookRecord {
    calls: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_duration_ms: Option<u64>,
    disabled: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RunInfo {
    microvm_id: String,
    region: Option<String>,
    logging: Option<Logging>,
    idle_policy: Option<crate::config::IdlePolicy>,
    maximum_duration_in_seconds: Option<u64>,
}

struct InFlight {
    op: Op,
    generation: u64,
    done: watch::Receiver<Option<Answer>>,
}

struct Inner {
    base: Base,
    in_flight: Option<InFlight>,
    generation: u64,
    last: HashMap<Op, Answer>,
    hooks: BTreeMap<Hook, HookRecord>,
    run: Option<RunInfo>,
    credentials: Option<Credentials>,
    state_reason: Option<String>,
}

/// Everything an operation touches outside the state.
pub struct Context {
    pub config: Result<ImageConfig, String>,
    pub supervisor: Option<Arc<Supervisor>>,
    pub logs: Option<Arc<Logs>>,
    pub activity: Arc<crate::activity::Activity>,
    pub events: Arc<crate::events::Events>,
    pub machine: Arc<dyn Machine>,
    pub power: mpsc::UnboundedSender<PowerRequest>,
    pub role: Role,
    pub boot: crate::boot::BootReport,
}

pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Lifecycle {
    inner: Mutex<Inner>,
    ctx: Context,
    started: Instant,
}

impl Lifecycle {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Lifecycle {
            inner: Mutex::new(Inner {
                base: Base::Pending,
                in_flight: None,
                generation: 0,
                last: HashMap::new(),
                hooks: BTreeMap::new(),
                run: None,
                credentials: None,
                state_reason: None,
            }),
            ctx,
            started: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic, and the panic hook is powering off already;
        // the state itself is still consistent enough to answer the host meanwhile.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handle one host request for `op`.
    pub async fn request(self: &Arc<Self>, op: Op, input: Input) -> Answer {
        if let (Err(e), false) = (&self.ctx.config, op == Op::Terminate) {
            return Answer::error(
                500,
                "ImageConfigInvalid",
                format!("{e}; fix the image and rebuild it (only /terminate works)"),
            );
        }
        let (mut done, start) = {
            let mut g = self.lock();
            let in_flight = g.in_flight.as_ref().map(|f| f.op);
            match state::decide(g.base, in_flight, op) {
                Decision::Reject => {
                    let phase = state::phase(g.base, in_flight);
                    return conflict(op, phase, in_flight);
                }
                Decision::Replay => {
                    let answer = g.last.get(&op).cloned();
                    drop(g);
                    if op == Op::Terminate {
                        // The host saw the VM end on its own and acknowledges it.
                        self.request_power("Host.Terminate", Duration::ZERO);
                    }
                    return answer.unwrap_or_else(|| Answer::new(200, json!({})));
                }
                Decision::Join => match &g.in_flight {
                    Some(f) => (f.done.clone(), None),
                    None => return Answer::error(500, "InternalError", "nothing to join"),
                },
                Decision::Start => {
                    g.generation += 1;
                    let (tx, rx) = watch::channel(None);
                    g.in_flight = Some(InFlight {
                        op,
                        generation: g.generation,
                        done: rx.clone(),
                    });
                    (rx, Some((tx, g.generation)))
                }
            }
        };
        if let Some((tx, generation)) = start {
            let this = self.clone();
            let by_host = !matches!(input, Input::SelfTerminate(_));
            tokio::spawn(async move {
                let answer = this.execute(op, input).await;
                let settled = this.finish(op, generation, answer, tx);
                // A self-termination asks for power-off itself, after a report window.
                if settled && op == Op::Terminate && by_host {
                    this.request_power("Host.Terminate", Duration::ZERO);
                }
            });
        }
        let answer = done.wait_for(Option::is_some).await.map(|a| a.clone());
        match answer {
            Ok(Some(a)) => a,
            _ => Answer::error(500, "InternalError", "operation vanished"),
        }
    }

    /// Settle the state and publish the answer; false if /terminate preempted `op`.
    fn finish(
        &self,
        op: Op,
        generation: u64,
        mut answer: Answer,
        tx: watch::Sender<Option<Answer>>,
    ) -> bool {
        let mut g = self.lock();
        let current = matches!(&g.in_flight, Some(f) if f.generation == generation);
        if current {
            g.base = state::complete(g.base, op, answer.status == 200);
            g.in_flight = None;
            if let Value::Object(m) = &mut answer.body {
                m.insert("state".into(), json!(state::phase(g.base, None)));
            }
            g.last.insert(op, answer.clone());
        } else {
            // Preempted by /terminate while it ran: its outcome no longer applies.
            let phase = state::phase(g.base, g.in_flight.as_ref().map(|f| f.op));
            answer = conflict(op, phase, Some(Op::Terminate));
        }
        drop(g);
        let _ = tx.send(Some(answer));
        current
    }

    fn request_power(&self, reason: &str, after: Duration) {
        let reason = self.lock().state_reason.clone().unwrap_or(reason.into());
        let _ = self.ctx.power.send(PowerRequest { reason, after });
    }

    async fn execute(self: &Arc<Self>, op: Op, input: Input) -> Answer {
        match (op, input) {
            (Op::Ready, _) => self.call_hook(Hook::Ready, b"{}".to_vec()).await,
            (Op::Validate, _) => self.call_hook(Hook::Validate, b"{}".to_vec()).await,
            (Op::Run, Input::Run(run)) => self.run(*run).await,
            (Op::Suspend, _) => self.suspend().await,
            (Op::Resume, input) => {
                self.ctx.activity.resume();
                let fresh = match input {
                    Input::Resume(f) => *f,
                    _ => Freshness::default(),
                };
                if let Err(a) = self.refresh(fresh) {
                    return a;
                }
                self.call_hook(Hook::Resume, b"{}".to_vec()).await
            }
            (Op::Terminate, input) => self.terminate(input).await,
            (op, input) => Answer::error(
                500,
                "InternalError",
                format!("{op:?} started with {input:?}"),
            ),
        }
    }

    async fn run(self: &Arc<Self>, run: RunRequest) -> Answer {
        if let Some(p) = &run.idle_policy {
            let min = crate::activity::min_idle();
            if Duration::from_secs(p.max_idle_duration_seconds) < min {
                return Answer::error(
                    400,
                    "BadRequest",
                    format!(
                        "idlePolicy.maxIdleDurationSeconds: must be at least {}, got {}",
                        min.as_secs(),
                        p.max_idle_duration_seconds
                    ),
                );
            }
        }
        {
            let mut g = self.lock();
            g.run = Some(RunInfo {
                microvm_id: run.microvm_id.clone(),
                region: run.region.clone(),
                logging: run.logging.clone(),
                idle_policy: run.idle_policy.clone(),
                maximum_duration_in_seconds: run.maximum_duration.map(|d| d.as_secs()),
            });
        }
        if let Err(a) = self.refresh(run.fresh.clone()) {
            return a;
        }
        if let Err(a) = self.configure_logs(&run) {
            return a;
        }
        let mut answer = self.call_hook(Hook::Run, run.app_body()).await;
        if answer.status == 200 {
            if let Value::Object(m) = &mut answer.body {
                m.insert("microvmId".into(), json!(run.microvm_id));
            }
            if let Some(policy) = &run.idle_policy {
                let max_idle = Duration::from_secs(policy.max_idle_duration_seconds);
                tokio::spawn(crate::activity::report(
                    self.ctx.activity.clone(),
                    self.ctx.events.clone(),
                    max_idle,
                ));
            }
            if let Some(max) = run.maximum_duration {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(max).await;
                    this.self_terminate("MaximumDuration.Exceeded".into()).await;
                });
            }
        }
        answer
    }

    /// The effective logging union decides where the application's lines go from now on.
    fn configure_logs(&self, run: &RunRequest) -> Result<(), Answer> {
        let (Some(logs), Ok(cfg)) = (&self.ctx.logs, &self.ctx.config) else {
            return Ok(());
        };
        let creds = self.lock().credentials.clone();
        let effective = crate::logs::effective(run.logging.as_ref(), cfg.logging.as_ref());
        let dest = crate::logs::destination(
            &effective,
            &cfg.image_name,
            &run.microvm_id,
            run.region.as_deref(),
            creds.is_some(),
        )
        .map_err(|e| Answer::error(400, "BadRequest", format!("logging: {e}")))?;
        logs.configure(dest, creds.as_ref());
        Ok(())
    }

    /// Send what the application wrote so far; reports whether it all left in time.
    async fn flush_logs(&self) -> Option<bool> {
        let logs = self.ctx.logs.as_ref()?;
        Some(logs.flush(LOG_FLUSH_DEADLINE).await)
    }

    /// Clock, entropy and credentials from the host, before the application hears of
    /// the run or the resume: a restored snapshot must not hand out stale time or a
    /// random stream that a sibling copy of the same snapshot also produces.
    fn refresh(&self, fresh: Freshness) -> Result<(), Answer> {
        if let Some(c) = fresh.clock {
            self.ctx.machine.set_clock(c.unix_time_nanos).map_err(|e| {
                Answer::error(500, "ClockStepFailed", format!("clock_settime: {e}"))
            })?;
        }
        if let Some(bytes) = &fresh.entropy {
            self.ctx.machine.add_entropy(bytes).map_err(|e| {
                Answer::error(
                    500,
                    "EntropyFailed",
                    format!("RNDADDENTROPY/RNDRESEEDCRNG: {e}"),
                )
            })?;
        }
        if let Some(c) = fresh.credentials {
            if let Some(logs) = &self.ctx.logs {
                logs.update_credentials(&c);
            }
            self.lock().credentials = Some(c);
        }
        Ok(())
    }

    async fn call_hook(&self, hook: Hook, body: Vec<u8>) -> Answer {
        let Ok(cfg) = &self.ctx.config else {
            return Answer::error(500, "ImageConfigInvalid", "no valid image config");
        };
        let (toggle, timeout) = cfg.hooks.setting(hook);
        if toggle == Toggle::Disabled {
            self.record(hook, None, None);
            return Answer::new(200, json!({"hook": hook, "result": "disabled"}));
        }
        let sup = self.ctx.supervisor.clone();
        let alive = move || sup.as_ref().is_some_and(|s| s.is_running());
        let t0 = Instant::now();
        let outcome = hooks::call(cfg.hooks.port(), hook, body, timeout, alive).await;
        let took = t0.elapsed();
        tracing::info!(
            hook = hook.name(),
            ?outcome,
            ms = took.as_millis() as u64,
            "hook"
        );
        self.record(hook, Some(outcome.clone()), Some(took));
        if !matches!(outcome, Outcome::Ok { .. } | Outcome::NotReady) {
            self.ctx
                .events
                .emit("hookFailed", json!({"hook": hook, "outcome": outcome}));
        }
        let status = match &outcome {
            Outcome::Ok { .. } => 200,
            Outcome::NotReady => 503,
            Outcome::Failed { .. } | Outcome::Unreachable { .. } => 502,
            Outcome::Timeout { .. } => 504,
        };
        let mut body = json!({"hook": hook});
        if let (Value::Object(m), Value::Object(o)) = (&mut body, json!(outcome)) {
            m.extend(o);
        }
        Answer::new(status, body)
    }

    fn record(&self, hook: Hook, outcome: Option<Outcome>, took: Option<Duration>) {
        let mut g = self.lock();
        let r = g.hooks.entry(hook).or_insert(HookRecord {
            calls: 0,
            last: None,
            last_duration_ms: None,
            disabled: false,
        });
        r.disabled = outcome.is_none();
        if outcome.is_some() {
            r.calls += 1;
        }
        r.last = outcome;
        r.last_duration_ms = took.map(|d| d.as_millis() as u64);
    }

    async fn terminate(self: &Arc<Self>, input: Input) -> Answer {
        let app_running = self.ctx.supervisor.as_ref().is_some_and(|s| s.is_running());
        let mut body = json!({});
        if app_running && self.ctx.config.is_ok() {
            // The app's answer is reported, but it cannot stop the termination.
            let hook = self.call_hook(Hook::Terminate, b"{}".to_vec()).await;
            body["hook"] = hook.body;
        }
        if let Some(sup) = &self.ctx.supervisor {
            if let Some(exit) = sup.stop(STOP_GRACE).await {
                body["applicationExit"] = json!(exit);
            }
        }
        if let Some(flushed) = self.flush_logs().await {
            body["logsFlushed"] = json!(flushed);
        }
        if let Err(e) = self.sync_storage(true).await {
            body["storageError"] = json!(e);
        }
        let reason = match input {
            Input::SelfTerminate(r) => r,
            _ => "Host.Terminate".to_string(),
        };
        let reason = {
            let mut g = self.lock();
            g.state_reason.get_or_insert(reason).clone()
        };
        body["stateReason"] = json!(reason);
        Answer::new(200, body)
    }

    /// The app's hook first (it may write state), then make the guest safe to snapshot:
    /// nothing dirty in the page cache that a restore elsewhere would miss.
    async fn suspend(&self) -> Answer {
        let mut answer = self.call_hook(Hook::Suspend, b"{}".to_vec()).await;
        if answer.status == 200 {
            if let Some(flushed) = self.flush_logs().await {
                answer.body["logsFlushed"] = json!(flushed);
            }
            if let Err(e) = self.sync_storage(false).await {
                answer = Answer::error(500, "QuiesceFailed", e);
            } else {
                // From here until /resume, time does not count as idle.
                self.ctx.activity.suspend();
            }
        }
        answer
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
    pub fn self_terminate(self: Arc<Self>, reason: String) -> BoxFuture {
        Box::pin(async move {
            {
                let mut g = self.lock();
                if g.state_reason.is_none() {
                    g.state_reason = Some(reason.clone());
                }
            }
            tracing::warn!(reason, "terminating on our own");
            let answer = self
                .request(Op::Terminate, Input::SelfTerminate(reason.clone()))
                .await;
            tracing::info!(status = answer.status, "self-termination done");
            self.request_power(&reason, SELF_TERMINATE_REPORT_WINDOW);
        })
    }

    /// The application exited and the policy says the VM ends with it.
    pub async fn application_exited(self: Arc<Self>, exit: Exit) {
        self.ctx.events.emit(
            "applicationExited",
            json!({"stateReason": exit.state_reason(), "exit": exit}),
        );
        self.self_terminate(exit.state_reason()).await;
    }

    pub async fn events(&self, after: u64, wait: Duration) -> Value {
        self.ctx.events.since(after, wait).await
    }

    pub fn status(&self) -> Value {
        let g = self.lock();
        let in_flight = g.in_flight.as_ref().map(|f| f.op);
        let (image_name, config_error) = match &self.ctx.config {
            Ok(c) => (Some(c.image_name.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        let application = self.ctx.supervisor.as_ref().map(|s| {
            let mut v = json!(s.status());
            v["orphansReaped"] = json!(s.orphans_reaped());
            v
        });
        let hooks: BTreeMap<&str, &HookRecord> =
            g.hooks.iter().map(|(h, r)| (h.name(), r)).collect();
        json!({
            "state": state::phase(g.base, in_flight),
            "inFlight": in_flight.map(Op::name),
            "stateReason": g.state_reason,
            "imageName": image_name,
            "configError": config_error,
            "microvmId": g.run.as_ref().map(|r| r.microvm_id.clone()),
            "run": g.run,
            "credentials": g.credentials.as_ref().map(|c| json!({
                "accessKeyId": c.access_key_id, "expiration": c.expiration})),
            "application": application,
            "hooks": hooks,
            "logs": self.ctx.logs.as_ref().map(|l| l.status()),
            "activity": {
                "ingressBytes": self.ctx.activity.bytes.load(std::sync::atomic::Ordering::Relaxed),
                "busy": self.ctx.activity.is_busy(),
                "idleForMs": self.ctx.activity.idle_for().as_millis() as u64,
            },
            "machine": self.ctx.machine.steps(),
            "role": self.ctx.role,
            "guest": (self.ctx.role == Role::Guest).then(|| {
                let mem = crate::guest::meminfo();
                json!({
                    "cid": crate::guest::local_cid(),
                    "memTotalKiB": mem.map(|m| m.0),
                    "memAvailableKiB": mem.map(|m| m.1),
                })
            }),
            "boot": self.ctx.boot,
            "uptimeMs": self.started.elapsed().as_millis() as u64,
        })
    }
}

fn conflict(op: Op, phase: Phase, in_flight: Option<Op>) -> Answer {
    let mut message = format!("{op:?} is not allowed in state {}", phase.as_str());
    if let Some(f) = in_flight {
        message.push_str(&format!(" ({f:?} in progress)"));
    }
    Answer::new(
        409,
        json!({"error": "InvalidState", "message": message, "state": phase}),
    )
}
