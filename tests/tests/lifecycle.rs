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
        // 3 s hook timeouts: the delayed hooks below hold a 1 s window open for the
        // test to look into, with 2 s to spare before the timeout on a loaded machine.
        &recorder_config(&dir, all_hooks(3), &[("RECORDER_NOT_READY", "2")]),
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
    g.app_behaviour(&["delay suspend 1000"]);
    let sock = g.sock.clone();
    let twin = std::thread::spawn(move || {
        http(&sock, "POST", &format!("{HOOK_PREFIX}suspend"), b"").unwrap()
    });
    // Once the first suspend is in flight (its app hook takes 1 s, the window in which
    // the 409 and the join below must land), not after a fixed sleep a loaded machine
    // may outlast.
    g.wait_status(Duration::from_secs(20), |s| s["state"] == "SUSPENDING");
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
    g.app_behaviour(&["delay resume 1000"]);
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
    // Polled until the steps show while the app's hook (delayed 1 s) has not
    // answered: a poll that lands between the request's start and its steps would
    // prove nothing either way.
    let during = g.wait_status(Duration::from_secs(20), |s| {
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

    // A hanging suspend: 504 at its own 3 s timeout (not the 5 s default), still
    // RUNNING. The answer names the timeout; the clock shows the agent waited for it,
    // and then answered (the upper bound is liveness, wide for a loaded machine).
    g.app_behaviour(&["hang suspend"]);
    let t0 = Instant::now();
    let r = g.hook("suspend", "");
    let took = t0.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["timeoutMs"], 3000, "{}", r.json());
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "{took:?}"
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
    g.wait_gone(Duration::from_secs(30));
    assert_eq!(
        hook_calls(&g).iter().filter(|h| *h == "terminate").count(),
        1
    );
}

#[test]
fn terminate_preempts_a_hanging_suspend() {
    require_root!();
    let dir = scratch("preempt");
    // The suspend hangs until its 10 s timeout: the SUSPENDING window the test waits for.
    let mut g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(10), &[]));
    g.wait_app_started();
    assert_eq!(g.hook("run", &run_body()).status, 200);
    g.app_behaviour(&["hang suspend"]);
    let sock = g.sock.clone();
    let suspend = std::thread::spawn(move || {
        http(&sock, "POST", &format!("{HOOK_PREFIX}suspend"), b"").map(|r| (r.status, r.json()))
    });
    g.wait_status(Duration::from_secs(8), |s| s["state"] == "SUSPENDING");
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    if let Ok((status, body)) = suspend.join().unwrap() {
        assert_eq!(status, 409, "{body}");
    }
    g.wait_gone(Duration::from_secs(30));
}

