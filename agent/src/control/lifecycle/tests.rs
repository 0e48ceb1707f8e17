//! The lifecycle through its seams: a recording [`FakeMachine`] in place of the real
//! clock, entropy pool and disk, and a real hook-sdk server as the application.

use super::*;
use crate::sys::machine::fake::{Call, FakeMachine};
use hook_sdk::{HookResponse, Hooks};
use std::sync::atomic::{AtomicU32, Ordering};

/// The application: counts each hook and notes what the machine had done when `/run`
/// arrived.
#[derive(Default)]
struct App {
    calls: Mutex<Vec<Hook>>,
    machine_at_run: Mutex<Vec<Call>>,
    machine: Mutex<Option<Arc<FakeMachine>>>,
    suspends: AtomicU32,
    fail_resume: std::sync::atomic::AtomicBool,
    /// How long `/run` takes to answer.
    run_delay_ms: std::sync::atomic::AtomicU64,
}

struct Shared(Arc<App>);

impl Hooks for Shared {
    async fn run(&self, _r: hook_sdk::RunRequest) -> HookResponse {
        self.0.calls.lock().unwrap().push(Hook::Run);
        let delay = self.0.run_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if let Some(m) = self.0.machine.lock().unwrap().as_ref() {
            *self.0.machine_at_run.lock().unwrap() = m.calls();
        }
        HookResponse::Ok
    }
    async fn suspend(&self) -> HookResponse {
        self.0.calls.lock().unwrap().push(Hook::Suspend);
        self.0.suspends.fetch_add(1, Ordering::SeqCst);
        HookResponse::Ok
    }
    async fn resume(&self) -> HookResponse {
        self.0.calls.lock().unwrap().push(Hook::Resume);
        if self.0.fail_resume.load(Ordering::SeqCst) {
            return HookResponse::error(500, "cannot resume");
        }
        HookResponse::Ok
    }
}

struct Rig {
    lc: Arc<Lifecycle>,
    machine: Arc<FakeMachine>,
    app: Arc<App>,
    power: mpsc::UnboundedReceiver<PowerRequest>,
}

