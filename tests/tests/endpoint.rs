//! `microvm-local serve` driven as users drive the platform: the real AWS CLI (pinned
//! in the test venv) and boto3, with `--endpoint-url`, against real guests (the
//! images `make test` builds, restored from their snapshots under QEMU).

use microvm_local::vm::Arch;
use microvm_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY_ID: &str = "AKIDLOCALTEST";
const SECRET: &str = "local/secret+key";
/// Every MicroVM of the example image logs to this group (the agent's default).
const GROUP: &str = "/aws/lambda-microvms/example-recorder";

fn venv(bin: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/bin")
        .join(bin);
    p.is_file().then_some(p)
}

/// The images this suite runs, and the AWS CLI; None (after [`skip`]) without them.
fn ready() -> Option<PathBuf> {
    built_image("build/example", Arch::X86_64)?;
    built_image("build/test", Arch::X86_64)?;
    if venv("aws").is_none() {
        skip("the AWS CLI is not in .venv: run `make setup`");
        return None;
    }
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build");
    if ["python", "node"]
        .iter()
        .any(|b| !build.join("base").join(b).join("base.json").is_file())
    {
        skip("the Debian bases are not built: run `make base-python base-node`");
        return None;
    }
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"))
}

/// A `serve` on a free port, stopped (SIGTERM: it terminates its MicroVMs) on drop.
struct Endpoint {
    child: Child,
    url: String,
    /// The port the guests' egress reaches: CloudWatch Logs alone.
    logs_url: String,
    state: PathBuf,
}

