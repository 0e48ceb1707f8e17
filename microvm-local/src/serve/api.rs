//! The operations, routed by the model's HTTP bindings (rest-json), and CloudWatch
//! Logs' (awsJson1.1, by `X-Amz-Target`) on the same port; the guests' egress
//! reaches a second port that serves the logs alone.

use super::microvms::{self, Op, Repeat, State, Token};
use super::wire::{self, Answer, ApiError};
use super::{build, images, proxy, sigv4, Server};
use crate::validate;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "/2025-09-09/";
/// Largest request body taken (PutLogEvents' 1 MiB batch plus its JSON).
const MAX_BODY: usize = 2 * 1024 * 1024;
/// How long an answer waits for the MicroVM (the agent's answer to `/run`, a suspend
/// or a resume) before it says how things stand (PENDING, SUSPENDING) and the change
/// finishes in the background: well under the SDKs' 60-second read timeout, after
/// which they would retry.
const ANSWER_WAIT: Duration = Duration::from_secs(45);
/// How long a suspend or resume may take (the save or restore of the memory).
const ACT_WAIT: Duration = Duration::from_secs(300);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The whole API (the port clients are given).
    All,
    /// CloudWatch Logs only: the port the guests reach through their egress, which
    /// must not let an application drive other MicroVMs.
    LogsOnly,
}

/// The CloudWatch Logs operations' `X-Amz-Target` prefix.
const LOGS_TARGET: &str = "Logs_20140328.";

pub async fn serve(server: Arc<Server>, listener: tokio::net::TcpListener, surface: Surface) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, most likely: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(server, req, surface).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(server: Arc<Server>, req: Request<Incoming>, surface: Surface) -> Answer {
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .map(|t| String::from_utf8_lossy(t.as_bytes()).to_string());
    if surface == Surface::LogsOnly
        && !target
            .as_deref()
            .is_some_and(|t| t.starts_with(LOGS_TARGET))
    {
        return wire::error(&ApiError::new(
            403,
            "AccessDeniedException",
            "this port serves CloudWatch Logs only (the MicroVMs' log destination)",
        ));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return wire::error(&ApiError::validation(format!(
                "request body refused: {e} (at most {MAX_BODY} bytes)"
            )))
        }
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect();
    if let Some(keys) = &server.keys {
        let signed = sigv4::Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: headers.clone(),
            body: &body,
        };
        if let Err((kind, message)) = sigv4::check(&signed, keys, wire::now_ms() as i64) {
            return wire::error(&ApiError::new(403, kind, message));
        }
    }
    if let Some(target) = target {
        return logs(&server, &target, &body);
    }
    let pairs = match wire::query_pairs(parts.uri.query()) {
        Ok(p) => p,
        Err(e) => return wire::error(&e),
    };
    let path = parts.uri.path().to_string();
    let segments: Vec<String> = match path.strip_prefix(PREFIX) {
        Some(rest) => rest
            .split('/')
            .map(|s| wire::percent_decode(s).unwrap_or_default())
            .collect(),
        None => Vec::new(),
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = parts.method.as_str();
    let r = match (method, seg.as_slice()) {
        ("POST", ["microvms"]) => run(&server, &body).await,
        ("GET", ["microvms"]) => list(&server, &pairs),
        ("GET", ["microvms", id]) => get(&server, id),
        ("DELETE", ["microvms", id]) => terminate(&server, id),
        ("POST", ["microvms", id, "suspend"]) => suspend(&server, id).await,
        ("POST", ["microvms", id, "resume"]) => resume(&server, id).await,
        ("POST", ["microvms", id, "auth-token"]) => auth_token(&server, id, &body, false),
        ("POST", ["microvms", id, "shell-auth-token"]) => auth_token(&server, id, &body, true),
        ("POST", ["microvm-images"]) => create_image(&server, &body),
        ("GET", ["microvm-images"]) => list_images(&server, &pairs),
        ("GET", ["microvm-images", id]) => image(&server, id).map(|i| (200, i.get())),
        ("GET", ["microvm-images", id, "versions"]) => image_versions(&server, id, &pairs),
        ("GET", ["microvm-images", id, "versions", v]) => image_at(&server, id, v)
            .map(|i| (200, i.version(&server.args.region, &server.args.account))),
        ("GET", ["microvm-images", id, "versions", v, "builds"]) => {
            image_builds(&server, id, v, &pairs)
        }
        ("GET", ["microvm-images", id, "versions", v, "builds", b]) => {
            image_build(&server, id, v, b)
        }
        ("GET", ["managed-microvm-images"]) => list_managed(&server, &pairs),
        _ => Err(ApiError::new(
            404,
            "UnknownOperationException",
            format!("no operation of lambda-microvms 2025-09-09 is {method} {path}"),
        )),
    };
    match r {
        Ok((status, v)) => wire::ok(status, &v),
        Err(e) => wire::error(&e),
    }
}

