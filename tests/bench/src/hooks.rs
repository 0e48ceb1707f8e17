//! The agent's size, start-up and idle memory, and hook latency through the agent
//! against the same hook straight to the application. Every hook row is warmed up
//! both ways first, and the two ways take turns going first (even iterations direct
//! first, odd ones through the agent first), so neither warms the application for
//! the other.

use crate::agent::Agent;
use crate::report::{lat_table, ms, pct, thousands, thr_table, Lat, Thr};
use crate::Opts;
use microvm_protocol::paths;
use microvm_tests::http;
use serde_json::json;
use std::time::{Duration, Instant};

/// Untimed calls of each way before a row is timed.
const WARM_UP: usize = 20;
/// Targets: every hook through the agent at most this much of direct.
const HOOK_P50: f64 = 2.2;
const HOOK_P99: f64 = 2.5;
/// Targets: binary and idle memory.
const MAX_BINARY: u64 = 6_000_000;
const MAX_IDLE_KIB: u64 = 4 * 1024;

/// Time `direct` and `via` once each, in the order iteration `i` calls for.
fn pair(i: usize, mut direct: impl FnMut(), mut via: impl FnMut()) {
    if i.is_multiple_of(2) {
        direct();
        via();
    } else {
        via();
        direct();
    }
}

/// `/suspend` through the agent: its round trip, and the storage sync it reported
/// (`timings.storageSyncMs`; None from an agent that does not report timings).
fn suspend(a: &Agent) -> (Duration, Option<Duration>) {
    let (r, d) = a.hook_reply("suspend", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let sync = r.json()["timings"]["storageSyncMs"]
        .as_f64()
        .map(|v| Duration::from_secs_f64(v.max(0.0) / 1000.0));
    (d, sync)
}

pub fn bench(o: &Opts) -> String {
    let run = json!({"microvmId": "mvm-bench", "runHookPayload": "x".repeat(1024)}).to_string();
    let ok = |(s, d): (u16, Duration)| {
        assert_eq!(s, 200);
        d
    };

    // 1. Start to control-ready, and /run once per boot (/run happens once per VM).
    let mut ready = Vec::new();
    let mut runs = Vec::new();
    let mut runs_direct = Vec::new();
    let mut idle_kib = 0;
    for n in 0..o.boots {
        let (a, t) = Agent::start(o, n);
        ready.push(t);
        a.wait_app();
        // /run goes through the agent once per VM: warm the path with /ready through
        // the agent, and the application's /run directly.
        for _ in 0..WARM_UP {
            ok(a.direct("run", &run));
            ok(a.hook("ready", ""));
        }
        pair(
            n,
            || runs_direct.push(ok(a.direct("run", &run))),
            || runs.push(ok(a.hook("run", &run))),
        );
        if n == 0 {
            std::thread::sleep(Duration::from_secs(1));
            idle_kib = a.rss_kib().0;
        }
        a.stop();
    }

    // 2. Repeated hook calls on one agent: ready (image build), then suspend/resume.
    let (a, _) = Agent::start(o, o.boots);
    a.wait_app();
    let mut rows = vec![Lat::new(
        format!("/run (1 per boot, {} boots)", o.boots),
        runs,
        Some(runs_direct),
    )
    .target(Some(HOOK_P50), Some(HOOK_P99))];
    for _ in 0..WARM_UP {
        ok(a.direct("ready", ""));
        ok(a.hook("ready", ""));
    }
    let (mut via, mut direct) = (vec![], vec![]);
    for i in 0..o.calls {
        pair(
            i,
            || direct.push(ok(a.direct("ready", ""))),
            || via.push(ok(a.hook("ready", ""))),
        );
    }
    rows.push(Lat::new("/ready", via, Some(direct)).target(Some(HOOK_P50), Some(HOOK_P99)));
    ok(a.hook("run", &run));
    for _ in 0..WARM_UP {
        ok(a.direct("suspend", ""));
        suspend(&a);
        ok(a.direct("resume", ""));
        ok(a.hook("resume", ""));
    }
    let (mut sus, mut sus_d, mut res, mut res_d) = (vec![], vec![], vec![], vec![]);
    let mut syncs = Vec::new();
    let mut untimed = 0;
    for i in 0..o.calls / 2 {
        pair(
            i,
            || sus_d.push(ok(a.direct("suspend", ""))),
            || {
                let (d, sync) = suspend(&a);
                sus.push(d);
                match sync {
                    Some(s) => syncs.push(s),
                    None => untimed += 1,
                }
            },
        );
        pair(
            i,
            || res_d.push(ok(a.direct("resume", ""))),
            || res.push(ok(a.hook("resume", ""))),
        );
    }
    if untimed == 0 {
        let hook_path = sus
            .iter()
            .zip(&syncs)
            .map(|(d, s)| d.saturating_sub(*s))
            .collect();
        rows.push(
            Lat::new(
                "/suspend: round trip minus storageSyncMs (the hook path)",
                hook_path,
                Some(sus_d),
            )
            .target(Some(HOOK_P50), Some(HOOK_P99)),
        );
        rows.push(Lat::new(
            "/suspend: storageSyncMs (sync(2), of this host's filesystems here)",
            syncs,
            None,
        ));
    } else {
        rows.push(
            Lat::new(
                "/suspend (hook + sync(2); timings not reported by this agent)",
                sus,
                Some(sus_d),
            )
            .target(Some(HOOK_P50), Some(HOOK_P99)),
        );
    }
    rows.push(Lat::new("/resume", res, Some(res_d)).target(Some(HOOK_P50), Some(HOOK_P99)));
    let mut status = Vec::new();
    for _ in 0..o.calls {
        let t0 = Instant::now();
        let r = http(&a.sock, "GET", paths::STATUS, b"").unwrap();
        assert_eq!(r.status, 200);
        status.push(t0.elapsed());
    }
    rows.push(Lat::new("GET /v1/status (no app call)", status, None));
    let after_many = a.rss_kib();
    a.stop();

    let size = std::fs::metadata(&o.agent).map(|m| m.len()).unwrap_or(0);
    let agent = [
        Thr {
            figure: format!("binary ({})", o.agent.display()),
            agent: format!(
                "{} bytes ({:.2} MiB)",
                thousands(size),
                size as f64 / 1048576.0
            ),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("<= {} bytes", thousands(MAX_BINARY)),
            met: Some(size <= MAX_BINARY),
        },
        Thr {
            figure: "idle RSS (after /run, then 1 s idle)".into(),
            agent: format!("{} KiB", thousands(idle_kib)),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!("<= {} KiB (4 MiB)", thousands(MAX_IDLE_KIB)),
            met: Some(idle_kib > 0 && idle_kib <= MAX_IDLE_KIB),
        },
        Thr::info(
            format!("start to control-ready ({} starts)", o.boots),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms",
                ms(pct(&mut ready.clone(), 0.5)),
                ms(pct(&mut ready, 0.99))
            ),
        ),
        Thr::info(
            format!(
                "RSS after {} more hook calls and {} status calls",
                o.calls * 2,
                o.calls
            ),
            format!(
                "{} KiB (peak {} KiB)",
                thousands(after_many.0),
                thousands(after_many.1)
            ),
        ),
    ];
    let mut out = String::from("\n## Agent\n\n");
    out.push_str(&thr_table(&agent));
    out.push_str(&format!(
        "\n## Hooks\n\nThrough the agent (control channel on a Unix socket) vs straight to the \
         application (the recorder), a fresh connection per call both ways; {WARM_UP} untimed \
         calls of each way first; the two ways take turns going first.\n\n"
    ));
    out.push_str(&lat_table(rows));
    out
}
