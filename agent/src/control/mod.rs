//! The host link: transport, HTTP server, lifecycle state machine.

pub mod announce;
pub mod answer;
pub mod lifecycle;
pub mod routes;
pub mod state;

use hyper_util::rt::{TokioIo, TokioTimer};
use lifecycle::Lifecycle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A request's headers must arrive within this; slow clients are cut off, and since
/// each connection is its own task they never delay anyone else meanwhile.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on simultaneous control connections (the host is trusted, but bounded).
pub const MAX_CONNECTIONS: usize = 1024;
/// How long in-flight answers get to be written once we shut down.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve the control channel until `shutdown` is notified, then drain.
pub async fn serve(
    listener: crate::transport::Listener,
    lc: Arc<Lifecycle>,
    shutdown: Arc<Notify>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.notified() => break,
        };
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = shutdown.notified() => break,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("control accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let lc = lc.clone();
        let svc = hyper::service::service_fn(move |req| routes::handle(lc.clone(), req));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("control connection: {e}");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("control connections still open after {DRAIN_TIMEOUT:?}; closing anyway");
    }
}