type Reply = wire::Outcome;

fn logs(server: &Server, target: &str, body: &[u8]) -> Answer {
    let Some(op) = target.strip_prefix("Logs_20140328.") else {
        return wire::error(&ApiError::new(
            400,
            "UnknownOperationException",
            format!("unknown X-Amz-Target {target}"),
        ));
    };
    let r = server.logs.handle(op, body, wire::now_ms() as i64);
    let kind = (r.status >= 400)
        .then(|| r.body["__type"].as_str().map(str::to_string))
        .flatten();
    wire::respond(
        r.status,
        "application/x-amz-json-1.1",
        r.body.to_string().into_bytes(),
        kind.as_deref(),
    )
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::new(
            400,
            "SerializationException",
            "the request body is not a JSON object",
        )),
    }
}

fn validation_errors(errors: Vec<String>) -> ApiError {
    let n = errors.len();
    ApiError::validation(format!(
        "{n} validation error{} detected: {}",
        if n == 1 { "" } else { "s" },
        errors.join("; ")
    ))
}

async fn run(server: &Arc<Server>, body: &[u8]) -> Reply {
    let request = object(body)?;
    // kmsKeyIdentifier is in the model boto3's botocore carries (not yet in the AWS
    // CLI's copy), with no local meaning: checked for its length and echoed, not
    // passed to the runner's (CLI-side) validation.
    let mut checked = request.clone();
    let kms = checked.remove("kmsKeyIdentifier");
    if kms.as_ref().is_some_and(|k| {
        !k.as_str()
            .is_some_and(|s| !s.is_empty() && s.chars().count() <= 2048)
    }) {
        return Err(ApiError::validation(
            "1 validation error detected: Value at 'kmsKeyIdentifier' failed to satisfy constraint: Member must have length between 1 and 2048",
        ));
    }
    let checked = &checked;
    let min_idle = server
        .args
        .test_min_idle_seconds
        .unwrap_or(microvm_protocol::limits::MIN_IDLE_SECONDS);
    validate::validate_with(checked, min_idle).map_err(validation_errors)?;
    validate::service_limits(checked).map_err(ApiError::validation)?;
    let identifier = checked["imageIdentifier"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let image = image(server, &identifier)?;
    if image.state != images::BuildState::Successful {
        return Err(ApiError::image_conflict(
            &image.arn,
            match image.state {
                images::BuildState::Failed => format!(
                    "image {} is CREATE_FAILED: its version's stateReason (GetMicrovmImageVersion) says why; create it again once that is fixed",
                    image.name
                ),
                _ => format!(
                    "image {} is still CREATING: a MicroVM runs from a built image; poll GetMicrovmImage until it is CREATED",
                    image.name
                ),
            },
        ));
    }
    if let Some(v) = checked.get("imageVersion").and_then(Value::as_str) {
        if v != images::VERSION {
            return Err(ApiError::not_found(
                "MicrovmImageVersion",
                &format!("{}:{v}", image.arn),
            ));
        }
    }
    let token = checked
        .get("clientToken")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut without_token = request.clone();
    without_token.remove("clientToken");
    // A repeated token answers before anything is made for it.
    {
        let reg = server.reg();
        if let Repeat::Same(existing) = reg.repeat(token.as_deref(), &without_token)? {
            return reg.get(&existing).map(|r| (200, r.view()));
        }
        let live = reg
            .records
            .values()
            .filter(|r| r.state != State::Terminated)
            .count();
        if live >= server.args.max_microvms {
            return Err(quota(server.args.max_microvms));
        }
    }
    let id = crate::host::microvm_id();
    let dir = server.microvm_dir(&id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
    let (proxy_task, endpoint) = match proxy::start(server.clone(), &id).await {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::internal(format!("ingress endpoint: {e}")));
        }
    };
    {
        let mut reg = server.reg();
        // Asked again: the same token may have made its MicroVM while this one bound.
        let repeated = reg.repeat(token.as_deref(), &without_token);
        // And the quota again: another RunMicrovm may have taken the last place.
        let full = reg
            .records
            .values()
            .filter(|r| r.state != State::Terminated)
            .count()
            >= server.args.max_microvms;
        if !matches!(repeated, Ok(Repeat::New)) || full {
            proxy_task.abort();
            let _ = std::fs::remove_dir_all(&dir);
        }
        if let Repeat::Same(existing) = repeated? {
            return reg.get(&existing).map(|r| (200, r.view()));
        }
        if full {
            return Err(quota(server.args.max_microvms));
        }
        let record = super::pending(&mut reg, &id, &image, request.clone(), endpoint);
        if let Some(t) = &token {
            reg.client_tokens
                .insert(t.clone(), (id.clone(), without_token));
        }
        reg.records.insert(id.clone(), record);
    }
    server
        .proxies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), proxy_task);
    let args = runner_args(server, &id, &dir, &image, checked)?;
    let observer: Arc<dyn super::child::Observer> = server.clone();
    let spawned = super::child::Child::spawn(observer, &id, &dir, &args);
    let ran = match spawned {
        Ok((child, ran)) => {
            server
                .children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), child);
            ran
        }
        Err(e) => {
            server.exited_now(&id, &format!("the runner could not start: {e}"));
            return Err(ApiError::internal(format!(
                "the MicroVM's runner could not start: {e}"
            )));
        }
    };
    let max = server.reg().get(&id).map(|r| r.maximum_duration_s)?;
    {
        let (server, id) = (server.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(max)).await;
            let _ = server.terminate(
                &id,
                &format!("The maximum duration of {max} seconds was reached"),
            );
        });
    }
    // The answer once the agent has answered /run (or the MicroVM is gone), or as
    // PENDING while a cold boot (its build hooks) goes on.
    let _ = tokio::time::timeout(ANSWER_WAIT, ran).await;
    server.reg().get(&id).map(|r| (200, r.view()))
}

