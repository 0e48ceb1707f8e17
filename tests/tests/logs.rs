//! Application logs to CloudWatch Logs: the real agent as PID 1 in namespaces (sharing
//! the host network) against a real wire-protocol server (moto), read back with
//! GetLogEvents and compared exactly: order, no loss, no duplicates.

use microvm_tests::cw::{FaultProxy, Mode, Moto};
use microvm_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const GROUP: &str = "/aws/lambda-microvms/log-test";

macro_rules! require_moto {
    () => {
        require_root!();
        if microvm_tests::cw::moto_binary().is_none() {
            microvm_tests::skip("moto is not installed (make setup)");
            return;
        }
    };
}

/// A guest whose application is a shell script, logging to CloudWatch at `endpoint`.
fn guest(name: &str, script: &str, endpoint: &str, extra: Value) -> Guest {
    let dir = scratch(name);
    let mut cfg = json!({
        "imageName": "log-test",
        "command": ["/bin/sh", "-c", script.replace("$DIR", &dir.display().to_string())],
        "onApplicationExit": "restart",
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            cfg[k] = v;
        }
    }
    let opts = GuestOpts {
        share_net: true,
        env: vec![("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS".into(), endpoint.into())],
        ..Default::default()
    };
    Guest::start_with(dir, &cfg, &opts)
}

fn run(g: &Guest, id: &str, extra: Value) -> Reply {
    let mut body = json!({
        "microvmId": id,
        "region": "us-east-1",
        "credentials": {"accessKeyId": "AKIDTEST", "secretAccessKey": "secret"},
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let r = g.hook("run", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.json());
    r
}

/// Poll GetLogEvents until `n` messages are there (or time runs out), then return them.
fn read_back(m: &Moto, stream: &str, n: usize, within: Duration) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let got = m.messages(GROUP, stream);
        if got.len() >= n || t0.elapsed() > within {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The counters (`Guest::status` checks the balance on every read).
fn counters(g: &Guest) -> Value {
    g.status()["logs"]["counters"].clone()
}

#[test]
fn a_burst_of_100000_lines_arrives_in_order_exactly_once() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "burst",
        "seq -f 'line %g' 1 100000; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-burst", json!({}));
    wait_marker(&g.dir, "done");
    let got = read_back(&m, "mvm-burst", 100_000, Duration::from_secs(60));
    let want: Vec<String> = (1..=100_000).map(|i| format!("line {i}")).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "order or content differs");
    let c = counters(&g);
    assert_eq!(c["capturedEvents"], 100_000);
    assert_eq!(c["sentEvents"], 100_000);
    assert_eq!(c["droppedEvents"], 0);
    // At most 10,000 events per batch.
    assert!(c["sentBatches"].as_u64().unwrap() >= 10, "{c}");
}

#[test]
fn a_one_mib_line_is_split_never_truncated() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "bigline",
        "head -c 1048576 /dev/zero | tr '\\0' 'a'; echo; echo after; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-big", json!({}));
    wait_marker(&g.dir, "done");
    let got = read_back(&m, "mvm-big", 3, Duration::from_secs(30));
    assert_eq!(got.len(), 3);
    // 1,048,550 bytes is the largest message that fits a batch with its 26 bytes.
    assert_eq!(got[0].len(), 1_048_550);
    assert_eq!(got[1].len(), 1_048_576 - 1_048_550);
    assert_eq!(format!("{}{}", got[0], got[1]), "a".repeat(1_048_576));
    assert_eq!(got[2], "after");
}

#[test]
fn binary_garbage_is_replaced_not_dropped() {
    require_moto!();
    let m = Moto::start();
    let dir = scratch("garbage-src");
    // Deterministic garbage: every byte value, invalid sequences, long runs, newlines.
    let mut garbage = Vec::new();
    for i in 0..20_000u32 {
        garbage.push((i.wrapping_mul(2_654_435_761) >> 13) as u8);
    }
    std::fs::write(dir.join("garbage.bin"), &garbage).unwrap();
    let script = format!(
        "cat {}/garbage.bin; echo; echo end; touch $DIR/done; exec sleep 1000",
        dir.display()
    );
    let g = guest("garbage", &script, &m.url(), json!({}));
    run(&g, "mvm-garbage", json!({}));
    wait_marker(&g.dir, "done");
    let mut want: Vec<String> = garbage
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    want.push("end".into());
    let got = read_back(&m, "mvm-garbage", want.len(), Duration::from_secs(30));
    assert_eq!(got, want);
    let empty = garbage
        .split(|b| *b == b'\n')
        .filter(|l| l.is_empty())
        .count() as u64;
    assert_eq!(counters(&g)["emptyLinesSkipped"], empty);
}