async fn rig() -> Rig {
    let server = hook_sdk::Server::bind(0).await.unwrap();
    let port = server.local_addr().unwrap().port();
    let app = Arc::new(App::default());
    tokio::spawn(server.serve(Shared(app.clone())));
    let config = ImageConfig::parse(
        format!(
            r#"{{"imageName":"t","command":["/bin/true"],"hooks":{{"port":{port},
            "microvmHooks":{{"run":"ENABLED","suspend":"ENABLED","resume":"ENABLED"}}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let machine = Arc::new(FakeMachine::default());
    *app.machine.lock().unwrap() = Some(machine.clone());
    let (power_tx, power) = mpsc::unbounded_channel();
    let activity = Activity::new();
    let exec = crate::exec::Exec::new(
        Arc::new(crate::supervisor::Reaper::default()),
        crate::exec::spawn::Base::default(),
        activity.clone(),
    );
    let lc = Lifecycle::new(Context {
        config: Ok(config),
        supervisor: None,
        logs: None,
        activity,
        events: Arc::new(Events::new()),
        machine: machine.clone(),
        power: power_tx,
        role: Role::Namespace,
        boot: BootReport::default(),
        metadata: None,
        sdk_config_file: false,
        network_ours: false,
        exec,
    });
    Rig {
        lc,
        machine,
        app,
        power,
    }
}

fn run_input() -> Input {
    run_with("")
}

/// A run envelope with clock and entropy, plus `extra` fields (`,"k":v` form).
fn run_with(extra: &str) -> Input {
    let entropy = "A".repeat(44);
    let body = format!(
        r#"{{"microvmId":"mvm-1","clock":{{"unixTimeNanos":1795000000000000000}},"entropy":"{entropy}"{extra}}}"#
    );
    Input::Run(Box::new(RunRequest::parse(body.as_bytes()).unwrap()))
}

async fn running() -> Rig {
    let r = rig().await;
    let a = r.lc.request(Hook::Run, run_input()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    r
}

#[tokio::test]
async fn run_steps_the_clock_and_entropy_before_the_application_hears_of_it() {
    let r = running().await;
    assert_eq!(
        *r.app.machine_at_run.lock().unwrap(),
        [Call::Clock(1_795_000_000_000_000_000), Call::Entropy(33)]
    );
    let s = r.lc.status();
    assert_eq!(s.state, State::Running);
    assert_eq!(s.microvm_id.as_deref(), Some("mvm-1"));
    assert_eq!(s.hooks[&Hook::Run].calls, 1);
}

#[tokio::test]
async fn a_failed_clock_step_is_an_error_the_application_never_sees() {
    let r = rig().await;
    *r.machine.fail_clock.lock().unwrap() = true;
    let a = r.lc.request(Hook::Run, run_input()).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.body["error"], "ClockStepFailed");
    assert!(r.app.calls.lock().unwrap().is_empty());
    // A failed transition returns to where it started: the host may retry.
    assert_eq!(r.lc.status().state, State::Pending);
    *r.machine.fail_clock.lock().unwrap() = false;
    assert_eq!(r.lc.request(Hook::Run, run_input()).await.status, 200);
}

#[tokio::test]
async fn concurrent_suspends_call_the_application_and_the_disk_once() {
    let r = running().await;
    r.machine.stall_sync(true);
    let (a, b) = (r.lc.clone(), r.lc.clone());
    let first = tokio::spawn(async move { a.request(Hook::Suspend, Input::Empty).await });
    // Wait until the first one holds the disk, then ask again twice.
    while !r.machine.calls().contains(&Call::Sync { final_: false }) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.lc.status().state, State::Suspending);
    let second = tokio::spawn(async move { b.request(Hook::Suspend, Input::Empty).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.machine.stall_sync(false);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first, second, "a retry joins: same answer");
    assert_eq!(r.app.suspends.load(Ordering::SeqCst), 1);
    let syncs = r
        .machine
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Sync { .. }))
        .count();
    assert_eq!(syncs, 1);
    assert_eq!(r.lc.status().state, State::Suspended);
    // Once settled, a retry replays the answer without running anything again.
    assert_eq!(r.lc.request(Hook::Suspend, Input::Empty).await, first);
    assert_eq!(r.app.suspends.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_quiesce_is_an_error_and_the_application_is_resumed() {
    // The bug this guards: the app had suspended, the disk failed, and the VM stayed
    // RUNNING with an application that believed it was suspended.
    let r = running().await;
    *r.machine.fail_sync.lock().unwrap() = true;
    let a = r.lc.request(Hook::Suspend, Input::Empty).await;
    assert_eq!(a.status, 500);
    assert_eq!(a.body["error"], "QuiesceFailed");
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("it was resumed"),
        "{}",
        a.body
    );
    assert_eq!(
        *r.app.calls.lock().unwrap(),
        [Hook::Run, Hook::Suspend, Hook::Resume]
    );
    assert_eq!(r.lc.status().state, State::Running);
}

#[tokio::test]
async fn a_failed_resume_keeps_suspended_time_out_of_idle_time() {
    // The bug this guards: activity tracking resumed before the app's hook, so a failed
    // resume left the VM SUSPENDED while its suspended time counted as idle.
    let r = running().await;
    assert_eq!(r.lc.request(Hook::Suspend, Input::Empty).await.status, 200);
    r.app.fail_resume.store(true, Ordering::SeqCst);
    let a = r.lc.request(Hook::Resume, Input::Empty).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(r.lc.status().state, State::Suspended);
    let before = r.lc.status().activity.idle_for_ms;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.lc.status().activity.idle_for_ms, before);
    r.app.fail_resume.store(false, Ordering::SeqCst);
    assert_eq!(r.lc.request(Hook::Resume, Input::Empty).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.lc.status().activity.idle_for_ms >= before + 250);
}

