//! The instance metadata service (IMDSv2) at 169.254.169.254:80, inside the guest:
//! how the application's AWS SDK finds the execution role's credentials with no code
//! and no configuration, as on the platform. The contract is in [`answer`]; tokens in
//! [`tokens`]; this file holds what the guest knows and the HTTP server.
//!
//! The address is added to `lo`, so only the guest reaches it. Like the clock steps,
//! that happens only where the network is the agent's own: a real guest, or a test
//! namespace whose only interface is `lo`; never on a developer's host network.

pub mod answer;
pub mod tokens;

use crate::http::drain;
use answer::{Facts, Request};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use microvm_protocol::run::Credentials;
use microvm_protocol::status::{HttpEndpoint, MetadataOptions, MetadataStatus, Role};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;
/// Headers slower than this are cut off; each connection is its own task meanwhile.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

pub struct Metadata {
    options: MetadataOptions,
    facts: Mutex<Facts>,
    tokens: Mutex<tokens::Tokens>,
    requests: AtomicU64,
    /// The endpoint once serving, or why not.
    serving: Mutex<Result<String, String>>,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere (which powers off) leaves nothing half-written
    // that matters for an answer meanwhile.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Metadata {
    pub fn new(options: MetadataOptions, image_name: &str) -> Arc<Metadata> {
        Arc::new(Metadata {
            options,
            facts: Mutex::new(Facts {
                image_name: image_name.to_string(),
                ..Facts::default()
            }),
            tokens: Mutex::default(),
            requests: AtomicU64::new(0),
            serving: Mutex::new(Err("starting".into())),
            epoch: Instant::now(),
        })
    }

    /// What `/run` tells the guest about itself.
    pub fn set_run(&self, microvm_id: &str, region: Option<&str>, user_data: &str) {
        let mut f = lock(&self.facts);
        f.microvm_id = Some(microvm_id.to_string());
        f.region = region.map(str::to_string);
        f.user_data = Some(user_data.to_string());
        f.run_at = Some(unix_now());
    }

    /// New credentials: the next document read has them (SDKs re-read before their
    /// copy expires).
    pub fn set_credentials(&self, c: &Credentials) {
        let mut f = lock(&self.facts);
        f.credentials = Some(c.clone());
        f.credentials_at = unix_now();
    }

    pub fn status(&self) -> MetadataStatus {
        let serving = lock(&self.serving).clone();
        MetadataStatus {
            endpoint: serving.as_ref().ok().cloned(),
            options: self.options,
            tokens_issued: lock(&self.tokens).issued,
            requests: self.requests.load(Ordering::Relaxed),
            why: serving.err(),
        }
    }

    fn answer(&self, req: &Request<'_>) -> answer::Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let facts = lock(&self.facts).clone();
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        answer::answer(
            &self.options,
            &mut lock(&self.tokens),
            &facts,
            req,
            now_ms,
            unix_now(),
            tokens::random,
        )
    }

    fn not_serving(&self, why: String) {
        tracing::info!("metadata service not started: {why}");
        *lock(&self.serving) = Err(why);
    }
}

/// Whether this agent may add an address to the network it runs in.
pub fn network_is_ours(role: Role) -> Result<(), String> {
    match role {
        Role::Guest => Ok(()),
        Role::Process => Err("not PID 1: the network is not the agent's".into()),
        Role::Namespace => {
            let names: Vec<String> = nix::net::if_::if_nameindex()
                .map_err(|e| format!("listing interfaces: {e}"))?
                .iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect();
            if names.iter().all(|n| n == "lo") {
                Ok(())
            } else {
                Err(format!(
                    "the network namespace is shared (interfaces {names:?}): no address is added to it"
                ))
            }
        }
    }
}

/// Add [`ADDRESS`]/32 to `lo` (as the alias `lo:imds`).
fn add_address() -> std::io::Result<()> {
    use crate::sys::netdev;
    let sock = netdev::control_socket()?;
    netdev::set_inet(&sock, "lo:imds", libc::SIOCSIFADDR, ADDRESS)?;
    netdev::set_inet(&sock, "lo:imds", libc::SIOCSIFNETMASK, Ipv4Addr::BROADCAST)
}

/// Serve the metadata service for the life of the agent (or say why not, in status).
pub async fn serve(md: Arc<Metadata>, role: Role) {
    if md.options.http_endpoint == HttpEndpoint::Disabled {
        // As on EC2: the address answers, with 403, so an SDK gives up at once
        // instead of waiting for a connection timeout.
        tracing::info!("metadata endpoint disabled by the image config");
    }
    if let Err(why) = network_is_ours(role) {
        return md.not_serving(why);
    }
    if let Err(e) = add_address() {
        return md.not_serving(format!("adding {ADDRESS}/32 to lo: {e}"));
    }
    let listener = match tokio::net::TcpListener::bind((ADDRESS, PORT)).await {
        Ok(l) => l,
        Err(e) => return md.not_serving(format!("binding {ADDRESS}:{PORT}: {e}")),
    };
    *lock(&md.serving) = Ok(format!("http://{ADDRESS}"));
    tracing::info!("metadata service on http://{ADDRESS}:{PORT}");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(16 * 1024);
    let cap = crate::fdbudget::current().metadata;
    let permits = Arc::new(Semaphore::new(cap));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metadata accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let md = md.clone();
        let svc = hyper::service::service_fn(move |req| handle(md.clone(), req));
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

async fn handle(
    md: Arc<Metadata>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let answer = md.answer(&Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        token: h(TOKEN_HEADER),
        ttl: h(TTL_HEADER),
        forwarded_for: parts.headers.contains_key("x-forwarded-for"),
    });
    // No request here has a body worth reading; what comes is drained (bounded) so a
    // client that sends it late still gets its answer.
    drain(body).await;
    let mut r = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(
            header::CONTENT_TYPE,
            if answer.json {
                "application/json"
            } else {
                "text/plain"
            },
        );
    if let Some(ttl) = answer.ttl {
        r = r.header(TTL_HEADER, ttl);
    }
    Ok(r.body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
