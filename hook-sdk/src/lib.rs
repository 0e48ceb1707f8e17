//! Implement the *Lambda MicroVMs Application Hook Interface* in a Rust application.
//!
//! The guest agent (PID 1) calls your application on its hooks port with
//! `POST /aws/lambda-microvms/runtime/v1/{ready,validate,run,resume,suspend,terminate}`.
//! Implement [`Hooks`] (every method defaults to "200 OK") and serve it:
//!
//! ```no_run
//! use hook_sdk::{HookResponse, Hooks, RunRequest};
//!
//! struct App;
//!
//! impl Hooks for App {
//!     async fn run(&self, req: RunRequest) -> HookResponse {
//!         println!("started as {} with {:?}", req.microvm_id, req.run_hook_payload);
//!         HookResponse::Ok
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), hook_sdk::Error> {
//!     hook_sdk::serve(9000, App).await
//! }
//! ```
//!
//! To mount the hooks into a server you already run, call [`handle`] from your own
//! request handler for paths under [`HOOK_PATH_PREFIX`], or use [`HookService`], a
//! `hyper::service::Service`.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes};
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The body of `/run`: who this MicroVM is and what the caller of run-microvm passed.
pub use microvm_protocol::RunHookBody as RunRequest;
pub use microvm_protocol::{Hook, HOOK_PATH_PREFIX};
/// The `/run` body: at most a maximal payload JSON-escaped six-fold, plus its
/// envelope (the same bound as the agent's control channel).
const MAX_BODY: usize = microvm_protocol::limits::MAX_CONTROL_BODY;
/// The most of a refused request's body [`drain`] reads (and discards).
pub const DRAIN_LIMIT: usize = 1024 * 1024;
/// Pause after a failed accept (EMFILE and the like) before accepting again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Read and discard what is left of a request body before an error answer: at most
/// [`DRAIN_LIMIT`] bytes, giving up after 2 s without a byte and 10 s in all. A server
/// that answers and closes while the client is still sending makes the kernel reset
/// the connection, and a client that sends its body after the headers (Python's
/// `http.client` does) then sees a broken pipe instead of the status it was given.
/// [`handle`] does this itself; call it in your own server's error paths too.
pub async fn drain<B>(body: B)
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper::body::Buf;
    // Dropped piece by piece: a refused request costs no memory.
    let discard = async {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while read < DRAIN_LIMIT {
            let next = tokio::time::timeout(std::time::Duration::from_secs(2), body.frame());
            match next.await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.remaining()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), discard).await;
}

/// What a hook answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookResponse {
    /// 200: done.
    Ok,
    /// 503 from `ready` or `validate`: not yet; the platform asks again.
    NotReady,
    /// Any other status: the hook failed. The platform reports `status` and `message`.
    Error { status: u16, message: String },
}

impl HookResponse {
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        HookResponse::Error {
            status,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            HookResponse::Ok => 200,
            HookResponse::NotReady => 503,
            HookResponse::Error { status, .. } => *status,
        }
    }
}

/// One method per hook. Every default answers 200 at once, so implement only the
/// hooks your image enables.
pub trait Hooks: Send + Sync + 'static {
    /// Image build: is the application ready to be snapshotted? `NotReady` until it is.
    fn ready(&self) -> impl Future<Output = HookResponse> + Send {
        async { HookResponse::Ok }
    }
    /// Image build: a last check after `ready`. `NotReady` until it passes.
    fn validate(&self) -> impl Future<Output = HookResponse> + Send {
        async { HookResponse::Ok }
    }
    /// A MicroVM starts from the image, with its payload.
    fn run(&self, request: RunRequest) -> impl Future<Output = HookResponse> + Send {
        let _ = request;
        async { HookResponse::Ok }
    }
    /// The MicroVM was resumed from suspension: the clock and entropy are fresh.
    fn resume(&self) -> impl Future<Output = HookResponse> + Send {
        async { HookResponse::Ok }
    }
    /// The MicroVM is about to be suspended: finish or pause work, flush state.
    fn suspend(&self) -> impl Future<Output = HookResponse> + Send {
        async { HookResponse::Ok }
    }
    /// The MicroVM is about to end; the process is stopped after this answers.
    fn terminate(&self) -> impl Future<Output = HookResponse> + Send {
        async { HookResponse::Ok }
    }
}