#[tokio::test]
async fn a_run_preempted_by_terminate_starts_no_timer() {
    // The bug this guards: a /run that /terminate preempted still armed its
    // maximum-duration timer (and idle reporter), which later fired on a dead VM.
    let mut r = rig().await;
    // The app takes a second to answer /run; /terminate comes well before that.
    r.app.run_delay_ms.store(1000, Ordering::SeqCst);
    let a = r.lc.clone();
    let run = tokio::spawn(async move {
        a.request(Hook::Run, run_with(r#","maximumDurationInSeconds":1"#))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = r.lc.request(Hook::Terminate, Input::Empty).await;
    assert_eq!(t.status, 200);
    assert_eq!(run.await.unwrap().status, 409);
    assert_eq!(r.power.recv().await.unwrap().reason, "Host.Terminate");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        r.power.try_recv().is_err(),
        "no timer fired after the run lost"
    );
    assert_eq!(
        r.lc.status().state_reason.as_deref(),
        Some("Host.Terminate")
    );
}

#[tokio::test]
async fn a_settled_run_arms_its_maximum_duration() {
    let mut r = rig().await;
    let a =
        r.lc.request(Hook::Run, run_with(r#","maximumDurationInSeconds":1"#))
            .await;
    assert_eq!(a.status, 200);
    let p = tokio::time::timeout(Duration::from_secs(5), r.power.recv())
        .await
        .unwrap();
    assert_eq!(p.unwrap().reason, "MaximumDuration.Exceeded");
    assert_eq!(r.lc.status().state, State::Terminated);
}

#[tokio::test]
async fn terminate_preempts_a_suspend_stuck_on_the_disk() {
    let mut r = running().await;
    r.machine.stall_sync(true);
    let a = r.lc.clone();
    let suspend = tokio::spawn(async move { a.request(Hook::Suspend, Input::Empty).await });
    while !r.machine.calls().contains(&Call::Sync { final_: false }) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = r.lc.clone();
    let terminate = tokio::spawn(async move { t.request(Hook::Terminate, Input::Empty).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.lc.status().state, State::Terminating);
    r.machine.stall_sync(false);
    let (suspend, terminate) = (suspend.await.unwrap(), terminate.await.unwrap());
    assert_eq!(suspend.status, 409, "{}", suspend.body);
    assert_eq!(suspend.body["error"], "InvalidState");
    assert_eq!(terminate.status, 200, "{}", terminate.body);
    assert_eq!(terminate.body["stateReason"], "Host.Terminate");
    assert!(r.machine.calls().contains(&Call::Sync { final_: true }));
    assert_eq!(r.lc.status().state, State::Terminated);
    let power = r.power.recv().await.unwrap();
    assert_eq!(
        (power.reason.as_str(), power.after),
        ("Host.Terminate", Duration::ZERO)
    );
}

#[tokio::test]
async fn a_bad_state_is_409_with_the_state() {
    let r = rig().await;
    let a = r.lc.request(Hook::Resume, Input::Empty).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.body["error"], "InvalidState");
    assert_eq!(a.body["state"], "PENDING");
}

#[test]
fn the_credentials_warning_is_twenty_minutes_before_expiry_on_the_wall_clock() {
    let exp = 1_800_000_000;
    assert_eq!(
        ops::warning_delay(exp, exp - 20 * 60 - 90),
        Some(Duration::from_secs(90))
    );
    // A restored snapshot: the wall clock jumped past the warning point while the
    // monotonic clock stood still; the warning is due at once, not after the rest of
    // a sleep computed before the save.
    assert_eq!(ops::warning_delay(exp, exp - 20 * 60), None);
    assert_eq!(ops::warning_delay(exp, exp + 3600), None);
    assert_eq!(ops::warning_delay(i64::MIN, 0), None);
}

/// Credentials sent again (as every `/resume` after a restore does) re-arm the
/// warning: one event, not one per copy.
#[tokio::test]
async fn credentials_sent_again_rearm_one_warning() {
    use aws_sdk_cloudwatchlogs::primitives::{DateTime, DateTimeFormat};
    let r = rig().await;
    let expires = crate::clock::unix_secs() + 20 * 60 + 1;
    let expiration = DateTime::from_secs(expires)
        .fmt(DateTimeFormat::DateTime)
        .unwrap();
    let creds: Credentials = serde_json::from_value(json!({
        "accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "s", "expiration": expiration
    }))
    .unwrap();
    r.lc.set_credentials(creds.clone());
    r.lc.set_credentials(creds);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let page = r.lc.ctx.events.since(0, Duration::ZERO).await;
    let warnings = page
        .events
        .iter()
        .filter(|e| e.kind == microvm_protocol::events::EventType::CredentialsExpiring)
        .count();
    assert_eq!(warnings, 1, "{:?}", page.events);
}

#[tokio::test]
async fn suspend_reports_where_its_time_went() {
    let r = running().await;
    r.machine.stall_sync(true);
    let a = r.lc.clone();
    let suspend = tokio::spawn(async move { a.request(Hook::Suspend, Input::Empty).await });
    while !r.machine.calls().contains(&Call::Sync { final_: false }) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    r.machine.stall_sync(false);
    let a = suspend.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let t = &a.body["timings"];
    let ms = |k: &str| t[k].as_f64().unwrap_or_else(|| panic!("{k} in {t}"));
    // The disk's share is the stalled sync, not the application's.
    assert!(ms("storageSyncMs") >= 150.0, "{t}");
    assert!(
        ms("applicationMs") > 0.0 && ms("applicationMs") < 150.0,
        "{t}"
    );
    assert!(ms("logsFlushMs") >= 0.0, "{t}");
    // Only /suspend reports them.
    let b = r.lc.request(Hook::Resume, Input::Empty).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert!(b.body.get("timings").is_none(), "{}", b.body);
}
