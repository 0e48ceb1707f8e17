//! Start-up, memory, and hook latency through the agent against the same hook
//! straight to the application.

use crate::agent::Agent;
use crate::report::{ms, pct, table, Row};
use crate::Opts;
use microvm_protocol::paths;
use microvm_tests::http;
use serde_json::json;
use std::time::Instant;

pub fn bench(o: &Opts) -> String {
    let run = json!({"microvmId": "mvm-bench", "runHookPayload": "x".repeat(1024)}).to_string();

    // 1. Start to control-ready, and /run once per boot (/run happens once per VM).
    let mut ready = Vec::new();
    let mut runs = Vec::new();
    let mut runs_direct = Vec::new();
    let mut rss = (0, 0);
    for n in 0..o.boots {
        let (a, t) = Agent::start(o, n);
        ready.push(t);
        a.wait_app();
        let (s, d) = a.direct("run", &run);
        assert_eq!(s, 200);
        runs_direct.push(d);
        let (s, d) = a.hook("run", &run);
        assert_eq!(s, 200, "run through agent");
        runs.push(d);
        if n == 0 {
            rss = a.rss_kib();
        }
        a.stop();
    }

    // 2. Repeated hook calls on one agent: ready (image build), then suspend/resume.
    let (a, _) = Agent::start(o, o.boots);
    a.wait_app();
    let mut rows = vec![Row("/run (1 per boot)".into(), runs, Some(runs_direct))];
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..o.calls {
        direct.push(a.direct("ready", "").1);
        let (s, d) = a.hook("ready", "");
        assert_eq!(s, 200);
        through.push(d);
    }
    rows.push(Row("/ready".into(), through, Some(direct)));
    assert_eq!(a.hook("run", &run).0, 200);
    let (mut sus, mut res, mut sus_d, mut res_d) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.calls / 2 {
        sus_d.push(a.direct("suspend", "").1);
        let (s, d) = a.hook("suspend", "");
        assert_eq!(s, 200);
        sus.push(d);
        res_d.push(a.direct("resume", "").1);
        let (s, d) = a.hook("resume", "");
        assert_eq!(s, 200);
        res.push(d);
    }
    rows.push(Row("/suspend".into(), sus, Some(sus_d)));
    rows.push(Row("/resume".into(), res, Some(res_d)));
    let mut status = Vec::new();
    for _ in 0..o.calls {
        let t0 = Instant::now();
        let r = http(&a.sock, "GET", paths::STATUS, b"").unwrap();
        assert_eq!(r.status, 200);
        status.push(t0.elapsed());
    }
    rows.push(Row("GET /v1/status (no app call)".into(), status, None));
    let rss_after_many = a.rss_kib();
    a.stop();

    let size = std::fs::metadata(&o.agent).map(|m| m.len()).unwrap_or(0);
    let mut out = String::new();
    out.push_str(&format!(
        "agent binary: {} ({} bytes = {:.2} MiB)\n\n",
        o.agent.display(),
        size,
        size as f64 / 1048576.0
    ));
    out.push_str(&format!(
        "start to control-ready ({} boots): p50 {:.2} ms, p99 {:.2} ms\n",
        o.boots,
        ms(pct(&mut ready.clone(), 0.5)),
        ms(pct(&mut ready, 0.99))
    ));
    out.push_str(&format!(
        "agent RSS after /run: {} KiB (peak {} KiB); after {} more hook calls: {} KiB (peak {} KiB)\n\n",
        rss.0,
        rss.1,
        o.calls * 2,
        rss_after_many.0,
        rss_after_many.1
    ));
    out.push_str(&table(rows));
    out
}
