//! `microvm-local serve`: a local Lambda MicroVMs endpoint. It speaks the API model's
//! rest-json protocol (botocore's `lambda-microvms` 2025-09-09) on 127.0.0.1, so the
//! AWS CLI and SDKs drive it with `--endpoint-url`; the CloudWatch Logs subset the
//! agent writes and `aws logs` reads, on the same port; and, per MicroVM, an ingress
//! endpoint that lets a request through only with a valid auth token for its port.
//!
//! - [`api`]: the operations; [`wire`]: rest-json answers and errors;
//!   [`sigv4`]: signature checks; [`microvms`]: records and lifecycle rules;
//!   [`child`]: each MicroVM's runner process; [`proxy`]: authenticated ingress;
//!   [`shell`]: the shell over WebSocket (the shell token's terminal);
//!   [`images`]: the local images; [`build`]: CreateMicrovmImage's builds;
//!   [`logs`]: the CloudWatch Logs store.

mod api;
mod build;
mod child;
mod images;
mod logs;
mod microvms;
mod proxy;
mod shell;
mod sigv4;
mod wire;

use child::{Child, Observer};
use microvms::{Record, Registry, State};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// `serve`'s options.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeArgs {
    /// Where `make rootfs` put the images (each a directory).
    pub images: PathBuf,
    /// `rootfs/image.sh`: installs a code artifact on a base (CreateMicrovmImage).
    pub image_builder: PathBuf,
    pub port: u16,
    /// Logs and each MicroVM's runner log.
    pub state_dir: PathBuf,
    pub region: String,
    pub account: String,
    /// Accept any SigV4 signature (or none) instead of checking it.
    pub accept_any_signature: bool,
    /// How long a TERMINATED MicroVM stays visible.
    pub retention: Duration,
    /// The most MicroVMs not TERMINATED at once.
    pub max_microvms: usize,
    /// Test only: the agents' minimum idle duration.
    pub test_min_idle_seconds: Option<u64>,
    /// The length of an auth token's minute (a minute, except in tests).
    pub token_minute: Duration,
}

pub struct Server {
    args: ServeArgs,
    keys: Option<sigv4::Keys>,
    /// The logs-only listener's port, which the guests' egress forwards to.
    logs_port: u16,
    reg: Mutex<Registry>,
    children: Mutex<HashMap<String, Arc<Child>>>,
    proxies: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    logs: logs::LogStore,
    builds: build::Builds,
}

impl Server {
    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn child(&self, id: &str) -> Option<Arc<Child>> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn microvm_dir(&self, id: &str) -> PathBuf {
        self.args.state_dir.join("microvms").join(id)
    }

    /// Terminate a MicroVM for `reason` (the first reason given is kept). Nothing to
    /// do for one already terminating or terminated.
    fn terminate(&self, id: &str, reason: &str) -> Result<(), wire::ApiError> {
        let (child, was) = {
            let mut reg = self.reg();
            let r = reg.get_mut(id)?;
            let was = r.state;
            match microvms::begin(r.state, microvms::Op::Terminate) {
                Ok(Some(s)) => {
                    r.state = s;
                    r.state_reason.get_or_insert_with(|| reason.to_string());
                }
                _ => return Ok(()),
            }
            (self.child(id), was)
        };
        match child {
            Some(c) => {
                // A runner still booting reads no actions yet: SIGTERM makes it stop
                // and terminate the MicroVM cleanly. One that runs is told, and its
                // input ends (it exits once the MicroVM is terminated).
                if was == State::Pending || c.send("terminate").is_err() {
                    c.signal(libc::SIGTERM);
                }
                c.close();
            }
            None => self.exited_now(id, "the MicroVM's runner was already gone"),
        }
        Ok(())
    }

    fn exited_now(&self, id: &str, reason: &str) {
        let now = wire::now_ms();
        if let Ok(r) = self.reg().get_mut(id) {
            r.terminated(reason, now);
        }
        if let Some(h) = self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            h.abort();
        }
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

impl Observer for Server {
    fn ran(&self, id: &str, output: &serde_json::Value) {
        let mut reg = self.reg();
        let Ok(r) = reg.get_mut(id) else { return };
        if r.state != State::Pending {
            return;
        }
        if output["state"] == "RUNNING" {
            r.state = State::Running;
        } else {
            // The agent refused /run: the runner terminates the MicroVM and exits.
            r.state = State::Terminating;
            let why = output["stateReason"]
                .as_str()
                .unwrap_or("the agent refused /run");
            r.state_reason = Some(format!("The application's run hook failed ({why})"));
        }
    }

    fn acted(&self, id: &str, action: &str, ok: bool) {
        let mut reg = self.reg();
        let Ok(r) = reg.get_mut(id) else { return };
        match action {
            "suspend (idle)" if ok && matches!(r.state, State::Running | State::Suspending) => {
                r.state = State::Suspended;
            }
            "resume (ingress)" if ok && r.state == State::Suspended => r.state = State::Running,
            "terminate (suspendedDurationSeconds)" if r.state != State::Terminated => {
                r.state = State::Terminating;
                r.state_reason.get_or_insert_with(|| {
                    "Suspended for the idle policy's suspendedDurationSeconds".into()
                });
            }
            _ => {}
        }
    }