impl Endpoint {
    fn start(images: &Path, name: &str, extra: &[&str]) -> Endpoint {
        use std::os::unix::process::CommandExt;
        let state = scratch(name);
        let mut cmd = Command::new(runner());
        cmd.arg("serve")
            .arg("--images")
            .arg(images)
            .args(["--port", "0", "--state-dir"])
            .arg(&state)
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_REGION", "us-east-1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(state.join("serve.err")).unwrap());
        // SAFETY: prctl is async-signal-safe; nothing of the parent is touched.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start microvm-local serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("serve's first line {line:?}: {e}"));
        Endpoint {
            child,
            url: v["endpoint"].as_str().unwrap().to_string(),
            logs_url: format!("http://127.0.0.1:{}", v["logsPort"].as_u64().unwrap()),
            state,
        }
    }

    /// The AWS CLI against this endpoint: (exit code, stdout, stderr).
    fn aws_with(&self, secret: &str, args: &[&str]) -> (i32, String, String) {
        self.aws_at(&self.url, secret, args)
    }

    fn aws_at(&self, url: &str, secret: &str, args: &[&str]) -> (i32, String, String) {
        let o = Command::new(venv("aws").unwrap())
            .args(["--endpoint-url", url, "--output", "json"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("run aws");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    }

    fn aws(&self, args: &[&str]) -> (i32, String, String) {
        self.aws_with(SECRET, args)
    }

    /// A call that must succeed: its JSON output.
    fn ok(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.aws(args);
        assert_eq!(code, 0, "aws {args:?}: {err}");
        if out.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {out}"))
    }

    /// A call that must fail with the service error `kind`: its stderr. (The CLI v1
    /// exits 255 on a service error; v2 would exit 254.)
    fn fails(&self, kind: &str, args: &[&str]) -> String {
        let (code, _, err) = self.aws(args);
        assert_eq!(code, 255, "aws {args:?} should fail with {kind}: {err}");
        assert!(
            err.contains(&format!("An error occurred ({kind})")),
            "aws {args:?}: {err}"
        );
        err
    }

    fn get(&self, id: &str) -> Value {
        self.ok(&["lambda-microvms", "get-microvm", "--microvm-identifier", id])
    }

    fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(id);
            if v["state"] == state {
                return v;
            }
            assert!(
                t0.elapsed() < within,
                "{id} never {state}: {v}\n{}",
                self.runner_log(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn runner_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.state.join("microvms").join(id).join("runner.log"))
            .unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Value {
        let mut all = vec!["lambda-microvms", "run-microvm"];
        all.extend_from_slice(args);
        let v = self.ok(&all);
        assert_eq!(v["state"], "RUNNING", "{v}");
        v
    }

    fn token(&self, id: &str, minutes: &str, ports: &str) -> String {
        let v = self.ok(&[
            "lambda-microvms",
            "create-microvm-auth-token",
            "--microvm-identifier",
            id,
            "--expiration-in-minutes",
            minutes,
            "--allowed-ports",
            ports,
        ]);
        v["authToken"]["X-aws-proxy-auth"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The messages of a MicroVM's log stream, read back with `aws logs`, once
    /// `want` is among them.
    fn log_lines(&self, id: &str, want: &str) -> Vec<String> {
        self.log_lines_in(GROUP, id, want)
    }

    fn log_lines_in(&self, group: &str, id: &str, want: &str) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let (code, out, _) = self.aws(&[
                "logs",
                "get-log-events",
                "--log-group-name",
                group,
                "--log-stream-name",
                id,
                "--start-from-head",
            ]);
            if code == 0 {
                let v: Value = serde_json::from_str(&out).unwrap();
                let lines = texts(&v["events"], "message");
                if lines.iter().any(|l| l.contains(want)) {
                    return lines;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{want:?} never logged for {id}: {out}\n{}",
                self.runner_log(id)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(90) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to a MicroVM's endpoint: (status, headers, body).
fn http(endpoint: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, String::new(), e.to_string()),
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // An upgraded connection stays open: stop at the end of a 101's head.
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.starts_with(b"HTTP/1.1 101") && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The pids of QEMU processes started for MicroVM `id`.
fn qemu_of(id: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(id) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_cli_skeleton_matches_the_aws_clis() {
    let Some(aws) = venv("aws") else {
        return skip("the AWS CLI is not in .venv: run `make setup`");
    };
    let theirs = Command::new(aws)
        .args([
            "lambda-microvms",
            "run-microvm",
            "--generate-cli-skeleton",
            "input",
        ])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .unwrap();
    let ours = Command::new(runner())
        .args(["run-microvm", "--generate-cli-skeleton", "input"])
        .output()
        .unwrap();
    let theirs: Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
    assert_eq!(ours, theirs);
    // And the one-shot runner takes each of them.
    for k in theirs.as_object().unwrap().keys() {
        let flag = format!(
            "--{}",
            k.chars()
                .flat_map(|c| match c.is_ascii_uppercase() {
                    true => vec!['-', c.to_ascii_lowercase()],
                    false => vec![c],
                })
                .collect::<String>()
        );
        let o = Command::new(runner())
            .args(["run-microvm", &flag, "--help"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("Unknown options"),
            "{flag}"
        );
    }
}

#[test]
fn signatures_are_checked_unless_the_switch_says_otherwise() {
    let Some(images) = ready() else { return };
    let e = Endpoint::start(&images, "serve-sig", &[]);
    let (code, _, err) = e.aws_with("wrong", &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("(InvalidSignatureException)"), "{err}");
    let (code, _, err) = e.aws(&["--no-sign-request", "lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255, "{err}");
    assert!(
        err.contains("(MissingAuthenticationTokenException)"),
        "{err}"
    );
    assert_eq!(
        e.ok(&["lambda-microvms", "list-microvms"]),
        json!({"items": []})
    );
    let images_v = e.ok(&["lambda-microvms", "list-microvm-images"]);
    let names = texts(&images_v["items"], "name");
    assert!(
        names.iter().any(|n| n == "example") && names.iter().any(|n| n == "test"),
        "{images_v}"
    );
    drop(e);
    let any = Endpoint::start(&images, "serve-any", &["--accept-any-signature"]);
    let (code, out, err) = any.aws_with("wrong", &["lambda-microvms", "list-microvms"]);
    assert_eq!((code, out.contains("\"items\"")), (0, true), "{err}");
}

/// The platform's operations through the AWS CLI: run (payload byte-exact),
/// idempotency, get, list with pagination and filters, ingress tokens, suspend,
/// resume, terminate, the errors, and the application's lines read back with `aws logs`.
#[test]
fn the_aws_cli_drives_local_microvms() {
    let Some(images) = ready() else { return };
    let e = Endpoint::start(&images, "serve-cli", &["--test-token-minute-seconds", "2"]);
    let payload = "héllo \"world\" \\ {json} ✓ tab\there";
    let role = "arn:aws:iam::000000000000:role/local";
    let run_a = [
        "--image-identifier",
        "example",
        "--run-hook-payload",
        payload,
        "--execution-role-arn",
        role,
        "--client-token",
        "token-a",
    ];
    let a = e.run(&run_a);
    let id_a = a["microvmId"].as_str().unwrap().to_string();
    assert!(id_a.starts_with("mvm-"), "{a}");
    assert_eq!(
        a["imageArn"],
        "arn:aws:lambda:us-east-1:000000000000:microvm-image:example"
    );
    assert_eq!(
        (a["imageVersion"].as_str(), a["executionRoleArn"].as_str()),
        (Some("1"), Some(role))
    );
    assert_eq!(a["maximumDurationInSeconds"], 28800);
    let endpoint = a["endpoint"].as_str().unwrap().to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{a}");

    // The same client token and parameters: the same MicroVM; other parameters: a conflict.
    let again = e.ok(&[&["lambda-microvms", "run-microvm"][..], &run_a].concat());
    assert_eq!(again["microvmId"], id_a.as_str());
    e.fails(
        "ConflictException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "example",
            "--run-hook-payload",
            "other",
            "--client-token",
            "token-a",
        ],
    );

    let b = e.run(&[
        "--image-identifier",
        "arn:aws:lambda:us-east-1:000000000000:microvm-image:test",
    ]);
    let id_b = b["microvmId"].as_str().unwrap().to_string();
    let c = e.run(&["--image-identifier", "example", "--image-version", "1"]);
    let id_c = c["microvmId"].as_str().unwrap().to_string();

    // Pagination, one item a page: by hand with --max-results and --next-token, and
    // as the CLI does it by itself with --page-size.
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..4 {
        let mut args = vec!["lambda-microvms", "list-microvms", "--max-results", "1"];
        if let Some(t) = &next {
            args.extend_from_slice(&["--next-token", t]);
        }
        let page = e.ok(&args);
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{page}");
        ids.push(items[0]["microvmId"].as_str().unwrap().to_string());
        next = page["nextToken"].as_str().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    assert_eq!(ids, [id_a.clone(), id_b.clone(), id_c.clone()]);
    let all = e.ok(&["lambda-microvms", "list-microvms", "--page-size", "1"]);
    let auto = texts(&all["items"], "microvmId");
    assert_eq!(auto, [id_a.as_str(), id_b.as_str(), id_c.as_str()], "{all}");
    e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "list-microvms",
            "--max-results",
            "1",
            "--next-token",
            "forged",
        ],
    );
    e.fails(
        "ValidationException",
        &["lambda-microvms", "list-microvms", "--max-results", "51"],
    );
    // Filters: by image name or ARN, and by version.
    let only = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["lambda-microvms", "list-microvms"];
        all.extend_from_slice(args);
        texts(&e.ok(&all)["items"], "microvmId")
    };
    assert_eq!(only(&["--image-identifier", "test"]), vec![id_b.clone()]);
    assert_eq!(
        only(&[
            "--image-identifier",
            "arn:aws:lambda:us-east-1:000000000000:microvm-image:example"
        ]),
        [id_a.clone(), id_c.clone()]
    );
    assert_eq!(only(&["--image-version", "1"]).len(), 3);
    assert!(only(&["--image-version", "2"]).is_empty());

    // The managed images are the local Debian bases, paged like the rest.
    let managed = e.ok(&["lambda-microvms", "list-managed-microvm-images"]);
    let arns = texts(&managed["items"], "imageArn");
    assert_eq!(
        arns,
        [
            "arn:aws:lambda:us-east-1:aws:managed-microvm-image:node",
            "arn:aws:lambda:us-east-1:aws:managed-microvm-image:python"
        ],
        "{managed}"
    );
    assert!(managed["items"][0]["createdAt"].as_f64().unwrap() > 1.7e9);
    let first = e.ok(&[
        "lambda-microvms",
        "list-managed-microvm-images",
        "--max-results",
        "1",
    ]);
    assert_eq!(first["items"].as_array().unwrap().len(), 1, "{first}");
    assert!(first["nextToken"].is_string(), "{first}");

    // Ingress: nothing gets through without a valid token for the port.
    let token = e.token(&id_a, "30", "port=8080");
    let (status, _, body) = http(&endpoint, "/hello", &[]);
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = http(&endpoint, "/hello", &[("X-aws-proxy-auth", &token)]);
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (seen["path"].as_str(), seen["port"].as_u64()),
        (Some("/hello"), Some(8080))
    );
    assert!(
        !body.contains(&token),
        "the token reached the guest: {body}"
    );
    let (status, _, body) = http(
        &endpoint,
        "/",
        &[("X-aws-proxy-auth", &token), ("X-aws-proxy-port", "9000")],
    );
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            r#"{"message":"the auth token does not allow port 9000"}"#
        )
    );
    let (status, _, _) = http(&endpoint, "/", &[("X-aws-proxy-auth", "mva-forged")]);
    assert_eq!(status, 403);
    // A token of another MicroVM does not open this one.
    let token_c = e.token(&id_c, "30", "allPorts={}");
    assert_eq!(
        http(&endpoint, "/", &[("X-aws-proxy-auth", &token_c)]).0,
        403
    );
    // A token for one minute (two seconds in this test) expires.
    let short = e.token(&id_a, "1", "range={startPort=8000,endPort=8090}");
    assert_eq!(http(&endpoint, "/", &[("X-aws-proxy-auth", &short)]).0, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let (status, _, body) = http(&endpoint, "/", &[("X-aws-proxy-auth", &short)]);
    assert_eq!(
        (status, body.as_str()),
        (403, r#"{"message":"the auth token has expired"}"#)
    );
    // A WebSocket authenticates with its subprotocol, which stops at the proxy.
    let (status, head, _) = http(
        &endpoint,
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "Sec-WebSocket-Protocol",
                &format!("chat, lambda-microvms.authentication.{token}"),
            ),
        ],
    );
    assert_eq!(status, 101, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("x-echo-subprotocols: chat\r\n")
            || lower.ends_with("x-echo-subprotocols: chat"),
        "{head}"
    );

    // The port the proxy authorizes is the port the agent connects to: a WebSocket's
    // port subprotocol wins over the header (as in the agent), and a plain request's
    // port subprotocol means nothing.
    let ws_headers = |protocols: String| {
        vec![
            ("Upgrade", "websocket".to_string()),
            ("Connection", "Upgrade".to_string()),
            ("Sec-WebSocket-Version", "13".to_string()),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
            ("X-aws-proxy-port", "8080".to_string()),
            ("Sec-WebSocket-Protocol", protocols),
        ]
    };
    let h = ws_headers(format!(
        "lambda-microvms.port.9000, lambda-microvms.authentication.{token}"
    ));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = http(&endpoint, "/ws", &h);
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            r#"{"message":"the auth token does not allow port 9000"}"#
        )
    );
    let (status, _, body) = http(
        &endpoint,
        "/plain",
        &[
            ("X-aws-proxy-auth", &token),
            ("Sec-WebSocket-Protocol", "lambda-microvms.port.9000"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["port"], 8080, "{seen}");
    let only_9000 = e.token(&id_a, "30", "port=9000");
    let (status, _, _) = http(
        &endpoint,
        "/plain",
        &[
            ("X-aws-proxy-auth", &only_9000),
            ("Sec-WebSocket-Protocol", "lambda-microvms.port.9000"),
        ],
    );
    assert_eq!(
        status, 403,
        "a plain request's port subprotocol opens nothing"
    );

    // Suspend, a second suspend (conflict), resume; ingress works again.
    assert_eq!(
        e.ok(&[
            "lambda-microvms",
            "suspend-microvm",
            "--microvm-identifier",
            &id_a
        ]),
        Value::Null
    );
    assert_eq!(e.get(&id_a)["state"], "SUSPENDED");
    let err = e.fails(
        "ConflictException",
        &[
            "lambda-microvms",
            "suspend-microvm",
            "--microvm-identifier",
            &id_a,
        ],
    );
    assert!(
        err.contains("only a RUNNING MicroVM can be suspended; this one is SUSPENDED"),
        "{err}"
    );
    let (status, _, _) = http(&endpoint, "/", &[("X-aws-proxy-auth", &token)]);
    assert_eq!(
        status, 409,
        "a suspended MicroVM without auto-resume is not woken"
    );
    // Two resumes at once (two threads of one boto3 process, so that they overlap
    // the ~0.7 s a resume takes): both succeed, and the MicroVM is resumed once.
    let both = python(
        &e,
        r#"
import boto3, json, sys, threading
from botocore.config import Config
c = boto3.client("lambda-microvms", endpoint_url=sys.argv[1], region_name="us-east-1",
                 config=Config(retries={"max_attempts": 1}))
gate, out = threading.Barrier(2), []
def resume():
    gate.wait()
    try:
        c.resume_microvm(microvmIdentifier=sys.argv[2])
        out.append("ok")
    except Exception as e:
        out.append(str(e))
ts = [threading.Thread(target=resume) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(out))
"#,
        &[&id_a],
    );
    assert_eq!(both, json!(["ok", "ok"]));
    let after = e.get(&id_a);
    assert_eq!(after["state"], "RUNNING");
    assert!(after.get("stateReason").is_none(), "{after}");
    assert_eq!(
        e.runner_log(&id_a).matches("\"hook\":\"resume\"").count(),
        1,
        "{}",
        e.runner_log(&id_a)
    );
    e.fails(
        "ConflictException",
        &[
            "lambda-microvms",
            "resume-microvm",
            "--microvm-identifier",
            &id_a,
        ],
    );
    assert_eq!(
        http(&endpoint, "/again", &[("X-aws-proxy-auth", &token)]).0,
        200
    );

    // Errors the service finds, printed by the CLI as the service's.
    let err = e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "example",
            "--run-hook-payload",
            &"p".repeat(4097),
        ],
    );
    assert!(err.contains("Value at 'runHookPayload' failed to satisfy constraint: Member must have length less than or equal to 4096"), "{err}");
    let err = e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "example",
            "--maximum-duration-in-seconds",
            "28801",
        ],
    );
    assert!(err.contains("maximumDurationInSeconds"), "{err}");
    e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "create-microvm-auth-token",
            "--microvm-identifier",
            &id_a,
            "--expiration-in-minutes",
            "61",
            "--allowed-ports",
            "port=8080",
        ],
    );
    let err = e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "create-microvm-shell-auth-token",
            "--microvm-identifier",
            &id_a,
            "--expiration-in-minutes",
            "5",
        ],
    );
    assert!(err.contains("SHELL_INGRESS"), "{err}");
    e.fails(
        "ResourceNotFoundException",
        &[
            "lambda-microvms",
            "get-microvm",
            "--microvm-identifier",
            "mvm-00000000-0000-0000-0000-000000000000",
        ],
    );
    e.fails(
        "ResourceNotFoundException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "no-such-image",
        ],
    );
    e.fails(
        "ResourceNotFoundException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "example",
            "--image-version",
            "7",
        ],
    );

    // A crashed QEMU: the MicroVM is TERMINATED, and says why.
    let pids = qemu_of(&id_b);
    assert_eq!(pids.len(), 1, "one QEMU for {id_b}");
    // SAFETY: kill(2) of a QEMU this test's server started.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let gone = e.wait_state(&id_b, "TERMINATED", Duration::from_secs(30));
    assert!(
        gone["stateReason"]
            .as_str()
            .unwrap()
            .starts_with("The MicroVM stopped unexpectedly"),
        "{gone}"
    );

    // Terminate: TERMINATED, with when and why, and still listed.
    assert_eq!(
        e.ok(&[
            "lambda-microvms",
            "terminate-microvm",
            "--microvm-identifier",
            &id_a
        ]),
        Value::Null
    );
    let done = e.wait_state(&id_a, "TERMINATED", Duration::from_secs(60));
    assert_eq!(done["stateReason"], "Terminated by TerminateMicrovm");
    assert!(
        done["terminatedAt"].as_f64().unwrap() >= done["startedAt"].as_f64().unwrap(),
        "{done}"
    );
    assert_eq!(
        only(&["--image-identifier", "example"]),
        [id_a.clone(), id_c.clone()]
    );
    e.ok(&[
        "lambda-microvms",
        "terminate-microvm",
        "--microvm-identifier",
        &id_a,
    ]);
    e.fails(
        "ConflictException",
        &[
            "lambda-microvms",
            "suspend-microvm",
            "--microvm-identifier",
            &id_a,
        ],
    );
    // Its endpoint is closed.
    assert_eq!(http(&endpoint, "/", &[("X-aws-proxy-auth", &token)]).0, 0);

    // The application's lines, shipped by the agent to this server, read back.
    let lines = e.log_lines(&id_a, "\"hook\":\"terminate\"");
    let run = lines
        .iter()
        .filter_map(|l| l.strip_prefix("recorder: "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .find(|r| r["hook"] == "run")
        .unwrap_or_else(|| panic!("no run record in {lines:?}"));
    assert_eq!(run["runHookPayload"], payload);
    assert_eq!(run["microvmId"], id_a.as_str());
    let found = e.ok(&[
        "logs",
        "filter-log-events",
        "--log-group-name",
        GROUP,
        "--filter-pattern",
        "\"hook\":\"terminate\"",
    ]);
    assert!(
        found["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ev| ev["logStreamName"] == id_a.as_str()),
        "{found}"
    );

    // Nothing outlives the server: C is terminated when it stops.
    assert_eq!(qemu_of(&id_c).len(), 1);
    drop(e);
    assert!(
        qemu_of(&id_c).is_empty(),
        "QEMU of {id_c} outlived the server"
    );
}

/// A boto3 script run against the endpoint (its URL first in argv, then `args`),
/// with the test's keys and no local AWS configuration: its JSON output.
fn python(e: &Endpoint, script: &str, args: &[&str]) -> Value {
    let o = Command::new(venv("python").unwrap())
        .args(["-c", script, &e.url])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v
}

/// RunMicrovm through boto3 without its parameter validation: the answer.
fn boto_run(e: &Endpoint, params: &str) -> Value {
    let script = r#"
import boto3, json, sys
from botocore.config import Config
c = boto3.client("lambda-microvms", endpoint_url=sys.argv[1], region_name="us-east-1",
                 config=Config(parameter_validation=False))
r = c.run_microvm(**json.loads(sys.argv[2]))
r.pop("ResponseMetadata", None)
print(json.dumps(r, default=str))
"#;
    let v = python(e, script, &[params]);
    assert_eq!(v["state"], "RUNNING", "{v}");
    v
}

/// The idle policy and the maximum duration, carried out by the server; and boto3.
#[test]
fn the_server_carries_out_idle_policies_and_maximum_durations_and_boto3_drives_it() {
    let Some(images) = ready() else { return };
    let e = Endpoint::start(&images, "serve-policy", &["--test-min-idle-seconds", "2"]);
    let short = e.run(&[
        "--image-identifier",
        "example",
        "--maximum-duration-in-seconds",
        "6",
    ]);
    let short_id = short["microvmId"].as_str().unwrap().to_string();
    // botocore checks the idle minimum (60 s) before sending: these two go through
    // boto3 with its client-side validation off, to the server's test minimum.
    let napper = boto_run(
        &e,
        r#"{"imageIdentifier": "example", "idlePolicy": {"maxIdleDurationSeconds": 2, "suspendedDurationSeconds": 3600, "autoResumeEnabled": true}}"#,
    );
    let napper_id = napper["microvmId"].as_str().unwrap().to_string();
    let sleeper = boto_run(
        &e,
        r#"{"imageIdentifier": "example", "idlePolicy": {"maxIdleDurationSeconds": 2, "suspendedDurationSeconds": 1, "autoResumeEnabled": false}}"#,
    );
    let sleeper_id = sleeper["microvmId"].as_str().unwrap().to_string();

    // Idle: suspended by itself; a request with a token wakes it (autoResumeEnabled).
    e.wait_state(&napper_id, "SUSPENDED", Duration::from_secs(60));
    let token = e.token(&napper_id, "10", "port=8080");
    let (status, _, body) = http(
        napper["endpoint"].as_str().unwrap(),
        "/wake",
        &[("X-aws-proxy-auth", &token)],
    );
    assert_eq!(status, 200, "{body}");
    e.wait_state(&napper_id, "RUNNING", Duration::from_secs(10));
    // Idle, then suspended longer than suspendedDurationSeconds: terminated.
    let gone = e.wait_state(&sleeper_id, "TERMINATED", Duration::from_secs(90));
    assert_eq!(
        gone["stateReason"], "Suspended for the idle policy's suspendedDurationSeconds",
        "{gone}"
    );
    let ended = e.wait_state(&short_id, "TERMINATED", Duration::from_secs(60));
    assert_eq!(
        ended["stateReason"],
        "The maximum duration of 6 seconds was reached"
    );

    // boto3, the same endpoint: run, get, paginate, conflict, not found, terminate.
    let script = r#"
import boto3, json, sys, botocore
url = sys.argv[1]
c = boto3.client("lambda-microvms", endpoint_url=url, region_name="us-east-1")
out = {}
r = c.run_microvm(imageIdentifier="example", runHookPayload="from boto3", clientToken="boto-1")
out["run"] = r["state"]
again = c.run_microvm(imageIdentifier="example", runHookPayload="from boto3", clientToken="boto-1")
out["same"] = again["microvmId"] == r["microvmId"]
out["get"] = c.get_microvm(microvmIdentifier=r["microvmId"])["state"]
ids = [i["microvmId"] for p in c.get_paginator("list_microvms").paginate(PaginationConfig={"PageSize": 1}) for i in p["items"]]
out["listed"] = len(ids)
out["unique"] = len(set(ids))
def code(f):
    try:
        f()
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]]
out["resume_running"] = code(lambda: c.resume_microvm(microvmIdentifier=r["microvmId"]))
out["missing"] = code(lambda: c.get_microvm(microvmIdentifier="mvm-missing"))
out["long_payload"] = code(lambda: c.run_microvm(imageIdentifier="example", runHookPayload="x" * 4097))
t = c.create_microvm_auth_token(microvmIdentifier=r["microvmId"], expirationInMinutes=5, allowedPorts=[{"allPorts": {}}])
out["token_keys"] = sorted(t["authToken"].keys())
# An ARN in the path (percent-encoded, signed twice-encoded) under signature checks.
arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:example"
out["image"] = c.get_microvm_image(imageIdentifier=arn)["imageArn"]
# A client set to another region is refused, not answered with this one's ARNs.
west = boto3.client("lambda-microvms", endpoint_url=url, region_name="us-west-2")
out["other_region"] = code(lambda: west.list_microvms())
c.terminate_microvm(microvmIdentifier=r["microvmId"])
out["after"] = c.get_microvm(microvmIdentifier=r["microvmId"])["state"]
print(json.dumps(out))
"#;
    let v = python(&e, script, &[]);
    assert_eq!(v["run"], "RUNNING", "{v}");
    assert_eq!(v["same"], true, "{v}");
    assert_eq!(v["get"], "RUNNING", "{v}");
    assert_eq!(
        (v["listed"].as_u64(), v["unique"].as_u64()),
        (Some(4), Some(4)),
        "{v}"
    );
    assert_eq!(v["resume_running"], json!(["ConflictException", 409]));
    assert_eq!(v["missing"], json!(["ResourceNotFoundException", 404]));
    assert_eq!(v["long_payload"], json!(["ValidationException", 400]));
    assert_eq!(v["token_keys"], json!(["X-aws-proxy-auth"]));
    assert_eq!(
        v["image"],
        "arn:aws:lambda:us-east-1:000000000000:microvm-image:example"
    );
    assert_eq!(v["other_region"], json!(["InvalidSignatureException", 403]));
    assert!(
        v["after"] == "TERMINATING" || v["after"] == "TERMINATED",
        "{v}"
    );
}