/// Share one implementation between the hooks server and the rest of the application.
impl<H: Hooks> Hooks for Arc<H> {
    fn ready(&self) -> impl Future<Output = HookResponse> + Send {
        (**self).ready()
    }
    fn validate(&self) -> impl Future<Output = HookResponse> + Send {
        (**self).validate()
    }
    fn run(&self, request: RunRequest) -> impl Future<Output = HookResponse> + Send {
        (**self).run(request)
    }
    fn resume(&self) -> impl Future<Output = HookResponse> + Send {
        (**self).resume()
    }
    fn suspend(&self) -> impl Future<Output = HookResponse> + Send {
        (**self).suspend()
    }
    fn terminate(&self) -> impl Future<Output = HookResponse> + Send {
        (**self).terminate()
    }
}

/// Where the agent takes keep-awake leases (loopback in the guest).
pub const LEASE_PORT: u16 = microvm_protocol::ports::LEASE;

/// While this guard lives, the MicroVM counts as busy and is not reported idle, even
/// without ingress traffic: for work the application does in the background.
///
/// The lease is a TCP connection to the agent on `127.0.0.1:9001`; it ends when the
/// guard drops or the process dies, so a crashed application never holds the VM
/// awake. Non-Rust applications hold such a connection open themselves.
#[derive(Debug)]
pub struct KeepAwake {
    _conn: std::net::TcpStream,
}

/// Take a keep-awake lease. See [`KeepAwake`].
pub fn keep_awake() -> Result<KeepAwake, Error> {
    keep_awake_at(LEASE_PORT)
}

/// [`keep_awake`] against another port (tests, or a non-default agent).
pub fn keep_awake_at(port: u16) -> Result<KeepAwake, Error> {
    use std::io::Read;
    let lease = |source| Error::Lease { port, source };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(lease)?;
    // The agent grants a lease with one byte and refuses one (all in use) by closing.
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(lease)?;
    let mut granted = [0u8; 1];
    match c.read(&mut granted) {
        Ok(1) => {}
        Ok(_) => {
            return Err(lease(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the agent refused it: every lease is in use",
            )))
        }
        Err(e) => return Err(lease(e)),
    }
    c.set_read_timeout(None).map_err(lease)?;
    Ok(KeepAwake { _conn: c })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot take a keep-awake lease on 127.0.0.1:{port}: {source} (is this running under microvm-agent?)")]
    Lease { port: u16, source: std::io::Error },
    #[error("cannot listen on 0.0.0.0:{port} for hooks: {source} (is the port in use? it must match hooks.port of the image config)")]
    Bind { port: u16, source: std::io::Error },
}

fn reply(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Answer one hook request: the routing, status codes and bodies of the public
/// interface. Paths outside the interface get 404, other methods 405, a `/run` body
/// that is not a run request 400.
///
/// Call it from a server you already run for requests under [`HOOK_PATH_PREFIX`]:
///
/// ```
/// use hook_sdk::{handle, HookResponse, Hooks};
/// use http_body_util::Full;
/// use hyper::body::Bytes;
///
/// struct Warming;
/// impl Hooks for Warming {
///     async fn ready(&self) -> HookResponse {
///         HookResponse::NotReady
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let req = hyper::Request::post("/aws/lambda-microvms/runtime/v1/ready")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// assert_eq!(handle(&Warming, req).await.status(), 503);
///
/// let req = hyper::Request::post("/aws/lambda-microvms/runtime/v1/run")
///     .body(Full::new(Bytes::from(r#"{"microvmId":"mvm-1","runHookPayload":"hi"}"#)))
///     .unwrap();
/// assert_eq!(handle(&Warming, req).await.status(), 200); // default: OK
/// # }
/// ```
pub async fn handle<H, B>(hooks: &H, req: Request<B>) -> Response<Full<Bytes>>
where
    H: Hooks + ?Sized,
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(hook) = Hook::from_path(req.uri().path()) else {
        drain(req.into_body()).await;
        return reply(404, serde_json::json!({"message": "not a hook path"}));
    };
    if req.method() != Method::POST {
        drain(req.into_body()).await;
        let mut r = reply(405, serde_json::json!({"message": "hooks are POST"}));
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(400, serde_json::json!({"message": format!("body: {e}")})),
    };
    let response = match hook {
        Hook::Ready => hooks.ready().await,
        Hook::Validate => hooks.validate().await,
        Hook::Run => match serde_json::from_slice::<RunRequest>(&body) {
            Ok(r) => hooks.run(r).await,
            Err(e) => {
                return reply(
                    400,
                    serde_json::json!({"message": format!("not a run request: {e}")}),
                )
            }
        },
        Hook::Resume => hooks.resume().await,
        Hook::Suspend => hooks.suspend().await,
        Hook::Terminate => hooks.terminate().await,
    };
    match response {
        HookResponse::Ok => reply(200, serde_json::json!({})),
        HookResponse::NotReady => reply(503, serde_json::json!({"message": "not ready"})),
        HookResponse::Error { status, message } => {
            reply(status, serde_json::json!({"message": message}))
        }
    }
}

