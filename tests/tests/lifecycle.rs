//! The whole lifecycle, walked against the real agent as PID 1 in namespaces.

use microvm_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn run_body() -> String {
    json!({"microvmId": "mvm-life", "runHookPayload": "go"}).to_string()
}

fn hook_calls(g: &Guest) -> Vec<String> {
    g.recorded()
        .iter()
        .filter_map(|v| v["hook"].as_str().map(str::to_string))
        .collect()
}

fn assert_409(g: &Guest, hook: &str, body: &str, state: &str) {
    let r = g.hook(hook, body);
    assert_eq!(r.status, 409, "{hook} in {state}: {}", r.json());
    assert_eq!(r.json()["state"], state, "{hook}");
    assert!(r.json()["message"].as_str().unwrap().contains(state));
}

#[test]
fn the_whole_machine() {
    require_root!();
    let dir = scratch("walk");
    let g = Guest::start_in(
        dir.clone(),
        &recorder_config(&dir, all_hooks(1), &[("RECORDER_NOT_READY", "2")]),
    );
    g.wait_app_started();

    // Image build: the app's 503 passes through until it is ready.
    assert_eq!(g.hook("ready", "").status, 503);
    assert_eq!(g.hook("ready", "").status, 503);
    assert_eq!(g.hook("ready", "").status, 200);
    assert_eq!(g.hook("validate", "").status, 200);
    for h in ["suspend", "resume"] {
        assert_409(&g, h, "", "PENDING");
    }

    assert_eq!(g.hook("run", &run_body()).status, 200);
    assert_eq!(g.status()["state"], "RUNNING");
    for (h, b) in [
        ("run", run_body()),
        ("ready", String::new()),
        ("validate", String::new()),
        ("resume", String::new()),
    ] {
        assert_409(&g, h, &b, "RUNNING");
    }

    // Two suspends at once and one after: the app's hook runs once.
    g.app_behaviour(&["delay suspend 300"]);
    let sock = g.sock.clone();
    let twin = std::thread::spawn(move || {
        http(&sock, "POST", &format!("{HOOK_PREFIX}suspend"), b"").unwrap()
    });
    // Once the first suspend is in flight (its app hook takes 300 ms), not after a
    // fixed sleep a loaded machine may outlast.
    g.wait_status(Duration::from_secs(5), |s| s["state"] == "SUSPENDING");
    assert_409(&g, "resume", "", "SUSPENDING");
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 200);
    assert_eq!(twin.join().unwrap().status, 200);
    assert_eq!(r.json()["state"], "SUSPENDED");
    let retry = g.hook("suspend", "");
    assert_eq!(retry.status, 200);
    assert_eq!(retry.json(), r.json(), "a retry gets the same answer");
    assert_eq!(hook_calls(&g).iter().filter(|h| *h == "suspend").count(), 1);
    assert_eq!(g.status()["machine"]["storageSyncs"], 1, "quiesced once");

    for (h, b) in [
        ("run", run_body()),
        ("ready", String::new()),
        ("validate", String::new()),
    ] {
        assert_409(&g, h, &b, "SUSPENDED");
    }

    // Resume steps the clock and reseeds before the app hears of it.
    g.app_behaviour(&["delay resume 400"]);
    let entropy = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"; // 36 bytes
    let body = json!({"clock": {"unixTimeNanos": 1_795_000_000_000_000_000u64},
                      "entropy": entropy})
    .to_string();
    let sock = g.sock.clone();
    let resume = std::thread::spawn(move || {
        http(
            &sock,
            "POST",
            &format!("{HOOK_PREFIX}resume"),
            body.as_bytes(),
        )
        .unwrap()
    });
    // Polled until the steps show while the app's hook (delayed 400 ms) has not
    // answered: a poll that lands between the request's start and its steps would
    // prove nothing either way.
    let during = g.wait_status(Duration::from_secs(5), |s| {
        s["hooks"]["resume"].is_null()
            && s["inFlight"] == "resume"
            && s["machine"]["clockSteps"] == 1
    });
    // The app's hook has not answered yet, and the steps are already done.
    assert_eq!(during["machine"]["clockSteps"], 1);
    assert_eq!(
        during["machine"]["lastClockUnixNanos"],
        1_795_000_000_000_000_000u64
    );
    assert_eq!(during["machine"]["entropyReseeds"], 1);
    assert_eq!(during["machine"]["lastEntropyBytes"], 36);
    assert_eq!(
        during["machine"]["applied"], false,
        "never the real clock in tests"
    );
    assert_eq!(resume.join().unwrap().status, 200);
    assert_eq!(g.status()["state"], "RUNNING");

    // A failing suspend: 502 with the app's status, still RUNNING.
    g.app_behaviour(&["fail suspend"]);
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["applicationStatus"], 500);
    assert_eq!(r.json()["state"], "RUNNING");

    // A hanging suspend: 504 within its 1 s timeout, still RUNNING.
    g.app_behaviour(&["hang suspend"]);
    let t0 = Instant::now();
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 504);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(g.status()["state"], "RUNNING");

    // Terminate, and a retry that gets the same answer without a second hook call.
    g.app_behaviour(&[]);
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "TERMINATED");
    assert_eq!(
        hook_calls(&g).iter().filter(|h| *h == "terminate").count(),
        1
    );
    // The retry races power-off: an answer must be the same 200, or the guest is gone.
    if let Ok(retry) = http(&g.sock, "POST", &format!("{HOOK_PREFIX}terminate"), b"") {
        assert_eq!(retry.status, 200);
        assert_eq!(retry.json(), r.json());
    }
    assert_eq!(
        hook_calls(&g),
        [
            "ready",
            "ready",
            "ready",
            "validate",
            "run",
            "suspend",
            "resume",
            "suspend",
            "suspend",
            "terminate"
        ]
    );
}