/// `microvm-local exec` or `shell` against a MicroVM of the endpoint, through its
/// endpoint URL and `token`: (exit code, stdout, stderr).
fn ws_exec(endpoint: &str, token: &str, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(runner())
        .args(["exec", "--endpoint-url", endpoint, "--auth-token", token])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

type Ws = tungstenite::WebSocket<std::net::TcpStream>;

/// A WebSocket to a MicroVM's endpoint offering `protocols`: the socket, or the
/// refusal's (status, body).
fn ws_open(endpoint: &str, protocols: &str) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let addr = endpoint.trim_start_matches("http://");
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    match tungstenite::client(req, tcp) {
        Ok((ws, resp)) => {
            assert_eq!(
                resp.headers()["sec-websocket-protocol"],
                "lambda-microvms.shell"
            );
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err((
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string(),
        )),
        Err(e) => panic!("{e}"),
    }
}

fn shell_protocols(token: &str) -> String {
    format!("lambda-microvms.shell, lambda-microvms.authentication.{token}")
}

/// The next message that is not a ping or pong.
fn ws_next(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
            Ok(m) => return m,
            Err(e) => panic!("reading the shell's WebSocket: {e}"),
        }
    }
}

/// The close the endpoint sends: (code, reason).
fn ws_closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws_next(ws) {
            tungstenite::Message::Close(Some(f)) => return (f.code.into(), f.reason.to_string()),
            tungstenite::Message::Close(None) => return (1005, String::new()),
            _ => {}
        }
    }
}

