//! An HTTP application that uses all six hooks, with the hooks mounted into its own
//! hyper server: one port serves both the application's routes and the hook paths.
//!
//! - `ready` answers 503 until a (simulated) warm-up is done, so an image is only
//!   snapshotted warm; `validate` checks the warm state is there.
//! - `run` keeps the MicroVM's id and payload; `GET /` shows them.
//! - `suspend` / `resume` count, so a client can see the VM was paused.
//! - `terminate` says goodbye on stdout (which the agent ships as a log line).
//!
//! `APP_PORT` (default 8080). Use the same number for `hooks.port` in the image config.

use hook_sdk::{HookResponse, Hooks, RunRequest, HOOK_PATH_PREFIX};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct App {
    warm: AtomicBool,
    run: Mutex<Option<RunRequest>>,
    suspends: AtomicU32,
    resumes: AtomicU32,
}

impl Hooks for App {
    async fn ready(&self) -> HookResponse {
        if self.warm.load(Ordering::SeqCst) {
            HookResponse::Ok
        } else {
            HookResponse::NotReady
        }
    }
    async fn validate(&self) -> HookResponse {
        match self.warm.load(Ordering::SeqCst) {
            true => HookResponse::Ok,
            false => HookResponse::error(500, "validate before warm-up finished"),
        }
    }
    async fn run(&self, request: RunRequest) -> HookResponse {
        println!(
            "run: {} payload {:?}",
            request.microvm_id, request.run_hook_payload
        );
        if let Ok(mut r) = self.run.lock() {
            *r = Some(request);
        }
        HookResponse::Ok
    }
    async fn resume(&self) -> HookResponse {
        self.resumes.fetch_add(1, Ordering::SeqCst);
        HookResponse::Ok
    }
    async fn suspend(&self) -> HookResponse {
        self.suspends.fetch_add(1, Ordering::SeqCst);
        HookResponse::Ok
    }
    async fn terminate(&self) -> HookResponse {
        println!("terminate: goodbye");
        HookResponse::Ok
    }
}

async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path().starts_with(HOOK_PATH_PREFIX) {
        return Ok(hook_sdk::handle(&*app, req).await);
    }
    let run = app.run.lock().ok().and_then(|r| r.clone());
    let body = serde_json::json!({
        "microvmId": run.as_ref().map(|r| r.microvm_id.clone()),
        "runHookPayload": run.as_ref().map(|r| r.run_hook_payload.clone()),
        "suspends": app.suspends.load(Ordering::SeqCst),
        "resumes": app.resumes.load(Ordering::SeqCst),
        "path": req.uri().path(),
    });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("APP_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let app = Arc::new(App::default());
    {
        let app = app.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            app.warm.store(true, Ordering::SeqCst);
        });
    }
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    println!("http_app: listening on {port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| route(app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