    fn exited(&self, id: &str, status: std::process::ExitStatus, why: String) {
        let expected = self
            .reg()
            .get(id)
            .is_ok_and(|r| r.state == State::Terminating);
        let reason = if expected {
            "Terminated".to_string()
        } else {
            let log = self.microvm_dir(id).join("runner.log");
            format!(
                "The MicroVM stopped unexpectedly ({status}){}; see {}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                },
                log.display()
            )
        };
        self.exited_now(id, &reason);
    }
}

/// The program: bind, serve until SIGINT or SIGTERM, terminate every MicroVM.
pub fn main(args: ServeArgs) -> i32 {
    crate::signals::install_handlers();
    let keys = match (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        _ if args.accept_any_signature => None,
        (Ok(a), Ok(s)) if !a.is_empty() && !s.is_empty() => Some(sigv4::Keys {
            access_key_id: a,
            secret_access_key: s,
            region: args.region.clone(),
            services: &["lambda", "logs"],
        }),
        _ => {
            eprintln!("microvm-local: serve: requests are checked against AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and neither is set: set both (any values; the clients use the same), or pass --accept-any-signature");
            return 252;
        }
    };
    if !args.image_builder.is_file() {
        eprintln!(
            "microvm-local: serve: no {} (--image-builder): CreateMicrovmImage builds will fail; start serve in the checkout or name its rootfs/image.sh",
            args.image_builder.display()
        );
    }
    // What an endpoint or runner that was killed left: build scratch and VM
    // directories, half-built images.
    for gone in crate::vm::sweep_stale(&std::env::temp_dir().join("microvm-local"))
        .into_iter()
        .chain(build::sweep_partials(&args.images))
    {
        eprintln!(
            "microvm-local: serve: removed {}, left by a process that is gone",
            gone.display()
        );
    }
    let logs = match logs::LogStore::open(&args.state_dir.join("logs")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "microvm-local: serve: log store in {}: {e}",
                args.state_dir.display()
            );
            return 255;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("microvm-local: serve: runtime: {e}");
            return 255;
        }
    };
    let code = rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("microvm-local: serve: port {}: {e}", args.port);
                return 255;
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(args.port);
        let logs_listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("microvm-local: serve: the guests' logs port: {e}");
                return 255;
            }
        };
        let logs_port = logs_listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let server = Arc::new(Server {
            args,
            keys,
            logs_port,
            reg: Mutex::new(Registry::default()),
            children: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            logs,
            builds: build::Builds::default(),
        });
        println!(
            "{}",
            serde_json::json!({"endpoint": format!("http://127.0.0.1:{port}"),
                "images": server.args.images.display().to_string(),
                "stateDir": server.args.state_dir.display().to_string(),
                "region": server.args.region,
                "logsPort": server.logs_port,
                "signatures": if server.keys.is_some() { "checked" } else { "accepted without a check" }})
        );
        let accept = tokio::spawn(api::serve(server.clone(), listener, api::Surface::All));
        let accept_logs = tokio::spawn(api::serve(
            server.clone(),
            logs_listener,
            api::Surface::LogsOnly,
        ));
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !crate::signals::stopping() {
            tick.tick().await;
            let gone = server.reg().expire(server.args.retention);
            for id in gone {
                let _ = std::fs::remove_dir_all(server.microvm_dir(&id));
            }
        }
        accept.abort();
        accept_logs.abort();
        shutdown(&server).await;
        0
    });
    // A build's thread that outlived shutdown's wait (each of its steps is bounded,
    // yet) must not hold the process: dropping the runtime would wait for it.
    rt.shutdown_timeout(Duration::from_secs(5));
    code
}

/// Every MicroVM terminated, in order: each runner is told, then has a minute; image
/// builds stop (they see the endpoint stopping) and clean up after themselves.
async fn shutdown(server: &Arc<Server>) {
    server.builds.close();
    let ids: Vec<String> = server.reg().records.keys().cloned().collect();
    for id in &ids {
        let _ = server.terminate(id, "The local endpoint shut down");
    }
    let t0 = std::time::Instant::now();
    while !server
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_empty()
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in server
        .children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        c.signal(libc::SIGKILL);
    }
    let t0 = std::time::Instant::now();
    while server.builds.active() > 0 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if server.builds.active() > 0 {
        eprintln!(
            "microvm-local: serve: {} image build(s) did not stop within a minute: abandoned; the next serve removes what they leave in {}",
            server.builds.active(),
            server.args.images.display()
        );
    }
}

/// The runner's endpoint socket: in the runner's own scratch directory (a short path:
/// socket paths are limited to 107 bytes), removed with it.
fn endpoint_socket(id: &str) -> PathBuf {
    crate::connect::microvm_dir(id).join("endpoint.sock")
}

/// A record for a MicroVM about to start.
fn pending(
    reg: &mut Registry,
    id: &str,
    image: &images::LocalImage,
    request: serde_json::Map<String, serde_json::Value>,
    endpoint: String,
) -> Record {
    let idle = request.get("idlePolicy");
    Record {
        id: id.to_string(),
        image_arn: image.arn.clone(),
        image_version: images::VERSION.to_string(),
        state: State::Pending,
        state_reason: None,
        started_ms: wire::now_ms(),
        terminated_ms: None,
        gone: None,
        endpoint,
        maximum_duration_s: request
            .get("maximumDurationInSeconds")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(microvms::DEFAULT_MAXIMUM_DURATION_S),
        tokens: Vec::new(),
        shell: crate::params::shell_ingress(&request),
        auto_resume: idle.is_some_and(|p| p["autoResumeEnabled"] == true),
        resuming: None,
        seq: reg.seq(),
        request,
    }
}
