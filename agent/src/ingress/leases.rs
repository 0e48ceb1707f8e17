//! Keep-awake leases: a TCP connection held open to the agent on the guest's loopback
//! keeps the VM busy; it ends when the process holding it dies.

use crate::activity::Activity;
use microvm_protocol::ports::LEASE;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a granted lease reads first; a refused one reads EOF.
pub const GRANTED: &[u8] = b"1";

/// Keep-awake leases: a TCP connection to 127.0.0.1:[`LEASE`] held open is one.
pub async fn serve_leases(activity: Arc<Activity>) {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", LEASE)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("keep-awake lease endpoint 127.0.0.1:{LEASE}: {e}");
            return;
        }
    };
    // Past the share a lease is refused at once (closed: the client reads EOF), never
    // left in the backlog, where its connect would succeed without keeping the VM
    // awake.
    let permits = Arc::new(tokio::sync::Semaphore::new(
        crate::fdbudget::current().leases,
    ));
    let mut refused = 0u64;
    loop {
        let mut s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (EMFILE): pause instead of spinning on the error.
                tracing::warn!("keep-awake lease accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            // A flood must not flood the console too.
            if refused.is_power_of_two() {
                tracing::warn!(refused, "keep-awake lease refused: all leases in use");
            }
            drop(s);
            continue;
        };
        let busy = activity.busy();
        tokio::spawn(async move {
            if s.write_all(GRANTED).await.is_err() {
                return;
            }
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            drop(busy);
            drop(permit);
        });
    }
}
