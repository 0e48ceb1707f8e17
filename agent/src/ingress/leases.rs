//! Keep-awake leases: a TCP connection held open to the agent on the guest's loopback
//! keeps the VM busy; it ends when the process holding it dies.

use crate::activity::Activity;
use microvm_protocol::ports::LEASE;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Keep-awake leases: a TCP connection to 127.0.0.1:[`LEASE`] held open is one.
pub async fn serve_leases(activity: Arc<Activity>) {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", LEASE)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("keep-awake lease endpoint 127.0.0.1:{LEASE}: {e}");
            return;
        }
    };
    // Past the share, a lease waits in the backlog (not yet keeping the VM awake)
    // until one ends.
    let permits = Arc::new(tokio::sync::Semaphore::new(
        crate::fdbudget::current().leases,
    ));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (EMFILE): pause instead of spinning on the error.
                tracing::warn!("keep-awake lease accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let busy = activity.busy();
        tokio::spawn(async move {
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            drop(busy);
            drop(permit);
        });
    }
}