/// The hooks as a `hyper::service::Service`, to mount on a connection you accept.
pub struct HookService<H> {
    hooks: Arc<H>,
}

impl<H> Clone for HookService<H> {
    fn clone(&self) -> Self {
        HookService {
            hooks: self.hooks.clone(),
        }
    }
}

impl<H: Hooks> HookService<H> {
    pub fn new(hooks: Arc<H>) -> Self {
        HookService { hooks }
    }
}

impl<H, B> hyper::service::Service<Request<B>> for HookService<H>
where
    H: Hooks,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let hooks = self.hooks.clone();
        Box::pin(async move { Ok(handle(&*hooks, req).await) })
    }
}

/// A hooks listener bound to `0.0.0.0:port`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hook_sdk::Error> {
/// struct App;
/// impl hook_sdk::Hooks for App {}
///
/// let server = hook_sdk::Server::bind(0).await?; // 0: any free port, for the example
/// let port = server.local_addr().unwrap().port();
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let task = tokio::spawn(server.serve_with_shutdown(App, async { let _ = stopped.await; }));
/// assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok());
/// stop.send(()).unwrap();
/// task.await.unwrap()?; // returns once in-flight hooks have answered
/// # Ok(())
/// # }
/// ```
pub struct Server {
    listener: tokio::net::TcpListener,
}

impl Server {
    /// Bind now, so a port clash is reported before the application says it is up.
    pub async fn bind(port: u16) -> Result<Server, Error> {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| Error::Bind { port, source })?;
        Ok(Server { listener })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the process ends.
    pub async fn serve<H: Hooks>(self, hooks: H) -> Result<(), Error> {
        self.serve_with_shutdown(hooks, std::future::pending())
            .await
    }

    /// Serve until `shutdown` resolves; then stop accepting and let the hook calls
    /// already in progress finish and answer.
    pub async fn serve_with_shutdown<H: Hooks>(
        self,
        hooks: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let svc = HookService::new(Arc::new(hooks));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors (EMFILE) or a connection aborted before it
                    // was accepted: pause and go on; the agent will call again.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc.clone());
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        graceful.shutdown().await;
        Ok(())
    }
}