/// A started command on the shell's WebSocket: the socket and the pid.
fn ws_started(endpoint: &str, token: &str, command: &[&str]) -> (Ws, i64) {
    let mut ws = ws_open(endpoint, &shell_protocols(token)).unwrap();
    ws.send(tungstenite::Message::text(
        json!({ "command": command }).to_string(),
    ))
    .unwrap();
    let first = match ws_next(&mut ws) {
        tungstenite::Message::Text(t) => serde_json::from_str::<Value>(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    let pid = first["pid"].as_i64().unwrap_or_else(|| panic!("{first}"));
    (ws, pid)
}

#[test]
fn the_shell_token_opens_the_terminal_over_a_websocket() {
    use microvm_protocol::exec::{frame, Kind};
    let Some(images) = ready() else { return };
    let e = Endpoint::start(
        &images,
        "serve-shell",
        &["--test-token-minute-seconds", "4", "--max-microvms", "1"],
    );
    let v = e.run(&[
        "--image-identifier",
        "example",
        "--ingress-network-connectors",
        "SHELL_INGRESS",
    ]);
    // One at most here: a second is over the quota.
    let err = e.fails(
        "ServiceQuotaExceededException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "example",
        ],
    );
    assert!(err.contains("serve --max-microvms 1"), "{err}");
    // The port the guests' egress reaches serves CloudWatch Logs and nothing else:
    // an application cannot drive the MicroVMs, even with the server's keys.
    let (code, _, err) = e.aws_at(&e.logs_url, SECRET, &["lambda-microvms", "list-microvms"]);
    assert_eq!(code, 255);
    assert!(
        err.contains("An error occurred (AccessDeniedException)")
            && err.contains("this port serves CloudWatch Logs only"),
        "{err}"
    );
    let (code, out, err) = e.aws_at(&e.logs_url, SECRET, &["logs", "describe-log-groups"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("logGroups"), "{out}");
    let id = v["microvmId"].as_str().unwrap().to_string();
    let endpoint = v["endpoint"].as_str().unwrap().to_string();
    let shell_token = |minutes: &str| {
        e.ok(&[
            "lambda-microvms",
            "create-microvm-shell-auth-token",
            "--microvm-identifier",
            &id,
            "--expiration-in-minutes",
            minutes,
        ])["authToken"]["X-aws-proxy-auth"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Sixty "minutes" of four seconds: enough for the whole test on a slow machine.
    let token = shell_token("60");

    // A command through the WebSocket: stdin in (far more than every buffer on the
    // way holds, so both directions must flow at once), stdout and stderr out
    // byte-exact, the exit code the runner's.
    let input: Vec<u8> = (0..16_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (code, out, err) = ws_exec(
        &endpoint,
        &token,
        &["--", "sh", "-c", "cat; echo oops >&2; exit 7"],
        &input,
    );
    assert_eq!(code, 7, "{err}");
    assert!(out == input, "stdout differs: {} bytes", out.len());
    assert_eq!(err, "oops\n");
    // The agent's refusal reaches the client as it would locally.
    let (code, _, err) = ws_exec(&endpoint, &token, &["--", "no-such-command"], b"");
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-command"), "{err}");

    // The terminal, as a person uses it.
    let shell = format!(
        "{} shell --endpoint-url {endpoint} --auth-token {token}; echo shell-exit=$?; sleep 60",
        runner().display()
    );
    in_tmux(&shell, terminal_session).unwrap_or_else(|p| std::panic::resume_unwind(p));

    // Only a valid shell token opens it, refused before the guest.
    let ingress = e.token(&id, "30", "allPorts={}");
    for (protocols, status, why) in [
        (
            "lambda-microvms.shell".to_string(),
            401,
            "missing X-aws-proxy-auth",
        ),
        (
            shell_protocols(&ingress),
            403,
            "the auth token is not valid for this MicroVM",
        ),
        (
            shell_protocols("mvs-forged"),
            403,
            "the auth token is not valid for this MicroVM",
        ),
    ] {
        let (got, body) = ws_open(&endpoint, &protocols).map(|_| ()).unwrap_err();
        assert_eq!(got, status, "{protocols}: {body}");
        assert!(body.contains(why), "{protocols}: {body}");
    }
    let (code, _, err) = ws_exec(&endpoint, &ingress, &["--", "true"], b"");
    assert_eq!(code, 255);
    assert!(
        err.contains("the auth token is not valid for this MicroVM"),
        "{err}"
    );
    // Nor does the shell token open the application's ports.
    let (status, _, body) = http(&endpoint, "/", &[("X-aws-proxy-auth", &token)]);
    assert_eq!(status, 403, "{body}");
    // A shell token expires like any other (a minute is four seconds here).
    let short = shell_token("1");
    assert_eq!(ws_exec(&endpoint, &short, &["--", "true"], b"").0, 0);
    std::thread::sleep(Duration::from_millis(4500));
    let (code, _, err) = ws_exec(&endpoint, &short, &["--", "true"], b"");
    assert_eq!(code, 255);
    assert!(err.contains("the auth token has expired"), "{err}");

    // Messages the protocol does not allow end the session with 1008 and why.
    let mut ws = ws_open(&endpoint, &shell_protocols(&token)).unwrap();
    ws.send(tungstenite::Message::binary(frame(Kind::Stdin, b"x")))
        .unwrap();
    assert_eq!(
        ws_closed(&mut ws),
        (
            1008,
            "the first message must be text: an exec request".into()
        )
    );
    let mut ws = ws_open(&endpoint, &shell_protocols(&token)).unwrap();
    ws.send(tungstenite::Message::text("{\"command\": 5}"))
        .unwrap();
    let (code, reason) = ws_closed(&mut ws);
    assert_eq!(code, 1008);
    assert!(
        reason.starts_with("the first message is not an exec request"),
        "{reason}"
    );
    let (mut ws, _) = ws_started(&endpoint, &token, &["cat"]);
    ws.send(tungstenite::Message::binary(frame(Kind::Stdout, b"x")))
        .unwrap();
    assert_eq!(
        ws_closed(&mut ws),
        (1008, "a Stdout frame does not go this way".into())
    );
    let (mut ws, _) = ws_started(&endpoint, &token, &["cat"]);
    let mut two = frame(Kind::Stdin, b"a");
    two.extend(frame(Kind::Stdin, b"b"));
    ws.send(tungstenite::Message::binary(two)).unwrap();
    let (code, reason) = ws_closed(&mut ws);
    assert_eq!(code, 1008);
    assert!(reason.contains("one whole frame"), "{reason}");
    let (mut ws, _) = ws_started(&endpoint, &token, &["cat"]);
    ws.send(tungstenite::Message::binary(vec![0u8; 70_000]))
        .unwrap();
    assert_eq!(ws_closed(&mut ws).0, 1009, "a message over one frame");
    // An echo through the raw protocol, ending with the exit frame and a 1000.
    let (mut ws, _) = ws_started(&endpoint, &token, &["cat"]);
    ws.send(tungstenite::Message::binary(frame(Kind::Stdin, b"ping")))
        .unwrap();
    ws.send(tungstenite::Message::binary(frame(Kind::Stdin, b"")))
        .unwrap();
    let mut echoed = Vec::new();
    loop {
        match ws_next(&mut ws) {
            tungstenite::Message::Binary(b) if b[0] == Kind::Stdout as u8 => {
                echoed.extend_from_slice(&b[5..])
            }
            tungstenite::Message::Binary(b) if b[0] == Kind::Exit as u8 => {
                let exit: Value = serde_json::from_slice(&b[5..]).unwrap();
                assert_eq!(exit["exitCode"], 0, "{exit}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(echoed, b"ping");
    assert_eq!(ws_closed(&mut ws), (1000, String::new()));

    // The client leaving ends the command: the agent kills its process group.
    let (ws, pid) = ws_started(&endpoint, &token, &["sleep", "300"]);
    let alive = |pid: i64| {
        ws_exec(
            &endpoint,
            &token,
            &["--", "sh", "-c", &format!("kill -0 {pid} 2>/dev/null")],
            b"",
        )
        .0 == 0
    };
    assert!(alive(pid));
    drop(ws);
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{pid} outlived its WebSocket"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A suspended MicroVM's shell waits for ResumeMicrovm.
    e.ok(&[
        "lambda-microvms",
        "suspend-microvm",
        "--microvm-identifier",
        &id,
    ]);
    let (code, _, err) = ws_exec(&endpoint, &token, &["--", "true"], b"");
    assert_eq!(code, 255);
    assert!(err.contains("the MicroVM is SUSPENDED"), "{err}");
    e.ok(&[
        "lambda-microvms",
        "resume-microvm",
        "--microvm-identifier",
        &id,
    ]);
    let (code, out, err) = ws_exec(&endpoint, &token, &["--", "echo", "back"], b"");
    assert_eq!((code, out.as_slice()), (0, &b"back\n"[..]), "{err}");
}

/// CreateMicrovmImage as image authors use it: the example Python application (a
/// .zip with its image.json) on the local Python base, its build in turn with another,
/// a failed build kept with its reason, the build's record, and a MicroVM of the new
/// image that receives its payload, serves on the port the request's environment
/// gave it and logs to the image's group.
#[test]
fn create_microvm_image_builds_an_application_from_a_file_artifact() {
    let Some(build) = ready() else { return };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // A directory of images of its own (the bases linked in): what the endpoint
    // builds lands there.
    let images = scratch("serve-build-images");
    std::os::unix::fs::symlink(build.join("base"), images.join("base")).unwrap();
    let builder = repo.join("rootfs/image.sh");
    let builder = builder.to_str().unwrap();
    let e = Endpoint::start(&images, "serve-build", &["--image-builder", builder]);
    let zip = e.state.join("app.zip");
    let app = repo.join("examples/python-app");
    let made = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .args(["app.py", "image.json"])
        .current_dir(&app)
        .status()
        .unwrap();
    assert!(made.success());
    let broken = e.state.join("broken.zip");
    std::fs::write(&broken, "not a zip at all").unwrap();
    let uri = |p: &Path| format!("uri=file://{}", p.display());
    let base = "arn:aws:lambda:us-east-1:aws:managed-microvm-image:python";
    let role = "arn:aws:iam::123456789012:role/build";
    let create = |name: &str, code: &str, extra: &[&str]| {
        let mut a = vec![
            "lambda-microvms",
            "create-microvm-image",
            "--name",
            name,
            "--base-image-arn",
            base,
            "--build-role-arn",
            role,
            "--code-artifact",
            code,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let code = uri(&zip);
    let first = create(
        "hello-py",
        &code,
        &[
            // STARTUP_SECONDS holds the example's /ready at 503 that long: the build
            // is surely under way while the next one is asked for.
            "--environment-variables",
            "PORT=8085,STARTUP_SECONDS=10",
            // A part of the hooks: merged into the artifact's, which enable /run.
            "--hooks",
            "microvmHooks={runTimeoutInSeconds=10}",
            "--description",
            "the example",
            "--client-token",
            "tok-1",
        ],
    );
    let v = e.ok(&strs(&first));
    let arn = "arn:aws:lambda:us-east-1:000000000000:microvm-image:hello-py";
    assert_eq!(v["imageArn"], arn, "{v}");
    assert_eq!(v["state"], "CREATING", "{v}");
    assert_eq!(v["imageVersion"], "1");
    assert_eq!(
        v["environmentVariables"],
        json!({"PORT": "8085", "STARTUP_SECONDS": "10"})
    );
    assert_eq!(v["codeArtifact"]["uri"], code.trim_start_matches("uri="));
    // A second build waits for the first (one at a time).
    let second = e.ok(&strs(&create("broken", &uri(&broken), &[])));
    assert_eq!(second["state"], "CREATING");
    let builds = |name: &str| image_builds(&e, name);
    let pending = builds("broken");
    assert_eq!(
        pending[0]["buildState"],
        "PENDING",
        "{pending} while {}",
        builds("hello-py")
    );
    assert_eq!(
        (v["baseImageArn"].as_str(), v["buildRoleArn"].as_str()),
        (Some(base), Some(role))
    );
    // The same token: the same image; with other parameters: a conflict.
    let again = e.ok(&strs(&first));
    assert_eq!(
        (&again["imageArn"], &again["createdAt"]),
        (&v["imageArn"], &v["createdAt"])
    );
    let mut other = first.clone();
    let at = other.len() - 3;
    other[at] = "another".into();
    e.fails("ConflictException", &strs(&other));
    // The name is taken while it builds; a MicroVM cannot run from it yet.
    e.fails("ConflictException", &strs(&create("hello-py", &code, &[])));
    e.fails(
        "ConflictException",
        &[
            "lambda-microvms",
            "run-microvm",
            "--image-identifier",
            "hello-py",
        ],
    );
    // Requests the service refuses, each with its error.
    let err = e.fails("ValidationException", &strs(&create("a.b", &code, &[])));
    assert!(
        err.contains("Value at 'name' failed to satisfy constraint"),
        "{err}"
    );
    let err = e.fails(
        "ValidationException",
        &strs(&create("s3", "uri=s3://bucket/app.zip", &[])),
    );
    assert!(err.contains("file:///ABSOLUTE/PATH"), "{err}");
    let missing = uri(&e.state.join("missing.zip"));
    e.fails("ValidationException", &strs(&create("gone", &missing, &[])));
    let arm = create(
        "arm",
        &code,
        &["--cpu-configurations", "architecture=ARM_64"],
    );
    let err = e.fails("ValidationException", &strs(&arm));
    assert!(err.contains("x86_64 only"), "{err}");
    let mut ruby = create("ruby", &code, &[]);
    ruby[5] = "arn:aws:lambda:us-east-1:aws:managed-microvm-image:ruby".into();
    e.fails("ResourceNotFoundException", &strs(&ruby));
    let hooks = create(
        "late",
        &code,
        &["--hooks", "microvmHooks={runTimeoutInSeconds=61}"],
    );
    let err = e.fails("ValidationException", &strs(&hooks));
    assert!(
        err.contains("hooks.microvmHooks.runTimeoutInSeconds"),
        "{err}"
    );
    let err = e.fails(
        "ValidationException",
        &[
            "lambda-microvms",
            "list-microvm-image-builds",
            "--image-identifier",
            "hello-py",
            "--image-version",
            "1",
            "--architecture",
            "RISCV",
        ],
    );
    assert!(err.contains("[ARM_64, X86_64]"), "{err}");
    // The second build, once the first is done, fails: not a zip.
    let image = |name: &str| {
        e.ok(&[
            "lambda-microvms",
            "get-microvm-image",
            "--image-identifier",
            name,
        ])
    };
    let t0 = Instant::now();
    let built = loop {
        let v = image("hello-py");
        if v["state"] != "CREATING" {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "never built: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = e.state.join("builds/hello-py/build.log");
    assert_eq!(
        built["state"],
        "CREATED",
        "{built}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(built["latestActiveImageVersion"], "1");
    let failed = loop {
        let v = image("broken");
        if v["state"] != "CREATING" {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(360), "never failed: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(failed["state"], "CREATE_FAILED", "{failed}");
    assert_eq!(failed["latestFailedImageVersion"], "1");
    assert!(failed.get("latestActiveImageVersion").is_none(), "{failed}");
    let version = |name: &str| {
        e.ok(&[
            "lambda-microvms",
            "get-microvm-image-version",
            "--image-identifier",
            name,
            "--image-version",
            "1",
        ])
    };
    let v = version("broken");
    assert_eq!(
        (v["state"].as_str(), v["status"].as_str()),
        (Some("FAILED"), Some("INACTIVE"))
    );
    assert!(
        v["stateReason"].as_str().unwrap().contains("not a zip"),
        "{v}"
    );
    let b = builds("broken");
    assert_eq!(b[0]["buildState"], "FAILED");
    assert_eq!(b[0]["stateReason"], v["stateReason"]);
    // Nothing half-made is left among the images.
    let mut names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["base", "hello-py"]);
    let listed = e.ok(&["lambda-microvms", "list-microvm-images"]);
    let states: Vec<(String, String)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().into(),
                i["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("broken".into(), "CREATE_FAILED".into()),
            ("hello-py".into(), "CREATED".into())
        ]
    );

    // The build's record: what the snapshot and the code take.
    let v = version("hello-py");
    assert_eq!(
        (v["state"].as_str(), v["status"].as_str()),
        (Some("SUCCESSFUL"), Some("ACTIVE"))
    );
    assert_eq!(v["description"], "the example");
    // What the image runs with: the artifact's config under the request's members.
    assert_eq!(
        v["environmentVariables"],
        json!({"PORT": "8085", "STARTUP_SECONDS": "10", "PYTHONUNBUFFERED": "1"})
    );
    assert_eq!(v["hooks"]["port"], 9000);
    assert_eq!(v["hooks"]["microvmHooks"]["runTimeoutInSeconds"], 10, "{v}");
    assert_eq!(v["hooks"]["microvmHooks"]["run"], "ENABLED", "{v}");
    assert_eq!(v["resources"], json!([{"minimumMemoryInMiB": 256}]));
    assert_eq!(v["cpuConfigurations"], json!([{"architecture": "X86_64"}]));
    let b = builds("hello-py");
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(
        (&b[0]["buildState"], &b[0]["architecture"], &b[0]["chipset"]),
        (&json!("SUCCESSFUL"), &json!("X86_64"), &json!("INTEL"))
    );
    let id = b[0]["buildId"].as_str().unwrap();
    let got = e.ok(&[
        "lambda-microvms",
        "get-microvm-image-build",
        "--image-identifier",
        arn,
        "--image-version",
        "1",
        "--build-id",
        id,
    ]);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(images.join("hello-py/manifest.json")).unwrap(),
    )
    .unwrap();
    let made = &got["snapshotBuild"];
    assert_eq!(
        made["memorySnapshotSizeInBytes"],
        manifest["snapshot"]["memorySnapshotSizeInBytes"]
    );
    assert_eq!(
        made["diskSnapshotSizeInBytes"],
        manifest["snapshot"]["diskSnapshotSizeInBytes"]
    );
    let app_py = std::fs::metadata(app.join("app.py")).unwrap().len();
    assert!(
        made["codeInstallSizeInBytes"].as_u64().unwrap() > app_py,
        "{got}"
    );
    assert!(
        made["memorySnapshotSizeInBytes"].as_u64().unwrap() > 1 << 20,
        "{got}"
    );
    e.fails(
        "ResourceNotFoundException",
        &[
            "lambda-microvms",
            "get-microvm-image-build",
            "--image-identifier",
            "hello-py",
            "--image-version",
            "1",
            "--build-id",
            "00000000-0000-0000-0000-000000000000",
        ],
    );
    let arm_builds = e.ok(&[
        "lambda-microvms",
        "list-microvm-image-builds",
        "--image-identifier",
        "hello-py",
        "--image-version",
        "1",
        "--architecture",
        "ARM_64",
    ]);
    assert_eq!(arm_builds["items"], json!([]));

    // A MicroVM of the new image: its payload byte-exact on the port the request's
    // environment gave the application, and its lines in the image's log group.
    let payload = "h\u{e9}llo {\"built\": true}";
    let vm = e.run(&[
        "--image-identifier",
        "hello-py",
        "--execution-role-arn",
        "arn:aws:iam::123456789012:role/app",
        "--run-hook-payload",
        payload,
    ]);
    let mid = vm["microvmId"].as_str().unwrap();
    let endpoint = vm["endpoint"].as_str().unwrap();
    let token = e.token(mid, "5", "port=8085");
    let (status, _, body) = http(
        endpoint,
        "/payload",
        &[("X-aws-proxy-auth", &token), ("X-aws-proxy-port", "8085")],
    );
    assert_eq!((status, body.as_str()), (200, payload));
    let lines = e.log_lines_in(
        "/aws/lambda-microvms/hello-py",
        mid,
        &format!("run microvmId={mid} payloadBytes={}", payload.len()),
    );
    assert!(!lines.is_empty());
    e.ok(&[
        "lambda-microvms",
        "terminate-microvm",
        "--microvm-identifier",
        mid,
    ]);
    e.wait_state(mid, "TERMINATED", Duration::from_secs(60));
    drop(e);

    // The image outlives the endpoint: another finds it with its request.
    let e = Endpoint::start(&images, "serve-build-again", &["--image-builder", builder]);
    let v = e.ok(&[
        "lambda-microvms",
        "get-microvm-image-version",
        "--image-identifier",
        "hello-py",
        "--image-version",
        "1",
    ]);
    assert_eq!(
        (v["description"].as_str(), v["state"].as_str()),
        (Some("the example"), Some("SUCCESSFUL"))
    );
    let b = e.ok(&[
        "lambda-microvms",
        "list-microvm-image-builds",
        "--image-identifier",
        "hello-py",
        "--image-version",
        "1",
    ]);
    assert_eq!(b["items"][0]["buildId"], id);

    // A directory artifact whose image.json names no command fails at once, saying so.
    let nameless = e.state.join("nameless");
    std::fs::create_dir_all(&nameless).unwrap();
    std::fs::write(nameless.join("image.json"), r#"{"user": "app"}"#).unwrap();
    e.ok(&strs(&create("nameless", &uri(&nameless), &[])));
    fn wait_build(e: &Endpoint, name: &str, until: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = image_builds(e, name);
            if v[0]["buildState"] != "PENDING" && (until.is_empty() || v[0]["buildState"] == until)
            {
                return v[0].clone();
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "{name}: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let b = wait_build(&e, "nameless", "FAILED");
    assert!(
        b["stateReason"]
            .as_str()
            .unwrap()
            .contains("no \"command\""),
        "{b}"
    );

    // An application that exits before it is ready fails its build in the guest:
    // the reason and the guest's console are kept, the half-made image is not.
    let exits = app_dir(
        &e.state,
        "exits",
        "import sys\nprint('exits: giving up', flush=True)\nsys.exit(3)\n",
        5,
    );
    e.ok(&strs(&create("exits", &uri(&exits), &[])));
    let b = wait_build(&e, "exits", "FAILED");
    let why = b["stateReason"].as_str().unwrap();
    assert!(why.contains("the image-build phase"), "{b}");
    let console = std::fs::read_to_string(e.state.join("builds/exits/serial.log")).unwrap();
    assert!(console.contains("exits: giving up"), "{console}");
    assert!(!images.join(".exits.partial").exists());
    assert!(!images.join("exits").exists());

    // The endpoint stopping mid-install stops the build: nothing outlives it.
    e.ok(&strs(&create("late-py", &uri(&app), &[])));
    wait_build(&e, "late-py", "IN_PROGRESS");
    std::thread::sleep(Duration::from_secs(1));
    drop(e);
    assert!(!images.join(".late-py.partial").exists());
    assert!(!images.join("late-py").exists());
    assert_eq!(build_processes(&["late-py"]), Vec::<String>::new());

    // Nor mid-hook: an application that takes /ready's call and never answers holds
    // it for up to its limit (here 600 s); the endpoint ends the guest instead.
    let e = Endpoint::start(&images, "serve-build-hang", &["--image-builder", builder]);
    let hang = app_dir(
        &e.state,
        "hang",
        "import socket\ns = socket.create_server(('0.0.0.0', 9000))\nprint('hang: listening', flush=True)\nheld = []\nwhile True:\n    held.append(s.accept())\n",
        600,
    );
    e.ok(&strs(&create("hang", &uri(&hang), &[])));
    let t0 = Instant::now();
    while !build_consoles()
        .iter()
        .any(|c| c.contains("hang: listening"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the hang build's guest never started its application: {:?}",
            wait_build(&e, "hang", "")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // /ready's call is in flight once the agent polls the port (every 100 ms).
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    drop(e);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the endpoint took {took:?} to stop with a build's hook in flight"
    );
    assert!(!images.join(".hang.partial").exists());
    assert!(!images.join("hang").exists());
    assert_eq!(
        build_processes(&[".hang.partial", "microvm-local/build-"]),
        Vec::<String>::new()
    );
}

/// ListMicrovmImageBuilds of an image's version 1: its items.
fn image_builds(e: &Endpoint, name: &str) -> Value {
    e.ok(&[
        "lambda-microvms",
        "list-microvm-image-builds",
        "--image-identifier",
        name,
        "--image-version",
        "1",
    ])["items"]
        .clone()
}

/// A directory code artifact: `app.py` and an image.json that runs it with its
/// /ready hook enabled (limited to `ready_limit` seconds), its lines on the console.
fn app_dir(state: &Path, name: &str, app: &str, ready_limit: u64) -> PathBuf {
    let dir = state.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.py"), app).unwrap();
    let config = json!({
        "command": ["/usr/bin/python3", "/app/app.py"],
        "logs": {"mirrorToConsole": true},
        "hooks": {"port": 9000, "microvmImageHooks": {
            "ready": "ENABLED", "readyTimeoutInSeconds": ready_limit}},
    });
    std::fs::write(dir.join("image.json"), config.to_string()).unwrap();
    dir
}

/// The consoles of the guests of image builds under way (their scratch directories).
fn build_consoles() -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(std::env::temp_dir().join("microvm-local")) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("build-"))
        .filter_map(|d| std::fs::read_to_string(d.path().join("serial.log")).ok())
        .collect()
}

/// The command lines of the processes that name any of `marks`.
fn build_processes(marks: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| marks.iter().any(|m| c.contains(m)))
        .collect()
}

/// The `field` of each member of a list (an answer's items or events).
fn texts(list: &Value, field: &str) -> Vec<String> {
    let Some(all) = list.as_array() else {
        panic!("not a list: {list}")
    };
    all.iter()
        .map(|i| i[field].as_str().unwrap().to_string())
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