#[test]
fn stdout_and_stderr_interleaved_lose_nothing() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "interleave",
        "i=0; while [ $i -lt 3000 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-mix", json!({}));
    wait_marker(&g.dir, "done");
    let got = read_back(&m, "mvm-mix", 6000, Duration::from_secs(30));
    assert_eq!(got.len(), 6000);
    let outs: Vec<&String> = got.iter().filter(|l| l.starts_with("out ")).collect();
    let errs: Vec<&String> = got.iter().filter(|l| l.starts_with("err ")).collect();
    let want = |p: &str| (0..3000).map(|i| format!("{p} {i}")).collect::<Vec<_>>();
    assert_eq!(outs.into_iter().cloned().collect::<Vec<_>>(), want("out"));
    assert_eq!(errs.into_iter().cloned().collect::<Vec<_>>(), want("err"));
}

#[test]
fn terminate_right_after_a_burst_loses_nothing() {
    require_moto!();
    let m = Moto::start();
    let mut g = guest(
        "term-burst",
        "seq -f 'burst %g' 1 30000; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-term", json!({}));
    wait_marker(&g.dir, "done");
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["logsFlushed"], true, "{}", r.json());
    g.wait_gone(Duration::from_secs(20));
    // Read only after the guest is gone: everything left before it powered off.
    let got = m.messages(GROUP, "mvm-term");
    let want: Vec<String> = (1..=30_000).map(|i| format!("burst {i}")).collect();
    assert_eq!(got.len(), 30_000);
    assert!(got == want);
}

#[test]
fn suspend_flushes_what_was_written_before_it() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "suspend-flush",
        "seq -f 'before %g' 1 5000; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-susp", json!({}));
    wait_marker(&g.dir, "done");
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["logsFlushed"], true);
    // No waiting: on a 200 the lines are already in the server.
    assert_eq!(m.messages(GROUP, "mvm-susp").len(), 5000);
}