#[test]
fn concurrent_terminates_share_one_hook_call() {
    require_root!();
    let dir = scratch("terminate-twice");
    let mut g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(2), &[]));
    g.wait_app_started();
    assert_eq!(g.hook("run", &run_body()).status, 200);
    g.app_behaviour(&["delay terminate 300"]);
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let sock = g.sock.clone();
            std::thread::spawn(move || {
                http(&sock, "POST", &format!("{HOOK_PREFIX}terminate"), b"")
                    .map(|r| (r.status, r.json()))
            })
        })
        .collect();
    let answers: Vec<_> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().ok())
        .collect();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == &answers[0].1),
        "{answers:?}"
    );
    g.wait_gone(Duration::from_secs(10));
    assert_eq!(
        hook_calls(&g).iter().filter(|h| *h == "terminate").count(),
        1
    );
}

#[test]
fn terminate_preempts_a_hanging_suspend() {
    require_root!();
    let dir = scratch("preempt");
    let mut g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(5), &[]));
    g.wait_app_started();
    assert_eq!(g.hook("run", &run_body()).status, 200);
    g.app_behaviour(&["hang suspend"]);
    let sock = g.sock.clone();
    let suspend = std::thread::spawn(move || {
        http(&sock, "POST", &format!("{HOOK_PREFIX}suspend"), b"").map(|r| (r.status, r.json()))
    });
    g.wait_status(Duration::from_secs(2), |s| s["state"] == "SUSPENDING");
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    if let Ok((status, body)) = suspend.join().unwrap() {
        assert_eq!(status, 409, "{body}");
    }
    g.wait_gone(Duration::from_secs(10));
}

#[test]
fn an_application_ignoring_sigterm_is_killed_after_the_grace_period() {
    require_root!();
    let dir = scratch("stubborn");
    let mut cfg = recorder_config(&dir, json!({}), &[]);
    cfg["command"] = json!(["/bin/sh", "-c", "trap '' TERM; sleep 600 & wait"]);
    let mut g = Guest::start_in(dir, &cfg);
    g.wait_status(Duration::from_secs(2), |s| {
        s["application"]["running"] == true
    });
    let t0 = Instant::now();
    let r = g.hook("terminate", "");
    let took = t0.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["applicationExit"],
        json!({"signal": libc::SIGKILL})
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "grace then SIGKILL: {took:?}"
    );
    g.wait_gone(Duration::from_secs(10));
}