/// Bind `0.0.0.0:port` and serve `hooks` until the process ends.
pub async fn serve<H: Hooks>(port: u16, hooks: H) -> Result<(), Error> {
    Server::bind(port).await?.serve(hooks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl Hooks for Recorder {
        async fn ready(&self) -> HookResponse {
            HookResponse::NotReady
        }
        async fn run(&self, req: RunRequest) -> HookResponse {
            self.0.lock().unwrap().push(req.run_hook_payload);
            HookResponse::Ok
        }
        async fn suspend(&self) -> HookResponse {
            HookResponse::error(500, "disk full")
        }
    }

    fn req(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn status_of(h: &Recorder, m: Method, path: &str, body: &str) -> u16 {
        handle(h, req(m, path, body)).await.status().as_u16()
    }

    #[tokio::test]
    async fn public_paths_and_status_codes() {
        let h = Recorder(Default::default());
        let p = |hook: Hook| hook.path();
        assert_eq!(status_of(&h, Method::POST, &p(Hook::Ready), "").await, 503);
        assert_eq!(
            status_of(&h, Method::POST, &p(Hook::Validate), "").await,
            200
        );
        let run = r#"{"microvmId":"m","runHookPayload":"a\nb"}"#;
        assert_eq!(status_of(&h, Method::POST, &p(Hook::Run), run).await, 200);
        assert_eq!(h.0.lock().unwrap().as_slice(), ["a\nb"]);
        assert_eq!(status_of(&h, Method::POST, &p(Hook::Run), "{}").await, 400);
        assert_eq!(status_of(&h, Method::POST, &p(Hook::Resume), "").await, 200);
        assert_eq!(
            status_of(&h, Method::POST, &p(Hook::Suspend), "").await,
            500
        );
        assert_eq!(
            status_of(&h, Method::POST, &p(Hook::Terminate), "").await,
            200
        );
        assert_eq!(status_of(&h, Method::GET, &p(Hook::Run), "").await, 405);
        assert_eq!(
            status_of(&h, Method::POST, "/aws/lambda-microvms/runtime/v1/nap", "").await,
            404
        );
        assert_eq!(status_of(&h, Method::POST, "/", "").await, 404);
    }

    #[tokio::test]
    async fn error_message_reaches_the_caller() {
        let h = Recorder(Default::default());
        let r = handle(&h, req(Method::POST, &Hook::Suspend.path(), "")).await;
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["message"], "disk full");
    }

    #[tokio::test]
    async fn standalone_server_serves_and_shuts_down_gracefully() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = Server::bind(0).await.unwrap();
        let port = server.local_addr().unwrap().port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            server.serve_with_shutdown(Recorder(Default::default()), async {
                let _ = stop_rx.await;
            }),
        );
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"POST /aws/lambda-microvms/runtime/v1/validate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
    }

    #[test]
    fn a_lease_is_a_held_connection_granted_with_a_byte() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // The agent's side: grant the first lease, refuse (close) the second.
        let agent = std::thread::spawn(move || {
            let (mut held, _) = l.accept().unwrap();
            held.write_all(b"1").unwrap();
            let (refused, _) = l.accept().unwrap();
            drop(refused);
            held
        });
        let guard = keep_awake_at(port).unwrap();
        let e = keep_awake_at(port).unwrap_err();
        assert!(e.to_string().contains("every lease is in use"), "{e}");
        let mut held = agent.join().unwrap();
        drop(guard);
        let mut b = [0u8; 1];
        assert_eq!(
            held.read(&mut b).unwrap(),
            0,
            "dropping the guard ends the lease"
        );
        let e = keep_awake_at(port).unwrap_err();
        assert!(e.to_string().contains("keep-awake lease"), "{e}");
    }

    #[tokio::test]
    async fn bind_clash_is_a_clear_error() {
        let first = Server::bind(0).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let err = Server::bind(port).await.err().expect("port is taken");
        assert!(
            err.to_string().contains(&format!("0.0.0.0:{port}")),
            "{err}"
        );
        assert!(err.to_string().contains("hooks.port"), "{err}");
    }

    /// A client that sends the body after the headers, then a pause: every error
    /// answer must reach it (not a reset because the server closed while it sent).
    async fn late_body(port: u16, method: &str, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let body = vec![b'x'; 60_000];
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // In pieces, as a client writing from a file does: a server that closed
        // without reading answers the first piece with a reset, the next one fails.
        for piece in body.chunks(15_000) {
            s.write_all(piece).await.expect("the body is still wanted");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn error_answers_reach_a_client_that_sends_its_body_late() {
        let server = Server::bind(0).await.unwrap();
        let port = server.local_addr().unwrap().port();
        struct App;
        impl Hooks for App {}
        tokio::spawn(server.serve(App));
        let a = late_body(port, "POST", "/nope").await;
        assert!(a.starts_with("HTTP/1.1 404"), "{a:?}");
        let a = late_body(port, "PUT", "/aws/lambda-microvms/runtime/v1/run").await;
        assert!(a.starts_with("HTTP/1.1 405"), "{a:?}");
    }
}