#[test]
fn the_server_down_for_10_s_then_back() {
    require_moto!();
    let m = Moto::start();
    let p = FaultProxy::start(m.port);
    let g = guest(
        "down",
        "i=0; while [ $i -lt 150 ]; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done; touch $DIR/done; exec sleep 1000",
        &p.url(),
        json!({}),
    );
    run(&g, "mvm-down", json!({}));
    std::thread::sleep(Duration::from_millis(1500));
    p.set(Mode::Down);
    std::thread::sleep(Duration::from_secs(10));
    let err = g.status()["logs"]["lastError"].clone();
    assert!(err.is_string(), "status reports the outage: {err}");
    p.set(Mode::Forward);
    wait_marker(&g.dir, "done");
    let got = read_back(&m, "mvm-down", 150, Duration::from_secs(30));
    let want: Vec<String> = (0..150).map(|i| format!("tick {i}")).collect();
    assert_eq!(got, want);
    assert!(p.dropped.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(counters(&g)["retries"].as_u64().unwrap() > 0);
    assert!(
        g.status()["logs"]["lastError"].is_null(),
        "cleared once sent"
    );
}

#[test]
fn throttling_is_retried_without_duplicates() {
    require_moto!();
    let m = Moto::start();
    let p = FaultProxy::start(m.port);
    let g = guest(
        "throttle",
        "sleep 0.5; seq -f 'thr %g' 1 20000; touch $DIR/done; exec sleep 1000",
        &p.url(),
        json!({}),
    );
    run(&g, "mvm-thr", json!({}));
    p.set(Mode::Throttle);
    wait_marker(&g.dir, "done");
    std::thread::sleep(Duration::from_secs(3));
    p.set(Mode::Forward);
    let got = read_back(&m, "mvm-thr", 20_000, Duration::from_secs(60));
    let want: Vec<String> = (1..=20_000).map(|i| format!("thr {i}")).collect();
    assert_eq!(got.len(), 20_000, "no loss, no duplicates");
    assert!(got == want);
    assert!(p.throttled.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let c = counters(&g);
    assert!(c["retries"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["sentEvents"], 20_000);
}

#[test]
fn disabled_logging_sends_nothing_and_counts() {
    require_moto!();
    let m = Moto::start();
    let p = FaultProxy::start(m.port);
    let g = guest(
        "disabled",
        "seq -f 'quiet %g' 1 1000; touch $DIR/done; exec sleep 1000",
        &p.url(),
        json!({}),
    );
    run(&g, "mvm-off", json!({"logging": {"disabled": {}}}));
    wait_marker(&g.dir, "done");
    let r = g.hook("suspend", "");
    assert_eq!(r.status, 200);
    let s = g.status()["logs"].clone();
    assert_eq!(s["destination"]["kind"], "disabled");
    assert_eq!(s["counters"]["capturedEvents"], 1000);
    assert_eq!(s["counters"]["droppedEvents"], 1000);
    assert_eq!(s["counters"]["droppedByReason"]["LoggingDisabled"], 1000);
    assert_eq!(s["counters"]["sentEvents"], 0);
    assert_eq!(
        p.forwarded_puts.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(m.streams(GROUP).is_empty());
}

/// Lines written once the run has chosen a discarding destination are counted where
/// they lie in each read, never made into events: the counts must still be exactly
/// those events would give, empty lines, repaired UTF-8 and a partial last line
/// included.
#[test]
fn a_discarding_run_counts_exactly_what_events_would() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "discard-count",
        "while [ ! -e $DIR/go ]; do sleep 0.02; done; seq -f 'quiet %g' 1 1000; printf '\\n\\nbad \\377 byte\\n'; printf 'tail'; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    run(&g, "mvm-dc", json!({"logging": {"disabled": {}}}));
    std::fs::write(g.dir.join("go"), "").unwrap();
    wait_marker(&g.dir, "done");
    assert_eq!(g.hook("suspend", "").status, 200);
    let c = counters(&g);
    let quiet: u64 = (1..=1000).map(|i| format!("quiet {i}").len() as u64).sum();
    // "bad \377 byte": the invalid byte becomes U+FFFD (3 bytes); "tail" is flushed.
    let bytes = quiet + "bad \u{FFFD} byte".len() as u64 + 4;
    assert_eq!(c["capturedEvents"], 1002, "{c}");
    assert_eq!(c["capturedBytes"], bytes, "{c}");
    assert_eq!(c["emptyLinesSkipped"], 2, "{c}");
    assert_eq!(c["droppedEvents"], 1002, "{c}");
    assert_eq!(c["droppedBytes"], bytes, "{c}");
    assert_eq!(c["droppedByReason"]["LoggingDisabled"], 1002, "{c}");
    assert_eq!(c["sentEvents"], 0, "{c}");
}

#[test]
fn a_run_without_credentials_forwards_nothing_and_says_why() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "nocreds",
        "seq -f 'x %g' 1 100; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({}),
    );
    let r = g.hook(
        "run",
        &json!({"microvmId": "mvm-nc", "region": "us-east-1"}).to_string(),
    );
    assert_eq!(r.status, 200);
    wait_marker(&g.dir, "done");
    assert_eq!(g.hook("suspend", "").status, 200);
    let s = g.status()["logs"].clone();
    assert_eq!(s["destination"]["kind"], "noCredentials");
    assert_eq!(s["counters"]["droppedByReason"]["NoCredentials"], 100);
    assert!(s["why"].as_str().unwrap().contains("no execution role"));
}

#[test]
fn lines_before_run_go_to_the_run_stream_with_custom_names() {
    require_moto!();
    let m = Moto::start();
    let g = guest(
        "prerun",
        "echo early; touch $DIR/early; while [ ! -e $DIR/go ]; do sleep 0.05; done; echo late; touch $DIR/done; exec sleep 1000",
        &m.url(),
        json!({"logging": {"cloudWatch": {"logGroup": "/image/group"}}}),
    );
    wait_marker(&g.dir, "early");
    run(
        &g,
        "mvm-pre",
        json!({"logging": {"cloudWatch": {"logGroup": GROUP, "logStream": "custom"}}}),
    );
    std::fs::write(g.dir.join("go"), "").unwrap();
    wait_marker(&g.dir, "done");
    assert_eq!(g.hook("suspend", "").status, 200);
    assert_eq!(m.messages(GROUP, "custom"), ["early", "late"]);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn rss(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `bufferBytes` bounds memory, not payload: an application writing 1-byte lines as
/// fast as it can before `/run` (nothing leaves the buffer) fills an 8 MiB buffer,
/// and the agent's peak RSS stays under its idle RSS plus twice the buffer. Counting
/// payload plus 26 bytes, the buffer held 310,689 such lines and the peak was 23.7 MB
/// over idle (measured, debug build); counting memory, 74,898 lines and 7.1 MB.
#[test]
fn a_full_buffer_of_short_lines_bounds_the_agents_memory() {
    require_root!();
    const BUFFER: u64 = 8 << 20;
    let dir = scratch("rss");
    let script = format!(
        "while [ ! -e {0}/go ]; do sleep 0.05; done; exec yes",
        dir.display()
    );
    let cfg = json!({
        "imageName": "rss-test",
        "command": ["/bin/sh", "-c", script],
        "logs": {"bufferBytes": BUFFER, "whenFull": "block"},
    });
    let g = Guest::start_with(dir, &cfg, &GuestOpts::default());
    let agent = g.agent_pid();
    // Idle: serving, the app waiting, nothing captured yet.
    std::thread::sleep(Duration::from_millis(500));
    let (idle, _) = rss(agent);
    std::fs::write(g.dir.join("go"), "").unwrap();
    // Full: the count stops growing (the app blocks in write).
    let mut last = 0;
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = g.status();
        let n = s["logs"]["counters"]["capturedEvents"].as_u64().unwrap();
        if n > 0 && n == last {
            assert_eq!(
                s["logs"]["counters"]["droppedEvents"], 0,
                "block drops nothing"
            );
            assert!(
                s["logs"]["bufferedBytes"].as_u64().unwrap() <= BUFFER,
                "{:#}",
                s["logs"]
            );
            break;
        }
        last = n;
        assert!(t0.elapsed() < Duration::from_secs(60), "never filled: {n}");
    }
    let (now, peak) = rss(agent);
    eprintln!(
        "idle {idle} B, full {now} B, peak {peak} B, {last} lines of 1 byte in an {BUFFER}-byte buffer"
    );
    assert!(last > 10_000, "{last}");
    assert!(
        peak < idle + 2 * BUFFER,
        "peak RSS {peak} B > idle {idle} B + 2 x {BUFFER} B"
    );
}

/// Credentials the service calls expired must never freeze the application: it writes
/// far more than the 2 MiB buffer while every request is refused; within the grace it
/// may wait, then the oldest lines are dropped (`CredentialsRefused`) and it finishes.
/// A rotation (`POST /v1/credentials`) resumes delivery: what is written after it
/// arrives, in order, and every captured line is sent or counted.
#[test]
fn expired_credentials_never_freeze_the_application_and_a_rotation_resumes_delivery() {
    require_moto!();
    let m = Moto::start();
    let p = FaultProxy::start(m.port);
    p.set(Mode::Expired);
    let g = guest(
        "expired",
        "yes 'an old line that may be dropped while the credentials are refused' | head -n 100000; \
         touch $DIR/done; while [ ! -e $DIR/go ]; do sleep 0.05; done; \
         seq -f 'after rotation %g' 1 100; exec sleep 1000",
        &p.url(),
        json!({"logs": {"bufferBytes": 2 * 1024 * 1024, "whenFull": "block"}}),
    );
    run(&g, "mvm-expired", json!({}));
    // 7 MB through a 2 MiB buffer while nothing can be delivered: the app finishes.
    wait_marker(&g.dir, "done");
    let c = counters(&g);
    assert!(
        c["droppedByReason"]["CredentialsRefused"].as_u64().unwrap() > 0,
        "{c:#}"
    );
    assert_eq!(c["sentEvents"], 0);
    let s = g.status()["logs"].clone();
    assert!(
        s["lastError"].as_str().unwrap().contains("ExpiredToken"),
        "{s:#}"
    );
    // Rotation: the service accepts the new key only, so delivery resumes only if
    // the agent really signs with it.
    p.accept_key("AKIDROTATED");
    let r = g.request(
        "POST",
        microvm_protocol::paths::CREDENTIALS,
        json!({"accessKeyId": "AKIDROTATED", "secretAccessKey": "secret2"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    std::fs::write(g.dir.join("go"), "").unwrap();
    let t0 = Instant::now();
    loop {
        let got = m.messages(GROUP, "mvm-expired");
        let after: Vec<&String> = got
            .iter()
            .filter(|l| l.starts_with("after rotation"))
            .collect();
        if after.len() == 100 {
            let want: Vec<String> = (1..=100).map(|i| format!("after rotation {i}")).collect();
            assert_eq!(after, want.iter().collect::<Vec<_>>());
            break;
        }
        // New credentials cut the sender's retry pause short (at most 10 s else).
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "delivery never resumed: {} lines; {:#}",
            got.len(),
            counters(&g)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = counters(&g);
    assert_eq!(
        c["capturedEvents"].as_u64().unwrap(),
        c["sentEvents"].as_u64().unwrap() + c["droppedEvents"].as_u64().unwrap(),
        "nothing vanished uncounted: {c:#}"
    );
}
