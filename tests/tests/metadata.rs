//! The metadata service (IMDSv2) and the application's SDK configuration, against the
//! real agent as PID 1 in namespaces of its own: a real AWS SDK (boto3, from the test
//! venv) run with the application's environment (read from /proc) in the guest's
//! network namespace, with no configuration of its own, finds the run's credentials and region, and the rotated
//! credentials after `POST /v1/credentials`; a raw client checks every status code of
//! the contract from inside the guest's network namespace (nsenter).

use microvm_tests::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn python() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if p.exists() {
        Some(p)
    } else {
        skip("the test venv is not installed (make setup)");
        None
    }
}

const SDK: &str = r#"
import boto3, json
s = boto3.Session()
c = s.get_credentials().get_frozen_credentials()
print(json.dumps({"key": c.access_key, "secret": c.secret_key, "token": c.token,
                  "region": s.region_name}))
"#;

/// A guest whose application just waits: the SDK runs beside it (below).
fn sdk_guest(name: &str, metadata: Value) -> Guest {
    let dir = scratch(name);
    std::fs::write(dir.join("sdk.py"), SDK).unwrap();
    let cfg = json!({
        "imageName": "metadata-test",
        "command": ["/bin/sleep", "1000"],
        "metadata": metadata,
    });
    Guest::start_with(dir, &cfg, &GuestOpts::default())
}

