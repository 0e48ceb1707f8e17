//! The host link: transport, HTTP server, lifecycle state machine.

pub mod announce;
pub mod answer;
pub mod exec;
pub mod lifecycle;
pub mod routes;
pub mod state;

use hyper_util::rt::{TokioIo, TokioTimer};
use lifecycle::Lifecycle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Told to every connection at shutdown: finish the answer in flight, then close.
    let (closing_tx, closing) = watch::channel(false);
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
        // Upgrades: an exec session takes its connection over (see exec); hyper-util's
        // graceful watcher does not take upgradeable connections, hence the watch.
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let told = async move {
                let _ = closing.wait_for(|c| *c).await;
            };
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = told => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!("control connection: {e}");
            }
            drop(permit);
        });
    }
    let _ = closing_tx.send(true);
    // Every connection holds a permit until it is done: all back means all drained.
    let all = MAX_CONNECTIONS as u32;
    if tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("control connections still open after {DRAIN_TIMEOUT:?}; closing anyway");
    }
}
