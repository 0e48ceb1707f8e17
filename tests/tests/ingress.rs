//! Ingress through the agent and idle reporting, with the agent as PID 1 in
//! namespaces and ingress on a Unix socket in place of vsock.

use microvm_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn echo_guest(name: &str, idle_env: bool) -> Guest {
    echo_guest_with(name, idle_env, json!({}))
}

/// The echo app on 8080, 8081 and 9090, with `extra` merged into its image config.
fn echo_guest_with(name: &str, idle_env: bool, extra: Value) -> Guest {
    echo_guest_opts(name, idle_env, extra, None)
}

fn echo_guest_opts(name: &str, idle_env: bool, extra: Value, nofile: Option<u64>) -> Guest {
    let dir = scratch(name);
    let mut cfg = json!({
        "imageName": "ingress-test",
        "command": [bins().echo.display().to_string()],
        "env": {"ECHO_PORTS": "8080,8081,9090"},
        "logs": {"mirrorToConsole": true},
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut cfg, extra) {
        c.extend(e);
    }
    let mut env = vec![];
    if idle_env {
        // The test-only setting that lowers the 60 s minimum idle duration.
        env.push((
            "MICROVM_AGENT_TEST_MIN_IDLE_SECONDS".to_string(),
            "0".to_string(),
        ));
    }
    let g = Guest::start_with(
        dir,
        &cfg,
        &GuestOpts {
            ingress: true,
            env,
            nofile,
            ..Default::default()
        },
    );
    // The app is up once a request goes through.
    let t0 = Instant::now();
    while get(&g, "/", &[]).0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "echo app never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

fn ingress(g: &Guest) -> UnixStream {
    let s = UnixStream::connect(g.dir.join("ingress.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn request(path: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: mvm.example\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

fn get(g: &Guest, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut s = ingress(g);
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    s.write_all(request(path, &h).as_bytes()).unwrap();
    match read_reply(&mut BufReader::new(s)) {
        Ok(r) => (r.status, r.json()),
        Err(_) => (0, Value::Null),
    }
}

fn header_names(v: &Value) -> Vec<String> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn routing_by_header_with_platform_headers_stripped() {
    require_root!();
    let g = echo_guest("route", false);
    let (st, v) = get(&g, "/a?b=c", &[]);
    assert_eq!((st, v["port"].as_u64()), (200, Some(8080)));
    assert_eq!(v["path"], "/a?b=c");
    let (st, v) = get(
        &g,
        "/",
        &[
            ("X-aws-proxy-port", "8081"),
            ("X-aws-proxy-auth", "secret-token"),
            ("x-aws-proxy-anything", "1"),
            ("X-Custom", "kept"),
        ],
    );
    assert_eq!((st, v["port"].as_u64()), (200, Some(8081)));
    let names = header_names(&v);
    assert!(
        names.iter().all(|n| !n.starts_with("x-aws-proxy-")),
        "{names:?}"
    );
    assert!(names.contains(&"x-custom".to_string()));
    assert!(!v.to_string().contains("secret-token"));
}

#[test]
fn keep_alive_and_pipelined_requests_are_routed_one_by_one() {
    require_root!();
    let g = echo_guest("pipeline", false);
    let mut s = ingress(&g);
    let batch = [
        request("/1", &[]),
        request("/2", &[("X-aws-proxy-port", "8081")]),
        request("/3", &[("X-aws-proxy-port", "9090")]),
        request("/4", &[("Connection", "close")]),
    ]
    .concat();
    s.write_all(batch.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let got: Vec<(String, u64)> = (0..4)
        .map(|_| {
            let rep = read_reply(&mut r).unwrap();
            let v = rep.json();
            (
                v["path"].as_str().unwrap().to_string(),
                v["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/1".into(), 8080),
            ("/2".into(), 8081),
            ("/3".into(), 9090),
            ("/4".into(), 8080)
        ]
    );
}

/// The headers of a WebSocket upgrade request.
const WEBSOCKET: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn websocket_routed_by_subprotocol_which_is_stripped() {
    require_root!();
    let g = echo_guest("websocket", false);
    let mut s = ingress(&g);
    let mut headers = WEBSOCKET.to_vec();
    headers.push((
        "Sec-WebSocket-Protocol",
        "lambda-microvms, lambda-microvms.authentication.tok123, lambda-microvms.port.9090, chat.v1",
    ));
    let req = request("/ws", &headers);
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let rep = read_reply(&mut r).unwrap();
    assert_eq!(rep.status, 101);
    assert_eq!(rep.header("x-echo-port"), Some("9090"));
    assert_eq!(rep.header("x-echo-subprotocols"), Some("chat.v1"));
    assert_eq!(rep.header("sec-websocket-protocol"), Some("chat.v1"));
    // The upgraded stream goes both ways.
    s.write_all(b"frame bytes").unwrap();
    let mut buf = [0u8; 11];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"frame bytes");
}

#[test]
fn a_closed_port_is_502_and_a_closed_stream() {
    require_root!();
    let g = echo_guest("closed", false);
    let mut s = ingress(&g);
    s.write_all(
        request(
            "/",
            &[("X-aws-proxy-port", "7777"), ("Connection", "close")],
        )
        .as_bytes(),
    )
    .unwrap();
    let rep = read_reply(&mut BufReader::new(s)).unwrap();
    assert_eq!(rep.status, 502);
    assert!(String::from_utf8_lossy(&rep.body).contains("port 7777"));
    let (st, _) = get(&g, "/", &[("X-aws-proxy-port", "notaport")]);
    assert_eq!(st, 400);
}

#[test]
fn h2c_and_raw_tcp_are_forwarded_as_streams() {
    require_root!();
    let g = echo_guest("streams", false);
    // The h2c preface: the stream goes to the app's HTTP/2 server as it is, whose
    // first frame is its SETTINGS (type 4, stream 0).
    let mut s = ingress(&g);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut frame = [0u8; 9];
    s.read_exact(&mut frame).unwrap();
    assert_eq!((frame[3], &frame[5..9]), (4, &[0u8; 4][..]), "{frame:?}");

    let mut s = ingress(&g);
    s.write_all(b"hello raw\n").unwrap();
    let mut r = BufReader::new(s);
    let mut a = String::new();
    let mut b = String::new();
    r.read_line(&mut a).unwrap();
    r.read_line(&mut b).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("RAW port=8080\n", "hello raw\n"));
}

/// One HTTP/1.1 request with `headers` and a body: (status, answer's JSON).
fn post(g: &Guest, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = ingress(g);
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: mvm.example\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    s.write_all(r.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let rep = read_reply(&mut BufReader::new(s)).unwrap();
    (rep.status, String::from_utf8_lossy(&rep.body).to_string())
}

#[test]
fn force_h2_speaks_http2_cleartext_to_the_application() {
    require_root!();
    let g = echo_guest("force-h2", false);
    let body = vec![b'z'; 100_000];
    let (status, answer) = post(
        &g,
        "/h2?x=1",
        &[
            ("X-aws-proxy-force-h2", "true"),
            ("X-aws-proxy-port", "8081"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "gzip"),
            ("Connection", "X-Internal"),
            ("X-Internal", "this hop only"),
            ("X-Mine", "kept"),
        ],
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (
            v["version"].as_str(),
            v["port"].as_u64(),
            v["path"].as_str(),
            v["method"].as_str(),
            v["bodyLen"].as_u64()
        ),
        (
            Some("HTTP/2.0"),
            Some(8081),
            Some("/h2?x=1"),
            Some("POST"),
            Some(100_000)
        )
    );
    assert_eq!(v["authority"], "mvm.example", "Host becomes :authority");
    let names = header_names(&v);
    assert!(names.contains(&"x-mine".to_string()), "{names:?}");
    for gone in [
        "keep-alive",
        "te",
        "connection",
        "x-internal",
        "host",
        "x-aws-proxy-force-h2",
        "x-aws-proxy-port",
    ] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached the app: {names:?}"
        );
    }
    // Without it (or with anything but true), HTTP/1.1 as before.
    for h in [&[][..], &[("X-aws-proxy-force-h2", "false")][..]] {
        let (status, answer) = post(&g, "/h1", h, b"");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["version"], "HTTP/1.1", "{h:?}");
    }
    // Nothing on the port: a 502 that says so; a WebSocket cannot be forced onto
    // HTTP/2.
    let (status, answer) = post(
        &g,
        "/",
        &[
            ("X-aws-proxy-force-h2", "true"),
            ("X-aws-proxy-port", "7777"),
        ],
        b"",
    );
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer.contains("nothing is listening on port 7777"),
        "{answer}"
    );
    let (status, answer) = post(
        &g,
        "/",
        &[
            ("X-aws-proxy-force-h2", "TRUE"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
        ],
        b"",
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("cannot carry a WebSocket upgrade"),
        "{answer}"
    );
}

#[test]
fn a_thousand_concurrent_connections() {
    require_root!();
    raise_nofile();
    let g = echo_guest("thousand", false);
    let sock = g.dir.join("ingress.sock");
    // All connected first, then all send: 1,000 open at once through the agent.
    let conns: Vec<UnixStream> = (0..1000)
        .map(|_| {
            let s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s
        })
        .collect();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                let port = [8080, 8081, 9090][i % 3];
                let p = port.to_string();
                s.write_all(
                    request(
                        &format!("/c{i}"),
                        &[("X-aws-proxy-port", &p), ("Connection", "close")],
                    )
                    .as_bytes(),
                )
                .unwrap();
                let v = read_reply(&mut BufReader::new(s)).unwrap().json();
                (v["path"] == format!("/c{i}")) && v["port"] == port
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 1000);
}

#[test]
fn a_client_stalling_mid_request_delays_nobody() {
    require_root!();
    let g = echo_guest("stall", false);
    let mut stalled = ingress(&g);
    stalled
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: x\r\nX-Half: ")
        .unwrap();
    let t0 = Instant::now();
    for i in 0..50 {
        let (st, v) = get(&g, &format!("/other{i}"), &[]);
        assert_eq!(st, 200);
        assert_eq!(v["path"], format!("/other{i}"));
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The stalled one still completes when it resumes.
    stalled
        .write_all(b"1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let v = read_reply(&mut BufReader::new(stalled)).unwrap().json();
    assert_eq!(v["path"], "/stalled");
}

fn run_with_idle(g: &Guest, max_idle: u64) {
    let body = json!({"microvmId": "mvm-idle",
                      "idlePolicy": {"maxIdleDurationSeconds": max_idle,
                                     "suspendedDurationSeconds": 0, "autoResumeEnabled": true}});
    let r = g.hook("run", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.json());
}

fn events(g: &Guest, after: u64, wait: u64) -> Value {
    g.request(
        "GET",
        &format!("/v1/events?after={after}&waitSeconds={wait}"),
        b"",
    )
    .json()
}

fn types(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn idle_after_quiet_and_active_on_traffic_with_replay() {
    require_root!();
    let g = echo_guest("idle", true);
    run_with_idle(&g, 1);
    let t0 = Instant::now();
    let first = events(&g, 0, 10);
    assert_eq!(types(&first), ["idle"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let idle_seq = first["lastSeq"].as_u64().unwrap();
    // Control-channel traffic is not activity.
    for _ in 0..5 {
        g.status();
    }
    assert!(types(&events(&g, idle_seq, 1)).is_empty());
    // Ingress traffic is.
    assert_eq!(get(&g, "/wake", &[]).0, 200);
    let next = events(&g, idle_seq, 5);
    assert_eq!(types(&next), ["active"]);
    let active_seq = next["lastSeq"].as_u64().unwrap();
    // And quiet again: idle again.
    let again = events(&g, active_seq, 5);
    assert_eq!(types(&again), ["idle"]);
    // A host that reconnects with the last sequence it saw gets exactly what it missed.
    let replay = events(&g, idle_seq, 0);
    assert_eq!(types(&replay), ["active", "idle"]);
    let seqs: Vec<u64> = replay["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [idle_seq + 1, idle_seq + 2]);
    assert_eq!(replay["gap"], false);
    assert!(types(&events(&g, seqs[1], 0)).is_empty(), "nothing twice");
}

#[test]
fn a_lease_keeps_it_active() {
    require_root!();
    let g = echo_guest("lease", true);
    run_with_idle(&g, 1);
    // The app takes a lease, answers at once, and works in the background for 3 s:
    // no request is in flight, only the lease can keep the VM active.
    let t0 = Instant::now();
    let (st, v) = get(&g, "/lease?ms=3000", &[]);
    assert_eq!((st, &v["leased"]), (200, &json!(true)));
    assert!(g.status()["activity"]["busy"] == true);
    let ev = events(&g, 0, 10);
    assert_eq!(types(&ev), ["idle"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(3900),
        "no idle while the lease was held: {:?}",
        t0.elapsed()
    );
}

#[test]
fn an_idle_policy_below_the_minimum_is_refused_without_the_test_setting() {
    require_root!();
    let g = echo_guest("idle-min", false);
    let body = json!({"microvmId": "m", "idlePolicy": {"maxIdleDurationSeconds": 59}});
    let r = g.hook("run", &body.to_string());
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("at least 60"));
    run_with_idle(&g, 60);
    assert!(types(&events(&g, 0, 1)).is_empty(), "no report before 60 s");
}

#[test]
fn no_idle_policy_reports_nothing() {
    require_root!();
    let g = echo_guest("no-policy", true);
    assert_eq!(g.hook("run", r#"{"microvmId":"m"}"#).status, 200);
    assert!(types(&events(&g, 0, 2)).is_empty());
}

#[test]
fn ingress_never_reaches_the_hooks_or_the_agents_ports() {
    require_root!();
    // The image enables a hook on 9090, a port the echo app serves (it would answer).
    let hooks = json!({"hooks": {"port": 9090, "microvmHooks": {"terminate": "ENABLED"}}});
    let g = echo_guest_with("borders", false, hooks);
    // The hook paths, on any port and in any spelling: a forged /run or /terminate
    // must never reach the application (the echo app would answer 200).
    for (path, port) in [
        ("/aws/lambda-microvms/runtime/v1/run", "8080"),
        ("//aws//lambda-microvms/runtime/v1/terminate", "8081"),
        ("/AWS/lambda-microvms/runtime/v1/suspend", "8081"),
        ("/aws/./lambda-microvms/x/../runtime/v1/run", "8080"),
        ("/aws;v=1/lambda-microvms%252Fruntime/v1/run", "8080"),
        ("/%61ws/lambda-microvms/runtime/v1/resume", "8080"),
    ] {
        let mut s = ingress(&g);
        let req = request(path, &[("X-aws-proxy-port", port), ("Connection", "close")]);
        s.write_all(req.as_bytes()).unwrap();
        let r = read_reply(&mut BufReader::new(s)).unwrap();
        assert_eq!(r.status, 403, "{path} on {port}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("lifecycle hooks"),
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The image's hooks port and the keep-awake lease port.
    for port in ["9090", "9001"] {
        let mut s = ingress(&g);
        s.write_all(
            request("/", &[("X-aws-proxy-port", port), ("Connection", "close")]).as_bytes(),
        )
        .unwrap();
        let r = read_reply(&mut BufReader::new(s)).unwrap();
        assert_eq!(r.status, 403, "port {port}");
        assert!(String::from_utf8_lossy(&r.body).contains(&format!("port {port}")));
    }
    assert_eq!(g.status()["activity"]["busy"], false, "no lease was taken");
    // Ordinary traffic still flows, to any other port.
    assert_eq!(get(&g, "/fine", &[]).0, 200);
    assert_eq!(get(&g, "/fine", &[("X-aws-proxy-port", "8081")]).0, 200);
}

#[test]
fn ingress_errors_reach_a_client_that_sends_its_body_late() {
    require_root!();
    let g = echo_guest("latebody", false);
    for (headers, want) in [
        (vec![("X-aws-proxy-port", "7777")], 502),
        (vec![("X-aws-proxy-port", "notaport")], 400),
        (vec![("X-aws-proxy-port", "9001")], 403),
    ] {
        let r = late_body(ingress(&g), "POST", "/upload", &headers, 100_000)
            .unwrap_or_else(|e| panic!("{headers:?}: no answer: {e}"));
        assert_eq!(r.status, want, "{headers:?}");
    }
}

#[test]
fn a_flood_of_clients_cannot_take_the_hosts_control_channel() {
    // The bug this guards: ingress accepted without a cap and shares the descriptor
    // table with the control channel, so a flood of clients could make the host's
    // /terminate impossible (EMFILE on the control socket).
    require_root!();
    raise_nofile();
    let mut g = echo_guest_opts("flood", false, json!({}), Some(256));
    let sock = g.dir.join("ingress.sock");
    // First WebSocket sessions: an upgraded stream outlives its HTTP connection and
    // must keep its share (it used to give it back at the upgrade). They are held by
    // threads that end with the guest.
    let (ws_tx, upgraded) = std::sync::mpsc::channel();
    for _ in 0..80 {
        let (sock, ws_tx) = (sock.clone(), ws_tx.clone());
        std::thread::spawn(move || {
            let Ok(mut s) = UnixStream::connect(&sock) else {
                return;
            };
            let req = request("/ws", &WEBSOCKET);
            let _ = s.write_all(req.as_bytes());
            let mut r = BufReader::new(s.try_clone().unwrap());
            if read_reply(&mut r).is_ok_and(|rep| rep.status == 101) {
                let _ = ws_tx.send(());
                let mut sink = [0u8; 64];
                let _ = r.read(&mut sink);
            }
        });
    }
    drop(ws_tx);
    let mut sessions = 0;
    while upgraded.recv_timeout(Duration::from_secs(3)).is_ok() {
        sessions += 1;
    }
    assert_eq!(sessions, 48, "the ingress share under a limit of 256");
    let (tx, opened) = std::sync::mpsc::channel();
    // Clients past the cap wait in the listen backlog, then in connect: each gets a
    // thread of its own, ended when the guest goes.
    for _ in 0..300 {
        let (sock, tx) = (sock.clone(), tx.clone());
        std::thread::spawn(move || {
            if let Ok(mut s) = UnixStream::connect(&sock) {
                // Half a request: the connection stays open and busy.
                let _ = s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n");
                let _ = tx.send(());
                let mut sink = [0u8; 64];
                let _ = s.read(&mut sink);
            }
        });
    }
    let t0 = Instant::now();
    let mut n = 0;
    while n < 200 && t0.elapsed() < Duration::from_secs(30) {
        if opened.recv_timeout(Duration::from_millis(500)).is_ok() {
            n += 1;
        }
    }
    assert!(n >= 200, "only {n} clients connected");
    // Inside the guest: 300 half-requests to the metadata service and 300 keep-awake
    // leases, which used to have caps of their own (or none) outside the reserve.
    let (metadata, leases) = g.in_net(|| {
        let mut metadata = Vec::new();
        let mut leases = Vec::new();
        for i in 0..600 {
            let addr: std::net::SocketAddr = if i % 2 == 0 {
                ([169, 254, 169, 254], 80).into()
            } else {
                ([127, 0, 0, 1], microvm_protocol::ports::LEASE).into()
            };
            // Past a server's share and its listen backlog the SYN goes unanswered:
            // that client simply is not one of the flood.
            let connected = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50));
            if let Ok(mut s) = connected {
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\n");
                    metadata.push(s);
                } else {
                    leases.push(s);
                }
            }
        }
        (metadata, leases)
    });
    assert!(
        metadata.len() > 24,
        "only {} metadata clients",
        metadata.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    // A granted lease reads one byte; a refused one (past the share) reads EOF.
    let granted = leases
        .iter()
        .filter(|s| {
            let mut s: &std::net::TcpStream = s;
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(1))
        })
        .count();
    assert_eq!(granted, 24, "the lease share under a limit of 256");
    let asked = Instant::now();
    let s = g.status();
    assert_eq!(s["state"], "PENDING", "{s}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "status took {:?}",
        asked.elapsed()
    );
    assert!(g.console().contains("ingress connections at most"));
    assert!(
        s["metadata"]["endpoint"]
            .as_str()
            .is_some_and(|v| v.starts_with("http://")),
        "{:#}",
        s["metadata"]
    );
    let asked = Instant::now();
    let r = g.hook("terminate", "");
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "terminate took {:?}",
        asked.elapsed()
    );
    g.wait_gone(Duration::from_secs(30));
}

/// An HTTP/1.1 app on 8080 and 8081 that names the connection each request came on
/// (the agent's side of it: the peer's port) and keeps connections open.
const CONNECTIONS_APP: &str = r#"
import http.server, json, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = json.dumps({"peer": self.client_address[1],
                        "port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
for p in (8080, 8081):
    s = http.server.ThreadingHTTPServer(("127.0.0.1", p), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// GET `path` on `s` (kept open) to `port`; the app's (peer, port).
fn get_on(s: &mut UnixStream, path: &str, port: u16) -> (u64, u64) {
    let p = port.to_string();
    s.write_all(request(path, &[("X-aws-proxy-port", &p)]).as_bytes())
        .unwrap();
    let rep = read_reply(&mut BufReader::new(&*s)).unwrap();
    assert_eq!(rep.status, 200, "{}", String::from_utf8_lossy(&rep.body));
    let v = rep.json();
    (v["peer"].as_u64().unwrap(), v["port"].as_u64().unwrap())
}

#[test]
fn one_app_connection_per_client_connection_and_port_reused_across_requests() {
    require_root!();
    let dir = scratch("upstreams");
    let cfg = json!({
        "imageName": "ingress-test",
        "command": ["/usr/bin/python3", "-c", CONNECTIONS_APP],
    });
    let g = Guest::start_with(
        dir,
        &cfg,
        &GuestOpts {
            ingress: true,
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    while get(&g, "/", &[]).0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20), "app never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut a = ingress(&g);
    let (p1, port) = get_on(&mut a, "/", 8080);
    assert_eq!(port, 8080);
    assert_eq!(
        get_on(&mut a, "/", 8080).0,
        p1,
        "the same app connection again"
    );
    assert_eq!(get_on(&mut a, "/", 8080).0, p1);
    // Another port: the kept one is closed (one app connection per client connection,
    // as the descriptor budget counts), a new one opens and is kept in turn.
    let (q1, port) = get_on(&mut a, "/", 8081);
    assert_eq!(port, 8081);
    assert_ne!(q1, p1);
    assert_eq!(get_on(&mut a, "/", 8081).0, q1);
    let (p2, _) = get_on(&mut a, "/", 8080);
    assert_ne!(p2, p1);
    // Another client connection never shares it.
    let mut b = ingress(&g);
    let (p3, _) = get_on(&mut b, "/", 8080);
    assert_ne!(p3, p2);
    assert_eq!(get_on(&mut a, "/", 8080).0, p2);
    // Idle past a second, the agent closes it; the next request opens a new one.
    std::thread::sleep(Duration::from_millis(1500));
    let (p4, _) = get_on(&mut a, "/", 8080);
    assert!(p4 != p2 && p4 != p3, "{p4} after {p2}, {p3}");
    assert_eq!(get_on(&mut a, "/", 8080).0, p4);
}