#[test]
fn an_application_ignoring_sigterm_is_killed_after_the_grace_period() {
    require_root!();
    let dir = scratch("stubborn");
    let mut cfg = recorder_config(&dir, json!({}), &[]);
    cfg["command"] = json!(["/bin/sh", "-c", "trap '' TERM; sleep 600 & wait"]);
    let mut g = Guest::start_in(dir, &cfg);
    g.wait_status(Duration::from_secs(20), |s| {
        s["application"]["running"] == true
    });
    let sock = g.sock.clone();
    let t0 = Instant::now();
    let terminate = std::thread::spawn(move || {
        http(&sock, "POST", &format!("{HOOK_PREFIX}terminate"), b"").unwrap()
    });
    // When the application stops running is the kill; the answer comes after a sync of
    // the host's disks as well, which a loaded machine may make slow. Status answers
    // until the power-off that follows the answer.
    let mut killed_after = None;
    while t0.elapsed() < Duration::from_secs(30) {
        match http(&g.sock, "GET", "/v1/status", b"") {
            Ok(r) if r.json()["application"]["running"] == false => {
                killed_after = Some(t0.elapsed());
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let r = terminate.join().unwrap();
    let killed_after = killed_after.unwrap_or_else(|| t0.elapsed());
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["applicationExit"],
        json!({"signal": libc::SIGKILL})
    );
    // The 5 s grace, then SIGKILL: not before it, and well before twice it.
    assert!(
        killed_after >= Duration::from_secs(5) && killed_after < Duration::from_secs(8),
        "grace then SIGKILL: {killed_after:?}"
    );
    g.wait_gone(Duration::from_secs(30));
}

#[test]
fn restart_policy_restarts_with_growing_backoff() {
    require_root!();
    let dir = scratch("restart");
    let mut cfg = recorder_config(&dir, json!({}), &[]);
    cfg["command"] = json!(["/bin/sh", "-c", "exit 7"]);
    cfg["onApplicationExit"] = json!("restart");
    let g = Guest::start_in(dir, &cfg);
    // Each exit sets `restarts` and the backoff before the next start together, so
    // every status read is a (restart number, backoff) pair that must follow the
    // doubling from 100 ms, however late the read lands. The first backoffs are short
    // windows a read on a loaded machine may miss: read until the 5th (1.6 s) and
    // check every pair seen on the way.
    let mut pairs = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    while !pairs.contains_key(&5) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no 5th restart in 30 s: {pairs:?}"
        );
        let asked = Instant::now();
        let s = g.status();
        if let Some(b) = s["application"]["restartBackoffMs"].as_u64() {
            let n = s["application"]["restarts"].as_u64().unwrap();
            pairs.entry(n).or_insert((b, asked, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (n, (b, ..)) in &pairs {
        assert_eq!(*b, 100 << (n - 1), "restart {n}: {pairs:?}");
    }
    assert!(pairs.len() >= 2, "too few restarts seen: {pairs:?}");
    // And the pauses are really taken: the first pair seen (n) was read before restart
    // n's pause ended, the 5th after the 5th exit, so at least the pauses of restarts
    // n+1..4 lie between asking for the one and the answer with the other.
    let (&first, &(_, asked, _)) = pairs.iter().next().unwrap();
    let paused: u64 = (first + 1..5).map(|k| 100 << (k - 1)).sum();
    let took = pairs[&5].2 - asked;
    assert!(
        took >= Duration::from_millis(paused),
        "restarts {first}..5 took {took:?}, less than their pauses ({paused} ms)"
    );
    let s = g.status();
    assert_eq!(s["state"], "PENDING", "the VM lives on: {s:#}");
    assert_eq!(s["application"]["lastExit"], json!({"code": 7}));
    assert_eq!(s["application"]["stateReason"], "Application.ExitCode.7");
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
    let s = g.wait_status(Duration::from_secs(20), |s| s["state"] == "TERMINATED");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(s["stateReason"], "MaximumDuration.Exceeded");
    // The app heard of it like any terminate.
    assert!(hook_calls(&g).contains(&"terminate".to_string()));
    let st = g.wait_gone(Duration::from_secs(30));
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
        assert!(t0.elapsed() < Duration::from_secs(30), "never ready");
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
    g.wait_gone(Duration::from_secs(30));
    let console = g.console();
    assert!(
        console.contains("run: mvm-life payload \"go\""),
        "{console}"
    );
    assert!(console.contains("terminate: goodbye"), "{console}");
}

// ---------------------------------------------------------------------------------
// A randomized walk through the lifecycle: random sequences of the six hooks, bursts
// of concurrent duplicates, clients that hang up before the answer, against the real
// agent with the recorder as its application. Each run prints its seed; replay one
// with `LIFECYCLE_SEED=<seed> cargo test -p microvm-tests --test lifecycle random`
// (`LIFECYCLE_STEPS=<n>` walks longer).
//
// What it proves, exactly:
// - the application never sees two calls for one transition: the recorder's calls,
//   in order, replayed through the state machine with the outcome each call was
//   told to produce (the recorder records the directives that applied to it), are
//   each allowed by the state the previous ones left, and no two overlap in time;
// - the agent's state after every step is the one those calls lead to, and its own
//   per-hook call counts and last outcomes agree with what the application saw;
// - every answer is one the state machine allows (its status, its `state`, and for a
//   409 the state and the operation in progress that refused it), and its state
//   equals or legally precedes what a status read right after it shows;
// - nothing wedges: every request answers and every step settles within a bound, and
//   a final /terminate (alone, or preempting a burst) powers the guest off.
// ---------------------------------------------------------------------------------

mod walk {
    use microvm_tests::*;
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, HashSet};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Every hook's timeout in the walk's image.
    pub const TIMEOUT_S: u64 = 2;
    /// A "slow" hook outlasts its timeout: the agent answers 504.
    // Far past the timeout: an agent starved near its deadline must still see it.
    const SLOW_MS: u64 = TIMEOUT_S * 1000 + 3000;
    /// The longest delay that must still succeed: 10x under the timeout.
    const MAX_DELAY_MS: u64 = 200;
    /// Nothing answers or settles later than this unless it is wedged.
    pub const WEDGE: Duration = Duration::from_secs(30);
    pub const HOOKS: [&str; 5] = ["ready", "validate", "run", "suspend", "resume"];

    /// xorshift64*: a seeded generator small enough to live here.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.below(hi - lo + 1)
        }
        pub fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len() as u64) as usize]
        }
    }

    /// The settled states (the agent's `Base`, `agent/src/control/state.rs`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Base {
        Pending,
        Running,
        Suspended,
        Terminated,
    }

    impl Base {
        pub fn name(self) -> &'static str {
            match self {
                Base::Pending => "PENDING",
                Base::Running => "RUNNING",
                Base::Suspended => "SUSPENDED",
                Base::Terminated => "TERMINATED",
            }
        }
        fn parse(s: &str) -> Option<Base> {
            [
                Base::Pending,
                Base::Running,
                Base::Suspended,
                Base::Terminated,
            ]
            .into_iter()
            .find(|b| b.name() == s)
        }
    }

    /// With nothing in flight, does `hook` start an operation (and call the app)?
    pub fn starts(base: Base, hook: &str) -> bool {
        matches!(
            (hook, base),
            ("ready" | "validate" | "run", Base::Pending)
                | ("suspend", Base::Running)
                | ("resume", Base::Suspended)
        ) || (hook == "terminate" && base != Base::Terminated)
    }

    /// With nothing in flight, does `hook` answer what it answered last time?
    fn replays(base: Base, hook: &str) -> bool {
        matches!(
            (hook, base),
            ("suspend", Base::Suspended) | ("terminate", Base::Terminated)
        )
    }

    /// The settled state once `hook` completed; a failure returns where it started.
    fn complete(base: Base, hook: &str, ok: bool) -> Base {
        match (hook, ok) {
            ("terminate", _) => Base::Terminated,
            ("run" | "resume", true) => Base::Running,
            ("suspend", true) => Base::Suspended,
            _ => base,
        }
    }

    /// The host-visible state graph: one edge per thing that can happen next.
    fn next_states(s: &str) -> &'static [&'static str] {
        match s {
            "PENDING" => &["RUNNING", "TERMINATING"],
            "RUNNING" => &["SUSPENDING", "TERMINATING"],
            "SUSPENDING" => &["SUSPENDED", "RUNNING", "TERMINATING"],
            "SUSPENDED" => &["RUNNING", "TERMINATING"],
            "TERMINATING" => &["TERMINATED"],
            _ => &[],
        }
    }

    /// `to` equals `from` or can follow it.
    pub fn precedes(from: &str, to: &str) -> bool {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            if seen[i] == to {
                return true;
            }
            for n in next_states(seen[i]) {
                if !seen.contains(n) {
                    seen.push(n);
                }
            }
            i += 1;
        }
        false
    }

    /// How the recorder answers a hook during one step.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Act {
        Ok,
        Fail,
        Delay(u64),
        Slow,
    }

    impl Act {
        pub fn random(rng: &mut Rng, slow_ok: bool) -> Act {
            match rng.below(100) {
                0..=44 => Act::Ok,
                45..=79 => Act::Delay(rng.range(20, MAX_DELAY_MS)),
                80..=96 => Act::Fail,
                _ if slow_ok => Act::Slow,
                _ => Act::Fail,
            }
        }
        fn line(self, hook: &str) -> Option<String> {
            match self {
                Act::Ok => None,
                Act::Fail => Some(format!("fail {hook}")),
                Act::Delay(ms) => Some(format!("delay {hook} {ms}")),
                Act::Slow => Some(format!("delay {hook} {SLOW_MS}")),
            }
        }
    }

    /// Set the recorder's behaviour at once (rename: a call reads all or nothing).
    pub fn behave(g: &Guest, acts: &BTreeMap<&'static str, Act>) {
        let text: Vec<String> = acts.iter().filter_map(|(h, a)| a.line(h)).collect();
        let tmp = g.dir.join("recorder.control.new");
        std::fs::write(&tmp, text.join("\n")).unwrap();
        std::fs::rename(&tmp, g.dir.join("recorder.control")).unwrap();
    }

    /// What a recorded call was told to do: its outcome, and how long it held the app
    /// before answering (a lower bound, for the overlap check).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Outcome {
        Ok,
        Failed,
        Timeout,
    }

    impl Outcome {
        pub fn result(self) -> &'static str {
            match self {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
                Outcome::Timeout => "timeout",
            }
        }
    }

    fn outcome(call: &Value) -> Result<(Outcome, u64), String> {
        let mut out = Outcome::Ok;
        let mut held = 0;
        for w in call["with"].as_array().into_iter().flatten() {
            let w = w.as_str().unwrap_or_default();
            match w.split_once(' ') {
                None if w == "fail" => out = Outcome::Failed,
                None if w == "hang" => return Ok((Outcome::Timeout, 0)),
                Some(("delay", n)) => match n.parse::<u64>() {
                    Ok(n) if n <= MAX_DELAY_MS => held += n,
                    Ok(n) if n > TIMEOUT_S * 1000 => return Ok((Outcome::Timeout, 0)),
                    _ => return Err(format!("a delay with no certain outcome: {call}")),
                },
                _ => return Err(format!("unknown directive in {call}")),
            }
        }
        Ok((out, held))
    }

    /// The application's calls replayed through the state machine.
    #[derive(Debug, Default)]
    pub struct Replay {
        pub base: Option<Base>,
        /// Per hook: calls, and the outcome of the last one.
        pub calls: BTreeMap<String, (u64, Outcome)>,
        /// The microvmId of the run that succeeded.
        pub run_id: Option<String>,
        /// The outcome of the app's /terminate, if it was called.
        pub terminate: Option<Outcome>,
    }

    /// Replay the recorder's calls (in the order it received them). Every call must be
    /// one the state left by the earlier ones allows: a second call for a transition
    /// already made (a second /run, a /suspend once suspended, ...) fails here. Apart
    /// from /terminate, which preempts, the agent has one operation in flight at a
    /// time, so a call never begins before the previous one was answered.
    pub fn replay(calls: &[Value]) -> Result<Replay, String> {
        let mut base = Base::Pending;
        let mut r = Replay::default();
        let mut previous: Option<(u64, u64, &str)> = None;
        let mut terminated_from: Option<Base> = None;
        let mut stragglers = 0;
        let history = |upto: usize| -> String {
            calls[..=upto]
                .iter()
                .map(|c| format!("\n  {c}"))
                .collect::<String>()
        };
        for (i, call) in calls.iter().enumerate() {
            let hook = call["hook"].as_str().unwrap_or_default();
            let t = call["t"].as_u64().unwrap_or_default();
            let (out, held) = outcome(call)?;
            let e = r.calls.entry(hook.to_string()).or_insert((0, out));
            *e = (e.0 + 1, out);
            if hook == "terminate" {
                if terminated_from.is_some() {
                    return Err(format!(
                        "the application got /terminate twice:{}",
                        history(i)
                    ));
                }
                terminated_from = Some(base);
                r.terminate = Some(out);
                base = Base::Terminated;
                continue;
            }
            if let Some(from) = terminated_from {
                // One operation decided before /terminate preempted it may still
                // reach the application after the /terminate call did.
                stragglers += 1;
                if stragglers > 1 || !starts(from, hook) {
                    return Err(format!(
                        "the application got /{hook} after /terminate (state before it \
                         {from:?}):{}",
                        history(i)
                    ));
                }
                continue;
            }
            if !starts(base, hook) {
                return Err(format!(
                    "the application got /{hook} in {base:?}, which starts no /{hook}: a \
                     second call for one transition, or one the state forbids:{}",
                    history(i)
                ));
            }
            if let Some((pt, pheld, ph)) = previous {
                if t + 1 < pt + pheld {
                    return Err(format!(
                        "/{hook} reached the application {} ms after /{ph}, which took at \
                         least {pheld} ms to answer: two operations at once:{}",
                        t.saturating_sub(pt),
                        history(i)
                    ));
                }
            }
            previous = Some((t, held, hook));
            let ok = out == Outcome::Ok;
            if hook == "run" && ok {
                r.run_id = call["microvmId"].as_str().map(str::to_string);
            }
            base = complete(base, hook, ok);
        }
        r.base = Some(base);
        Ok(r)
    }

    /// One request of a step.
    #[derive(Debug, Clone)]
    pub struct Client {
        pub hook: &'static str,
        pub body: String,
        /// Start this long after the step begins.
        pub after_ms: u64,
        /// Hang up this long after writing the request, without reading the answer.
        pub hang_up: Option<u64>,
    }

    impl Client {
        pub fn describe(&self) -> String {
            match self.hang_up {
                Some(l) => format!("{}+{}ms(hang-up {l}ms)", self.hook, self.after_ms),
                None => format!("{}+{}ms", self.hook, self.after_ms),
            }
        }
    }

    /// What a client that waited saw: the answer, then a status read right after it.
    #[derive(Debug)]
    pub struct Seen {
        pub hook: &'static str,
        pub answer: std::io::Result<(u16, Value)>,
        pub after: Option<std::io::Result<Value>>,
    }

    pub fn ask(sock: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<Reply> {
        microvm_local::http::send_within(WEDGE, UnixStream::connect(sock)?, method, path, &[], body)
    }

    pub fn status(sock: &Path) -> std::io::Result<Value> {
        let r = ask(sock, "GET", microvm_protocol::paths::STATUS, b"")?;
        Ok(r.json())
    }

    fn hang_up(sock: &Path, hook: &str, body: &str, linger_ms: u64) {
        let Ok(mut s) = UnixStream::connect(sock) else {
            return;
        };
        let req = format!(
            "POST {HOOK_PREFIX}{hook} HTTP/1.1\r\nHost: agent\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(req.as_bytes());
        std::thread::sleep(Duration::from_millis(linger_ms));
        drop(s);
    }

    /// Run the clients of one step at once; the answers of those that waited.
    pub fn fire(sock: &Path, clients: &[Client]) -> Vec<Seen> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients.len()));
        let handles: Vec<_> = clients
            .iter()
            .cloned()
            .map(|c| {
                let sock = sock.to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    std::thread::sleep(Duration::from_millis(c.after_ms));
                    if let Some(linger) = c.hang_up {
                        hang_up(&sock, c.hook, &c.body, linger);
                        return None;
                    }
                    let path = format!("{HOOK_PREFIX}{}", c.hook);
                    let answer =
                        ask(&sock, "POST", &path, c.body.as_bytes()).map(|r| (r.status, r.json()));
                    let after = answer.is_ok().then(|| status(&sock));
                    Some(Seen {
                        hook: c.hook,
                        answer,
                        after,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("client thread"))
            .collect()
    }

    /// An answer the state machine allows, consistent with the status read after it.
    pub fn check_answer(
        hook: &str,
        status: u16,
        body: &Value,
        after: Option<&Value>,
    ) -> Result<(), String> {
        let why = |m: &str| Err(format!("/{hook} answered {status} {body}: {m}"));
        if status == 500 && hook == "suspend" && body["error"] == "QuiesceFailed" {
            // sync(2) on the host ran past its bound; the app was told to resume.
            return Ok(());
        }
        let Some(state) = body["state"].as_str() else {
            return why("no state");
        };
        let failed_state = match hook {
            "suspend" => "RUNNING",
            "resume" => "SUSPENDED",
            _ => "PENDING",
        };
        match status {
            200 => {
                let want = match hook {
                    "ready" | "validate" => "PENDING",
                    "run" | "resume" => "RUNNING",
                    "suspend" => "SUSPENDED",
                    _ => "TERMINATED",
                };
                if state != want {
                    return why(&format!("a success must leave {want}"));
                }
                if hook != "terminate" && body["result"] != "ok" {
                    return why("200 without result ok");
                }
                if hook == "run" && !body["microvmId"].is_string() {
                    return why("a run without its microvmId");
                }
            }
            502 | 504 => {
                let want = if status == 502 { "failed" } else { "timeout" };
                if hook == "terminate" || body["result"] != want {
                    return why(&format!("expected result {want}"));
                }
                if state != failed_state {
                    return why(&format!("a failure must return to {failed_state}"));
                }
            }
            409 => {
                if hook == "terminate" {
                    return why("/terminate is never refused");
                }
                if body["error"] != "InvalidState" {
                    return why("409 that is not InvalidState");
                }
                let message = body["message"].as_str().unwrap_or_default();
                let busy = ["Ready", "Validate", "Run", "Suspend", "Resume", "Terminate"]
                    .into_iter()
                    .find(|op| message.contains(&format!("({op} in progress)")));
                match busy.map(str::to_lowercase) {
                    Some(op) => {
                        if op == hook && hook != "run" {
                            return why("a duplicate of the operation in flight must join it");
                        }
                        let phase_ok = match op.as_str() {
                            "suspend" => state == "SUSPENDING",
                            "resume" => state == "SUSPENDED",
                            "terminate" => state == "TERMINATING" || state == "TERMINATED",
                            _ => state == "PENDING",
                        };
                        if !phase_ok {
                            return why("state does not match the operation in progress");
                        }
                    }
                    None => match Base::parse(state) {
                        Some(b) if !starts(b, hook) && !replays(b, hook) => {}
                        _ => return why("refused in a state that allows it"),
                    },
                }
            }
            _ => return why("unexpected status"),
        }
        if let Some(after) = after {
            let next = after["state"].as_str().unwrap_or_default();
            if !precedes(state, next) {
                return why(&format!("but status right after says {next}"));
            }
        }
        Ok(())
    }

    /// The recorder's hook calls so far.
    pub fn app_calls(g: &Guest) -> Vec<Value> {
        g.recorded()
            .into_iter()
            .filter(|v| v.get("hook").is_some())
            .collect()
    }

    /// Wait until nothing is in flight and the application's calls stand still around
    /// a status read; that status then reflects exactly those calls.
    pub fn settle(g: &Guest) -> Result<(Value, Vec<Value>), String> {
        let t0 = Instant::now();
        loop {
            let before = app_calls(g);
            let s = status(&g.sock).map_err(|e| format!("status: {e}"))?;
            let after = app_calls(g);
            if s["inFlight"].is_null() && before == after {
                return Ok((s, after));
            }
            if t0.elapsed() > WEDGE {
                return Err(format!(
                    "wedged: {} still in flight after {WEDGE:?}",
                    s["inFlight"]
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's settled state and hook records agree with the replayed calls, and
    /// no hook reached the application more often than the host asked for it.
    pub fn verify(s: &Value, calls: &[Value], asked: &BTreeMap<&str, u64>) -> Result<Base, String> {
        let r = replay(calls)?;
        for (h, (n, _)) in &r.calls {
            let asked = asked.get(h.as_str()).copied().unwrap_or(0);
            if *n > asked {
                return Err(format!(
                    "the application got {n} /{h} calls, the host asked {asked} times"
                ));
            }
        }
        let want = r.base.unwrap_or(Base::Pending);
        if s["state"] != want.name() {
            return Err(format!(
                "the agent says {} but the application's calls lead to {}: {:#}",
                s["state"],
                want.name(),
                Value::Array(calls.to_vec())
            ));
        }
        for h in HOOKS {
            let (n, last) = r.calls.get(h).copied().unwrap_or((0, Outcome::Ok));
            let rec = &s["hooks"][h];
            if rec["calls"].as_u64().unwrap_or(0) != n {
                return Err(format!(
                    "the agent counts {} /{h} calls, the application saw {n}",
                    rec["calls"]
                ));
            }
            if n > 0 && rec["last"]["result"] != last.result() {
                return Err(format!(
                    "the agent's last /{h} was {}, the application was told {:?}",
                    rec["last"], last
                ));
            }
        }
        Ok(want)
    }

    /// A hook worth asking for now: often one the state allows, else any.
    pub fn pick_hook(rng: &mut Rng, base: Base) -> &'static str {
        if rng.chance(60) {
            match base {
                Base::Pending => rng.pick(&["ready", "validate", "run"]),
                Base::Running => "suspend",
                _ => rng.pick(&["resume", "resume", "suspend"]),
            }
        } else {
            rng.pick(&HOOKS)
        }
    }

    pub fn body(rng: &mut Rng, hook: &str, n: usize, episode: usize) -> String {
        match hook {
            "run" => json!({"microvmId": format!("mvm-walk-{episode}-{n}"),
                            "runHookPayload": format!("p{n}")})
            .to_string(),
            "resume" if rng.chance(30) => json!({
                "clock": {"unixTimeNanos": now_nanos()},
                "entropy": entropy_b64(),
            })
            .to_string(),
            _ if rng.chance(50) => "{}".into(),
            _ => String::new(),
        }
    }

    /// Every distinct answer to an operation came from one call of the application.
    pub fn distinct_answers(answers: &[(&str, Value)], r: &Replay) -> Result<(), String> {
        for h in HOOKS.iter().chain(&["terminate"]) {
            let distinct: HashSet<String> = answers
                .iter()
                .filter(|(hook, _)| hook == h)
                .map(|(_, b)| b.to_string())
                .collect();
            let calls = r.calls.get(*h).map_or(0, |c| c.0) as usize;
            if distinct.len() > calls {
                return Err(format!(
                    "{} distinct /{h} answers from {calls} application calls: {distinct:?}",
                    distinct.len()
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn random_walks_never_double_call_and_never_wedge() {
    require_root!();
    use std::collections::BTreeMap;
    use walk::*;
    let seed = std::env::var("LIFECYCLE_SEED")
        .ok()
        .map(|s| s.trim().parse::<u64>().expect("LIFECYCLE_SEED: a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let steps: usize = std::env::var("LIFECYCLE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("LIFECYCLE_SEED={seed} LIFECYCLE_STEPS={steps}");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut n = 0;
    for episode in 0..3 {
        let dir = scratch("walk");
        let mut g = Guest::start_in(
            dir.clone(),
            &recorder_config(&dir, all_hooks(TIMEOUT_S), &[]),
        );
        g.wait_app_started();
        let fail = |g: &Guest, step: &str, e: String| -> ! {
            let console = g.console();
            let tail: Vec<&str> = console.lines().rev().take(40).collect();
            panic!(
                "episode {episode} {step}: {e}\nreplay with LIFECYCLE_SEED={seed} \
                 LIFECYCLE_STEPS={steps}\nconsole (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        };
        let mut base = Base::Pending;
        let mut answers: Vec<(&str, Value)> = Vec::new();
        let mut asked: BTreeMap<&str, u64> = BTreeMap::new();
        for step in 0..steps {
            let mut acts: BTreeMap<&'static str, Act> = HOOKS
                .iter()
                .map(|h| (*h, Act::random(&mut rng, true)))
                .collect();
            let mut clients = Vec::new();
            let mut client = |rng: &mut Rng, hook, after_ms, hang: bool| {
                n += 1;
                let body = body(rng, hook, n, episode);
                let hang_up = hang.then(|| if rng.chance(50) { 0 } else { rng.range(1, 250) });
                Client {
                    hook,
                    body,
                    after_ms,
                    hang_up,
                }
            };
            let kind = match rng.below(100) {
                0..=34 => {
                    let hook = pick_hook(&mut rng, base);
                    clients.push(client(&mut rng, hook, 0, false));
                    "one"
                }
                35..=64 => {
                    let hook = pick_hook(&mut rng, base);
                    if rng.chance(70) {
                        acts.insert(hook, Act::Delay(rng.range(50, 200)));
                    }
                    for _ in 0..rng.range(2, 6) {
                        let after = if rng.chance(50) { 0 } else { rng.range(1, 250) };
                        let hang = rng.chance(25);
                        clients.push(client(&mut rng, hook, after, hang));
                    }
                    "duplicates"
                }
                65..=84 => {
                    for _ in 0..rng.range(2, 5) {
                        let hook = pick_hook(&mut rng, base);
                        let after = rng.range(0, 150);
                        let hang = rng.chance(25);
                        clients.push(client(&mut rng, hook, after, hang));
                    }
                    "mixed"
                }
                _ => {
                    for _ in 0..rng.range(1, 3) {
                        let hook = pick_hook(&mut rng, base);
                        let after = rng.range(0, 100);
                        clients.push(client(&mut rng, hook, after, true));
                    }
                    "hang-ups"
                }
            };
            for c in &clients {
                *asked.entry(c.hook).or_default() += 1;
            }
            behave(&g, &acts);
            let seen = fire(&g.sock, &clients);
            let label = format!("step {step}");
            let mut got = Vec::new();
            for s in &seen {
                match &s.answer {
                    Ok((status, body)) => {
                        let after = match &s.after {
                            Some(Ok(v)) => Some(v),
                            Some(Err(e)) => fail(&g, &label, format!("status after: {e}")),
                            None => None,
                        };
                        if let Err(e) = check_answer(s.hook, *status, body, after) {
                            fail(&g, &label, e);
                        }
                        if *status != 409 {
                            answers.push((s.hook, body.clone()));
                        }
                        got.push(format!("{}:{status}", s.hook));
                    }
                    Err(e) => fail(&g, &label, format!("/{} never answered: {e}", s.hook)),
                }
            }
            let (s, calls) = settle(&g).unwrap_or_else(|e| fail(&g, &label, e));
            base = verify(&s, &calls, &asked).unwrap_or_else(|e| fail(&g, &label, e));
            let plan: Vec<String> = clients.iter().map(Client::describe).collect();
            eprintln!(
                "episode {episode} {label} {kind}: {plan:?} app {acts:?} -> {got:?}, {} \
                 ({} app calls)",
                base.name(),
                calls.len()
            );
        }

        // After the sequence the agent still answers at once.
        let t0 = Instant::now();
        if let Err(e) = status(&g.sock) {
            fail(&g, "end", format!("status after the walk: {e}"));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "status took {:?}",
            t0.elapsed()
        );

        // The end: /terminate alone, or preempting a burst, with duplicates and
        // hang-ups of its own.
        let mut acts: BTreeMap<&'static str, Act> = HOOKS
            .iter()
            .map(|h| (*h, Act::random(&mut rng, false)))
            .collect();
        acts.insert("terminate", Act::random(&mut rng, false));
        let mut clients = vec![Client {
            hook: "terminate",
            body: String::new(),
            after_ms: 0,
            hang_up: None,
        }];
        let burst = rng.chance(60);
        if burst {
            let at = rng.range(0, 150);
            clients[0].after_ms = at;
            for _ in 0..rng.range(1, 4) {
                let hook = pick_hook(&mut rng, base);
                if rng.chance(60) {
                    acts.insert(hook, Act::Delay(rng.range(100, 200)));
                }
                n += 1;
                let body = body(&mut rng, hook, n, episode);
                let hang_up = rng.chance(30).then_some(0);
                clients.push(Client {
                    hook,
                    body,
                    after_ms: rng.range(0, 100),
                    hang_up,
                });
            }
            for _ in 0..rng.range(0, 2) {
                let hang_up = rng.chance(50).then(|| rng.range(0, 50));
                let after_ms = at + rng.range(0, 100);
                clients.push(Client {
                    hook: "terminate",
                    body: "{}".into(),
                    after_ms,
                    hang_up,
                });
            }
        }
        behave(&g, &acts);
        let seen = fire(&g.sock, &clients);
        let mut terminated: Option<Value> = None;
        let mut got = Vec::new();
        for s in &seen {
            // Once the guest is gone a client may find nobody to answer it.
            let (status, body) = match &s.answer {
                Ok(a) => a,
                Err(e) => {
                    got.push(format!("{}:gone ({e})", s.hook));
                    continue;
                }
            };
            got.push(format!("{}:{status}", s.hook));
            let after = s.after.as_ref().and_then(|a| a.as_ref().ok());
            if let Err(e) = check_answer(s.hook, *status, body, after) {
                fail(&g, "end", e);
            }
            if *status != 409 {
                answers.push((s.hook, body.clone()));
            }
            if s.hook == "terminate" {
                if body["stateReason"] != "Host.Terminate" {
                    fail(&g, "end", format!("terminate answered {body}"));
                }
                match &terminated {
                    Some(first) if first != body => fail(
                        &g,
                        "end",
                        format!("two terminate answers: {first} and {body}"),
                    ),
                    _ => terminated = Some(body.clone()),
                }
            }
        }
        let Some(terminated) = terminated else {
            fail(&g, "end", "no /terminate was answered".into())
        };
        let plan: Vec<String> = clients.iter().map(Client::describe).collect();
        eprintln!(
            "episode {episode} end: {plan:?} app {acts:?} -> {got:?}; {:.1} s so far",
            started.elapsed().as_secs_f64()
        );
        let st = g.wait_gone(WEDGE);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            st.signal(),
            Some(libc::SIGINT),
            "power-off through reboot(2)"
        );

        let calls = app_calls(&g);
        let r = replay(&calls).unwrap_or_else(|e| fail(&g, "end", e));
        match r.terminate {
            Some(out) if terminated["hook"]["result"] == out.result() => {}
            other => fail(
                &g,
                "end",
                format!("the app's /terminate: {other:?}; the answer: {terminated}"),
            ),
        }
        if let Err(e) = distinct_answers(&answers, &r) {
            fail(&g, "end", e);
        }
        for (hook, body) in &answers {
            if *hook == "run"
                && body["result"] == "ok"
                && body["microvmId"].as_str() != r.run_id.as_deref()
            {
                fail(
                    &g,
                    "end",
                    format!(
                        "run answered {body}, the app's successful run was {:?}",
                        r.run_id
                    ),
                );
            }
        }
    }
    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
}