#[test]
fn restart_policy_restarts_with_growing_backoff() {
    require_root!();
    let dir = scratch("restart");
    let mut cfg = recorder_config(&dir, json!({}), &[]);
    cfg["command"] = json!(["/bin/sh", "-c", "exit 7"]);
    cfg["onApplicationExit"] = json!("restart");
    let g = Guest::start_in(dir, &cfg);
    let mut backoffs = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let s = g.status();
        if let Some(b) = s["application"]["restartBackoffMs"].as_u64() {
            if backoffs.last() != Some(&b) {
                backoffs.push(b);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = g.status();
    assert_eq!(s["state"], "PENDING", "the VM lives on: {s:#}");
    assert_eq!(s["application"]["lastExit"], json!({"code": 7}));
    assert_eq!(s["application"]["stateReason"], "Application.ExitCode.7");
    // 100, 200, 400, 800 ms fit in 3 s (plus start-up of the shell each time).
    assert!(backoffs.len() >= 4, "{backoffs:?}");
    assert_eq!(&backoffs[..4], &[100, 200, 400, 800], "{backoffs:?}");
    let restarts = s["application"]["restarts"].as_u64().unwrap();
    assert!((4..=6).contains(&restarts), "{restarts}");
    assert!(s["stateReason"].is_null(), "not terminating");
}

#[test]
fn maximum_duration_ends_the_vm_with_a_reason() {
    require_root!();
    let dir = scratch("maxdur");
    let mut g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(2), &[]));
    g.wait_app_started();
    let body = json!({"microvmId": "m", "maximumDurationInSeconds": 1}).to_string();
    let t0 = Instant::now();
    assert_eq!(g.hook("run", &body).status, 200);
    let s = g.wait_status(Duration::from_secs(5), |s| s["state"] == "TERMINATED");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(s["stateReason"], "MaximumDuration.Exceeded");
    // The app heard of it like any terminate.
    assert!(hook_calls(&g).contains(&"terminate".to_string()));
    let st = g.wait_gone(Duration::from_secs(15));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGINT));
}

#[test]
fn run_applies_freshness_and_credentials_before_the_app_hook() {
    require_root!();
    let dir = scratch("fresh");
    let g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(2), &[]));
    g.wait_app_started();
    let body = json!({
        "microvmId": "m",
        "region": "eu-west-1",
        "credentials": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "SECRET",
                        "sessionToken": "TOKEN", "expiration": "2026-11-21T12:00:00Z"},
        "clock": {"unixTimeNanos": 1_800_000_000_000_000_123u64},
        "entropy": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    })
    .to_string();
    let r = g.hook("run", &body);
    assert_eq!(r.status, 200);
    let s = g.status();
    assert_eq!(s["machine"]["clockSteps"], 1);
    assert_eq!(
        s["machine"]["lastClockUnixNanos"],
        1_800_000_000_000_000_123u64
    );
    assert_eq!(s["machine"]["lastEntropyBytes"], 32);
    assert_eq!(s["credentials"]["accessKeyId"], "AKIDEXAMPLE");
    assert_eq!(s["run"]["region"], "eu-west-1");
    let text = s.to_string();
    assert!(
        !text.contains("SECRET") && !text.contains("TOKEN"),
        "secrets stay out"
    );
    // Short entropy is refused before anything happens.
    let dir2 = scratch("fresh-bad");
    let g2 = Guest::start_in(dir2.clone(), &recorder_config(&dir2, all_hooks(2), &[]));
    let r = g2.hook(
        "run",
        &json!({"microvmId": "m", "entropy": "AAAA"}).to_string(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "entropy");
    assert_eq!(g2.status()["machine"]["entropyReseeds"], 0);
    let _: Value = g2.status();
}

#[test]
fn sdk_example_with_mounted_hooks_walks_the_lifecycle() {
    require_root!();
    let dir = scratch("http-app");
    let mut hooks = all_hooks(2);
    hooks["port"] = json!(8080);
    let cfg = json!({
        "imageName": "http-app",
        "command": [bins().http_app.display().to_string()],
        "hooks": hooks,
        "logs": {"mirrorToConsole": true},
    });
    let mut g = Guest::start_in(dir, &cfg);
    // Warm-up: 503 until the app says ready, then 200; validate passes after.
    let t0 = Instant::now();
    let mut saw_503 = false;
    loop {
        let r = g.hook("ready", "");
        match r.status {
            503 => saw_503 = true,
            200 => break,
            // Not listening yet shows as 502 after the hook timeout; keep polling.
            502 => {}
            s => panic!("ready answered {s}: {}", r.json()),
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_503, "the warm-up was visible to the host");
    assert_eq!(g.hook("validate", "").status, 200);
    assert_eq!(g.hook("run", &run_body()).status, 200);
    assert_eq!(g.hook("suspend", "").status, 200);
    assert_eq!(g.hook("resume", "").status, 200);
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["hook"]["result"], "ok");
    g.wait_gone(Duration::from_secs(10));
    let console = g.console();
    assert!(
        console.contains("run: mvm-life payload \"go\""),
        "{console}"
    );
    assert!(console.contains("terminate: goodbye"), "{console}");
}