/// The application's environment, as the agent gave it (from /proc).
fn app_env(g: &Guest) -> Vec<(String, String)> {
    let agent = g.agent_pid();
    let app = g
        .processes(agent)
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|p| *p != agent)
        .expect("the application runs");
    std::fs::read(format!("/proc/{app}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Run boto3 with the application's environment in the guest's network namespace.
/// The venv may live under /tmp, which the agent mounts fresh for the application,
/// so the SDK runs from the host's mount view, and the application's config file is
/// read through the agent's root (`/proc/<agent>/root`), the same file.
fn sdk_run(g: &Guest, py: &Path) -> Value {
    let agent = g.agent_pid();
    let mut env = app_env(g);
    for (k, v) in env.iter_mut() {
        if k == "AWS_CONFIG_FILE" {
            *v = format!("/proc/{agent}/root{v}");
        }
        if k == "HOME" {
            // Keep the machine's own ~/.aws out of the SDK's view.
            *v = g.dir.display().to_string();
        }
    }
    in_guest_net(g, py, &[g.dir.join("sdk.py").as_os_str()], Some(env))
}

/// `python ARGS` in the guest's network namespace; its stdout as JSON.
fn in_guest_net(
    g: &Guest,
    py: &Path,
    args: &[&std::ffi::OsStr],
    env: Option<Vec<(String, String)>>,
) -> Value {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t")
        .arg(g.agent_pid().to_string())
        .arg("-n")
        .arg(py)
        .args(args);
    if let Some(env) = env {
        cmd.env_clear().envs(env);
    }
    let out = cmd.output().expect("nsenter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn creds(key: &str, expiration: &str) -> Value {
    json!({"accessKeyId": key, "secretAccessKey": format!("secret-{key}"),
           "sessionToken": format!("token-{key}"), "expiration": expiration})
}

#[test]
fn a_real_sdk_finds_credentials_and_region_with_no_configuration_and_sees_a_rotation() {
    require_root!();
    let Some(py) = python() else {
        return;
    };
    let g = sdk_guest("sdk", json!({}));
    let env = app_env(&g);
    assert!(
        env.contains(&("AWS_CONFIG_FILE".into(), "/run/microvm/aws/config".into())),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|(k, _)| k.starts_with("AWS_") && k != "AWS_CONFIG_FILE"),
        "no other AWS configuration: {env:?}"
    );
    let s = g.status();
    assert_eq!(s["metadata"]["endpoint"], "http://169.254.169.254", "{s:#}");
    let run = json!({"microvmId": "mvm-md", "region": "eu-west-3",
                     "credentials": creds("AKIDFIRST", "2099-01-01T00:00:00Z")});
    assert_eq!(g.hook("run", &run.to_string()).status, 200);
    let first = sdk_run(&g, &py);
    assert_eq!(
        first,
        json!({"key": "AKIDFIRST", "secret": "secret-AKIDFIRST",
               "token": "token-AKIDFIRST", "region": "eu-west-3"})
    );
    // Rotation: the next SDK session reads the new document.
    let r = g.request(
        "POST",
        microvm_protocol::paths::CREDENTIALS,
        creds("AKIDSECOND", "2099-01-01T00:00:00Z")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["credentials"]["accessKeyId"], "AKIDSECOND");
    assert_eq!(sdk_run(&g, &py)["key"], "AKIDSECOND");
    assert_eq!(g.status()["credentials"]["accessKeyId"], "AKIDSECOND");
    let md = g.status()["metadata"].clone();
    assert!(md["tokensIssued"].as_u64().unwrap() >= 2, "{md:#}");
    // Bad rotations are refused and change nothing.
    for bad in [
        &b"{}"[..],
        b"not json",
        br#"{"accessKeyId":"","secretAccessKey":"x"}"#,
    ] {
        let r = g.request("POST", microvm_protocol::paths::CREDENTIALS, bad);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(
        g.request("GET", microvm_protocol::paths::CREDENTIALS, b"")
            .status,
        405
    );
    assert_eq!(sdk_run(&g, &py)["key"], "AKIDSECOND");
}

/// Raw requests from inside the guest's network namespace; answers as JSON lines.
const RAW: &str = r#"
import http.client, json, sys, time
def ask(method, path, headers={}, body=None):
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    out = {"status": r.status, "body": r.read().decode(), "ttl": r.getheader("X-aws-ec2-metadata-token-ttl-seconds")}
    c.close()
    return out
T = "/latest/api/token"
CRED = "/latest/meta-data/iam/security-credentials/execution_role"
res = {}
res["put_no_ttl"] = ask("PUT", T)
res["put_ttl_0"] = ask("PUT", T, {"X-aws-ec2-metadata-token-ttl-seconds": "0"})
res["put_ttl_big"] = ask("PUT", T, {"X-aws-ec2-metadata-token-ttl-seconds": "21601"})
res["put_forwarded"] = ask("PUT", T, {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.1"})
res["get_token"] = ask("GET", T)
tok = ask("PUT", T, {"X-aws-ec2-metadata-token-ttl-seconds": "2"})
res["put_ok"] = tok
h = {"X-aws-ec2-metadata-token": tok["body"]}
res["cred_no_token"] = ask("GET", CRED)
res["cred_bad_token"] = ask("GET", CRED, {"X-aws-ec2-metadata-token": "nope"})
res["cred"] = ask("GET", CRED, h)
res["roles"] = ask("GET", "/latest/meta-data/iam/security-credentials/", h)
res["id"] = ask("GET", "/latest/meta-data/instance-id", h)
res["region"] = ask("GET", "/latest/meta-data/placement/region", h)
res["user_data"] = ask("GET", "/latest/user-data", h)
res["listing"] = ask("GET", "/latest/meta-data/", h)
res["identity"] = ask("GET", "/latest/dynamic/instance-identity/document", h)
res["nowhere"] = ask("GET", "/latest/meta-data/nowhere", h)
res["post"] = ask("POST", CRED, h, body=b"x" * 1000)
time.sleep(2.5)
res["cred_expired_token"] = ask("GET", CRED, h)
print(json.dumps(res))
"#;

fn raw_checks(g: &Guest, py: &Path) -> Value {
    in_guest_net(g, py, &["-c".as_ref(), RAW.as_ref()], None)
}

fn plain_guest(name: &str, metadata: Value) -> Guest {
    let dir = scratch(name);
    let cfg = json!({"imageName": "metadata-raw", "command": ["/bin/sleep", "1000"],
                     "metadata": metadata});
    Guest::start_with(dir, &cfg, &GuestOpts::default())
}

#[test]
fn every_status_code_of_the_contract_from_a_raw_client() {
    require_root!();
    let Some(py) = python() else {
        return;
    };
    let g = plain_guest("raw", json!({}));
    let run = json!({"microvmId": "mvm-raw", "region": "us-west-2", "runHookPayload": "hello",
                     "credentials": creds("AKIDRAW", "2099-01-01T00:00:00Z")});
    assert_eq!(g.hook("run", &run.to_string()).status, 200);
    let r = raw_checks(&g, &py);
    let st = |k: &str| r[k]["status"].as_u64().unwrap();
    let body = |k: &str| r[k]["body"].as_str().unwrap().to_string();
    assert_eq!(st("put_no_ttl"), 400, "{r:#}");
    assert_eq!(st("put_ttl_0"), 400);
    assert_eq!(st("put_ttl_big"), 400);
    assert_eq!(st("put_forwarded"), 403);
    assert_eq!(st("get_token"), 405);
    assert_eq!(st("put_ok"), 200);
    assert_eq!(r["put_ok"]["ttl"], "2", "the TTL is echoed");
    assert_eq!(body("put_ok").len(), 64);
    assert_eq!(st("cred_no_token"), 401);
    assert_eq!(st("cred_bad_token"), 401);
    assert_eq!(st("cred"), 200);
    let doc: Value = serde_json::from_str(&body("cred")).unwrap();
    assert_eq!(doc["Code"], "Success");
    assert_eq!(doc["Type"], "AWS-HMAC");
    assert_eq!(doc["AccessKeyId"], "AKIDRAW");
    assert_eq!(doc["SecretAccessKey"], "secret-AKIDRAW");
    assert_eq!(doc["Token"], "token-AKIDRAW");
    assert_eq!(doc["Expiration"], "2099-01-01T00:00:00Z");
    assert_eq!(body("roles"), "execution_role");
    assert_eq!(body("id"), "mvm-raw");
    assert_eq!(body("region"), "us-west-2");
    assert_eq!(body("user_data"), "hello");
    assert_eq!(body("listing"), "instance-id\nplacement/\niam/");
    let ident: Value = serde_json::from_str(&body("identity")).unwrap();
    assert_eq!(ident["instanceId"], "mvm-raw");
    assert_eq!(ident["imageId"], "metadata-raw");
    assert_eq!(st("nowhere"), 404);
    assert_eq!(st("post"), 405);
    assert_eq!(st("cred_expired_token"), 401, "a 2 s token expires on time");
}

#[test]
fn optional_tokens_a_disabled_endpoint_and_a_shared_network() {
    require_root!();
    let Some(py) = python() else {
        return;
    };
    let probe = |g: &Guest| -> Value {
        let script = r#"
import http.client, json
c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5)
c.request("GET", "/latest/meta-data/instance-id")
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode()}))
"#;
        in_guest_net(g, &py, &["-c".as_ref(), script.as_ref()], None)
    };
    let g = plain_guest("optional", json!({"httpTokens": "optional"}));
    assert_eq!(g.hook("run", r#"{"microvmId":"mvm-opt"}"#).status, 200);
    assert_eq!(probe(&g), json!({"status": 200, "body": "mvm-opt"}));
    let g = plain_guest("disabled", json!({"httpEndpoint": "disabled"}));
    assert_eq!(g.hook("run", r#"{"microvmId":"mvm-off"}"#).status, 200);
    assert_eq!(probe(&g)["status"], 403);
    assert_eq!(
        g.status()["metadata"]["options"]["httpEndpoint"],
        "disabled"
    );

    // On the machine's own network the agent adds no address and serves nothing.
    let dir = scratch("shared-net");
    let cfg = json!({"imageName": "metadata-shared", "command": ["/bin/sleep", "1000"]});
    let opts = GuestOpts {
        share_net: true,
        ..Default::default()
    };
    let g = Guest::start_with(dir, &cfg, &opts);
    let t0 = Instant::now();
    let md = loop {
        let md = g.status()["metadata"].clone();
        if md["why"] != "starting" {
            break md;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(md["endpoint"], Value::Null, "{md:#}");
    assert!(md["why"].as_str().unwrap().contains("shared"), "{md:#}");
    let addrs = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    assert!(
        !addrs.contains("169.254.169.254"),
        "the host's network was touched"
    );
}

/// The host hears `credentialsExpiring` 20 minutes before the credentials expire.
#[test]
fn the_host_is_warned_before_the_credentials_expire() {
    require_root!();
    let g = plain_guest("expiring", json!({}));
    let soon = std::time::SystemTime::now() + Duration::from_secs(20 * 60 + 3);
    let secs = soon
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiration = {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let run = json!({"microvmId": "mvm-exp", "region": "us-east-1",
                     "credentials": creds("AKIDEXP", &expiration)});
    assert_eq!(g.hook("run", &run.to_string()).status, 200);
    let t0 = Instant::now();
    let event = loop {
        let page = g
            .request("GET", "/v1/events?after=0&waitSeconds=2", b"")
            .json();
        if let Some(e) = page["events"].as_array().and_then(|v| {
            v.iter()
                .find(|e| e["type"] == "credentialsExpiring")
                .cloned()
        }) {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no warning: {page:#}"
        );
    };
    let took = t0.elapsed();
    assert_eq!(event["accessKeyId"], "AKIDEXP");
    assert_eq!(event["expiration"], expiration.as_str());
    assert!(took >= Duration::from_secs(1), "too early: {took:?}");
}

/// The metadata service's error answers reach a client that sends its body after the
/// headers (Python's `http.client` does): the body is drained before the answer and
/// the close, so the client reads the status instead of a reset.
#[test]
fn metadata_errors_reach_a_client_that_sends_its_body_late() {
    require_root!();
    let dir = scratch("md-latebody");
    let g = Guest::start_in(dir.clone(), &recorder_config(&dir, all_hooks(5), &[]));
    g.wait_app_started();
    let answers = g.in_net(|| {
        let connect = || {
            let s = std::net::TcpStream::connect(("169.254.169.254", 80)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        };
        let token = late_body(
            connect(),
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
            0,
        )
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap();
        let mut out = Vec::new();
        for (method, path, headers, want) in [
            ("PUT", "/latest/api/token", vec![], 400),
            ("GET", "/latest/meta-data/", vec![], 401),
            (
                "PUT",
                "/latest/api/token",
                vec![
                    ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
                    ("X-Forwarded-For", "10.0.0.1"),
                ],
                403,
            ),
            (
                "GET",
                "/latest/meta-data/no-such-thing",
                vec![("X-aws-ec2-metadata-token", token.as_str())],
                404,
            ),
        ] {
            let r = late_body(connect(), method, path, &headers, 50_000)
                .map(|r| r.status)
                .map_err(|e| e.to_string());
            out.push((format!("{method} {path}"), r, want));
        }
        out
    });
    for (what, got, want) in answers {
        assert_eq!(got, Ok(want), "{what}");
    }
}

/// The run envelope's `network` configures the NIC of a guest whose network differs
/// per run (a snapshot froze the kernel command line): here a veth interface the
/// "host" adds to the agent's own network namespace after boot. A bad value is 400
/// naming the field and configures nothing; a good one sets the address and prefix,
/// the MTU, the interface up, the default route and the resolver, and status says so.
#[test]
fn the_run_envelopes_network_configures_the_guests_nic() {
    require_root!();
    let g = sdk_guest("runnet", json!({}));
    let pid = g.agent_pid().to_string();
    let ip = |args: &[&str]| {
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip"])
            .args(args)
            .output()
            .expect("nsenter ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A veth pair (this machine's kernel has no dummy driver); the peer up, so the
    // agent's end has a carrier once the agent brings it up.
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ip(&["link", "set", "eth1", "up"]);
    let bad = json!({"microvmId": "mvm-net",
                     "network": {"address": "10.9.0.2/24", "gateway": "10.8.0.1"}});
    let r = g.hook("run", &bad.to_string());
    assert_eq!(r.status, 400, "{}", r.json());
    assert_eq!(r.json()["field"], "network.gateway", "{}", r.json());
    assert!(!ip(&["-4", "-o", "addr", "show", "dev", "eth0"]).contains("inet "));
    let run = json!({"microvmId": "mvm-net", "network": {"address": "10.9.0.2/24",
                     "gateway": "10.9.0.1", "mtu": 1400, "dns": ["10.9.0.53", "10.9.0.54"]}});
    let r = g.hook("run", &run.to_string());
    assert_eq!(r.status, 200, "{}", r.json());
    let addr = ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("inet 10.9.0.2/24"), "{addr}");
    let link = ip(&["-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let route = ip(&["-4", "route", "show", "default"]);
    assert!(route.contains("default via 10.9.0.1 dev eth0"), "{route}");
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/run/microvm/resolv.conf"))
        .expect("resolv.conf under the agent's /run");
    assert!(
        resolv.ends_with("nameserver 10.9.0.53\nnameserver 10.9.0.54\n"),
        "{resolv}"
    );
    // The agent's own /run/microvm, never the host's.
    assert!(!std::path::Path::new("/run/microvm/resolv.conf").exists());
    assert_eq!(
        g.status()["run"]["network"],
        "network eth0 10.9.0.2/24 via 10.9.0.1 mtu 1400 dns 10.9.0.53,10.9.0.54"
    );
}