fn quota(max: usize) -> ApiError {
    ApiError::new(
        402,
        "ServiceQuotaExceededException",
        format!("{max} MicroVMs run already, the most this endpoint runs at once (serve --max-microvms {max})"),
    )
}

/// The runner's command line: the validated request (with the image's directory for
/// its identifier) in a file, the endpoint on a Unix socket only the proxy reaches,
/// and the logs endpoint: this server, through the guest's restricted egress.
fn runner_args(
    server: &Server,
    id: &str,
    dir: &std::path::Path,
    image: &images::LocalImage,
    request: &Map<String, Value>,
) -> Result<Vec<String>, ApiError> {
    let mut r = request.clone();
    r.insert(
        "imageIdentifier".into(),
        json!(image.dir.display().to_string()),
    );
    let file = dir.join("request.json");
    std::fs::write(&file, Value::Object(r).to_string())
        .map_err(|e| ApiError::internal(format!("{}: {e}", file.display())))?;
    let max = request
        .get("maximumDurationInSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(microvms::DEFAULT_MAXIMUM_DURATION_S);
    let mut args = vec![
        "run-microvm".to_string(),
        "--cli-input-json".into(),
        format!("file://{}", file.display()),
        "--interactive".into(),
        "--json-errors".into(),
        "--microvm-id".into(),
        id.to_string(),
        "--endpoint-socket".into(),
        super::endpoint_socket(id).display().to_string(),
        // A backstop only: the server terminates at the maximum duration itself.
        "--timeout".into(),
        (max + 300).to_string(),
        "--forward".into(),
        format!("{}=127.0.0.1:{}", LOGS_GUEST_PORT, server.logs_port),
        "--logs-endpoint".into(),
        format!("http://10.0.2.100:{LOGS_GUEST_PORT}"),
    ];
    if let Some(n) = server.args.test_min_idle_seconds {
        args.push("--test-min-idle-seconds".into());
        args.push(n.to_string());
    }
    Ok(args)
}

/// The guest's port for this server's CloudWatch Logs (on the forward address).
const LOGS_GUEST_PORT: u16 = 4566;

fn get(server: &Server, id: &str) -> Reply {
    server.reg().get(id).map(|r| (200, r.view()))
}

fn list(server: &Server, pairs: &[(String, String)]) -> Reply {
    let max = wire::max_results(pairs, 50)?;
    let image_arn = match wire::query(pairs, "imageIdentifier") {
        None => None,
        Some(i) => match images::name_of(i, &server.args.region, &server.args.account) {
            Some((name, _)) => Some(images::arn(&server.args.region, &server.args.account, name)),
            None => Some(i.to_string()),
        },
    };
    let reg = server.reg();
    let items = reg.list(image_arn.as_deref(), wire::query(pairs, "imageVersion"));
    // Creation order, which lasts: ids are random.
    listing(
        items,
        |r| format!("{:020}", r.seq),
        |r| r.item(),
        pairs,
        max,
    )
}

fn terminate(server: &Server, id: &str) -> Reply {
    server.terminate(id, "Terminated by TerminateMicrovm")?;
    Ok((200, json!({})))
}

/// Suspend or resume: the state allows it, the runner does it, its report decides.
async fn suspend(server: &Arc<Server>, id: &str) -> Reply {
    lifecycle(
        server,
        id,
        Op::Suspend,
        "suspend",
        State::Suspended,
        State::Running,
    )
    .await
}

async fn resume(server: &Arc<Server>, id: &str) -> Reply {
    lifecycle(
        server,
        id,
        Op::Resume,
        "resume",
        State::Running,
        State::Suspended,
    )
    .await
}

async fn lifecycle(
    server: &Arc<Server>,
    id: &str,
    op: Op,
    action: &str,
    done: State,
    undone: State,
) -> Reply {
    let resume = matches!(op, Op::Resume);
    // One decision under one lock: join a resume under way, or begin.
    let begun = {
        let mut reg = server.reg();
        let r = reg.get_mut(id)?;
        match (&r.resuming, microvms::begin(r.state, op)) {
            (Some(under_way), _) if resume => Err(under_way.clone()),
            (_, Ok(Some(s))) => {
                r.state = s;
                let child = server.child(id);
                let answer = (resume && child.is_some()).then(|| {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    r.resuming = Some(rx);
                    ResumeAnswer {
                        server: server.clone(),
                        id: id.to_string(),
                        tx: Some(tx),
                    }
                });
                Ok((child, answer))
            }
            (_, Ok(None)) => return Ok((200, json!({}))),
            (_, Err(m)) => return Err(ApiError::conflict(id, format!("MicroVM {id}: {m}"))),
        }
    };
    let (child, answer) = match begun {
        Ok(b) => b,
        Err(under_way) => return joined(under_way, id).await,
    };
    let Some(child) = child else {
        return Err(ApiError::internal(format!("MicroVM {id} has no runner")));
    };
    let (server, id, action) = (server.clone(), id.to_string(), action.to_string());
    let work = tokio::spawn(async move {
        let report = child.act(&action, ACT_WAIT).await;
        let reply = settle(&server, &id, &action, report, done, undone);
        if let Some(mut a) = answer {
            a.give(reply.clone());
        }
        reply
    });
    match tokio::time::timeout(ANSWER_WAIT, work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => Err(ApiError::internal(format!("the {op:?}: {e}"))),
        // Still under way: the state says so, and the runner's report settles it.
        Err(_) => Ok((200, json!({}))),
    }
}

/// The answer of a resume under way, for those that joined it; given once, or, if
/// the resume's task ends without one (a panic), an error, and the MicroVM free to
/// be resumed again.
struct ResumeAnswer {
    server: Arc<Server>,
    id: String,
    tx: Option<tokio::sync::watch::Sender<Option<wire::Outcome>>>,
}

impl ResumeAnswer {
    fn give(&mut self, reply: wire::Outcome) {
        if let Some(tx) = self.tx.take() {
            if let Ok(r) = self.server.reg().get_mut(&self.id) {
                r.resuming = None;
            }
            tx.send_replace(Some(reply));
        }
    }
}

impl Drop for ResumeAnswer {
    fn drop(&mut self) {
        self.give(Err(ApiError::internal(format!(
            "the resume of {} under way stopped without an outcome: resume it again",
            self.id
        ))));
    }
}

/// A ResumeMicrovm that came while another was under way: the other's answer, once
/// it has one (or, after [`ANSWER_WAIT`], the same answer the other gives then).
async fn joined(
    mut under_way: tokio::sync::watch::Receiver<Option<wire::Outcome>>,
    id: &str,
) -> Reply {
    match tokio::time::timeout(ANSWER_WAIT, under_way.wait_for(Option::is_some)).await {
        Ok(Ok(reply)) => reply.clone().unwrap_or_else(|| Ok((200, json!({})))),
        Ok(Err(_)) => Err(ApiError::internal(format!(
            "the resume of {id} under way when this one came stopped without an outcome: resume it again"
        ))),
        Err(_) => Ok((200, json!({}))),
    }
}

/// The state once the runner reported on a suspend or resume (or failed to).
fn settle(
    server: &Server,
    id: &str,
    action: &str,
    report: Result<Value, String>,
    done: State,
    undone: State,
) -> Reply {
    let mut reg = server.reg();
    let r = reg.get_mut(id)?;
    let worked = report.as_ref().is_ok_and(|v| v["status"] == 200);
    // A MicroVM that ended meanwhile stays ended; an idle suspension that came first
    // already moved it.
    if matches!(r.state, State::Terminating | State::Terminated) {
        return Err(ApiError::conflict(
            id,
            format!("MicroVM {id} is {}", r.state.as_str()),
        ));
    }
    if worked {
        r.state = done;
        // An earlier failure's reason no longer describes it.
        r.state_reason = None;
        return Ok((200, json!({})));
    }
    if r.state != done {
        r.state = undone;
    }
    let why = match report {
        Ok(v) => format!("{action} of {id}: the agent answered {}", v["status"]),
        Err(e) => format!("{action} of {id}: {e}"),
    };
    r.state_reason = Some(why.clone());
    Err(ApiError::internal(why))
}

fn auth_token(server: &Server, id: &str, body: &[u8], shell: bool) -> Reply {
    let req = object(body)?;
    let minutes = microvms::token_minutes(req.get("expirationInMinutes"))?;
    let ports = if shell {
        microvms::Ports::All
    } else {
        microvms::Ports::parse(req.get("allowedPorts"))?
    };
    let mut reg = server.reg();
    let r = reg.get_mut(id)?;
    // The operation's errors have no ConflictException: a MicroVM on its way out is
    // a request that cannot be valid.
    if matches!(r.state, State::Terminating | State::Terminated) {
        return Err(ApiError::validation(format!(
            "MicroVM {id} is {}: it takes no more auth tokens",
            r.state.as_str()
        )));
    }
    if shell && !r.shell {
        return Err(ApiError::validation(format!(
            "MicroVM {id} was not run with the SHELL_INGRESS (or ALL_INGRESS) ingress network connector"
        )));
    }
    let value = format!(
        "{}{}",
        if shell { "mvs-" } else { "mva-" },
        crate::host::hex(&crate::host::random(32))
    );
    let now = wire::now_ms();
    // Expired tokens open nothing: they need not pile up on a long-lived MicroVM.
    r.tokens.retain(|t| t.expires_ms > now);
    r.tokens.push(Token {
        value: value.clone(),
        expires_ms: now + minutes * server.args.token_minute.as_millis() as u64,
        ports,
        shell,
    });
    Ok((200, json!({"authToken": {"X-aws-proxy-auth": value}})))
}

/// The image an identifier names: being built here, in `--images`, or failed here.
/// A build under way is looked for first: one that ends renames its image into
/// `--images` before it leaves the builds, so one of the two looks always finds it.
fn image(server: &Server, id: &str) -> Result<images::LocalImage, ApiError> {
    let (region, account) = (&server.args.region, &server.args.account);
    let build = images::name_of(id, region, account)
        .filter(|(_, version)| version.is_none_or(|v| v == images::VERSION))
        .and_then(|(name, _)| server.builds.get(name));
    match build {
        Some(b) if b.state != images::BuildState::Failed => Ok(b),
        failed => match images::find(&server.args.images, region, account, id) {
            Err(e) if e.kind == "ResourceNotFoundException" => failed.ok_or(e),
            found => found,
        },
    }
}

/// An image's version (locally the one, "1").
fn image_at(server: &Server, id: &str, version: &str) -> Result<images::LocalImage, ApiError> {
    let i = image(server, id)?;
    if version != images::VERSION {
        return Err(ApiError::not_found(
            "MicrovmImageVersion",
            &format!("{}:{version}", i.arn),
        ));
    }
    Ok(i)
}

/// CreateMicrovmImage: checked and admitted at once (201, CREATING); the build
/// follows in turn ([`build::Builds::run`]).
fn create_image(server: &Arc<Server>, body: &[u8]) -> Reply {
    let request = object(body)?;
    let errors = build::check(&request);
    if !errors.is_empty() {
        return Err(validation_errors(errors));
    }
    if let Some(l) = request.get("logging") {
        let mut only = Map::new();
        only.insert("logging".into(), l.clone());
        validate::service_limits(&only).map_err(ApiError::validation)?;
    }
    let token = request
        .get("clientToken")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut without_token = request.clone();
    without_token.remove("clientToken");
    if let Some(name) = server.builds.repeat(token.as_deref(), &without_token)? {
        return image(server, &name).map(|i| (201, i.created()));
    }
    let job = build::resolve(&request, &server.args.images, &server.args.region)?;
    let admitted = match server.builds.admit(
        build::pending(&job, &server.args.region, &server.args.account),
        token,
        &server.args.images,
    )? {
        build::Admitted::New(i) => i,
        build::Admitted::Repeat(name) => return image(server, &name).map(|i| (201, i.created())),
    };
    let logs = server.args.state_dir.join("builds").join(&job.name);
    tokio::spawn(build::Builds::run(
        build::Builds::started(server),
        job,
        server.args.image_builder.clone(),
        server.args.images.clone(),
        logs,
    ));
    Ok((201, admitted.created()))
}

fn image_builds(server: &Server, id: &str, version: &str, pairs: &[(String, String)]) -> Reply {
    let max = wire::max_results(pairs, 50)?;
    for (k, allowed) in [
        ("architecture", images::ARCHITECTURES),
        ("chipset", images::CHIPSETS),
    ] {
        if let Some(v) = wire::query(pairs, k).filter(|v| !allowed.contains(v)) {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{v}' at '{k}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            )));
        }
    }
    let i = image_at(server, id, version)?;
    let all: Vec<images::LocalImage> = [i].into_iter().filter(|i| i.build_matches(pairs)).collect();
    listing(
        all,
        |i| i.build_id.clone(),
        |i| i.build_summary(),
        pairs,
        max,
    )
}

fn image_build(server: &Server, id: &str, version: &str, build_id: &str) -> Reply {
    let i = image_at(server, id, version)?;
    if i.build_id != build_id {
        return Err(ApiError::not_found(
            "MicrovmImageBuild",
            &format!("{}:{version}/{build_id}", i.arn),
        ));
    }
    Ok((200, i.build()))
}

fn list_images(server: &Server, pairs: &[(String, String)]) -> Reply {
    let max = wire::max_results(pairs, 50)?;
    let filter = wire::query(pairs, "nameFilter");
    // The builds first (see `image`): one that ends meanwhile is then on disk.
    let builds = server.builds.all();
    let mut all = images::scan(
        &server.args.images,
        &server.args.region,
        &server.args.account,
    );
    // Those being built (or failed) here, unless one of their name is on disk.
    for b in builds {
        if !all.iter().any(|i| i.name == b.name) {
            all.push(b);
        }
    }
    all.retain(|i| filter.is_none_or(|f| i.name.contains(f)));
    listing(all, |i| i.name.clone(), |i| i.summary(), pairs, max)
}

fn list_managed(server: &Server, pairs: &[(String, String)]) -> Reply {
    let max = wire::max_results(pairs, 50)?;
    let all = images::managed(&server.args.images, &server.args.region);
    listing(all, |m| m.0.clone(), |m| m.1, pairs, max)
}

/// A List operation's answer: one page of `items` in the order of `key`, each as
/// `item` writes it, and `nextToken` when more follow.
fn listing<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    item: impl Fn(T) -> Value,
    pairs: &[(String, String)],
    max: usize,
) -> Reply {
    let (page, next) = wire::page(items, key, max, wire::query(pairs, "nextToken"))?;
    let mut v = json!({"items": page.into_iter().map(item).collect::<Vec<_>>()});
    if let Some(n) = next {
        v["nextToken"] = json!(n);
    }
    Ok((200, v))
}

fn image_versions(server: &Server, id: &str, pairs: &[(String, String)]) -> Reply {
    wire::max_results(pairs, 50)?;
    let i = image(server, id)?;
    Ok((
        200,
        json!({"items": [i.version(&server.args.region, &server.args.account)]}),
    ))
}
