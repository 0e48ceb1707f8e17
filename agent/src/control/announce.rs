//! The announce line: once the control channel is ready, the agent tells the host so,
//! and the host connects only after it (connecting early wedges some vsock backends).

use std::time::Duration;

/// Tell the host we are up: connect to it (CID 2) on `port` and send one JSON line.
/// Bounded: the host may not listen, and boot must go on regardless.
pub async fn announce(port: u32, line: String) {
    use tokio::io::AsyncWriteExt;
    for attempt in 0..50u32 {
        let addr = tokio_vsock::VsockAddr::new(crate::transport::HOST_CID, port);
        match tokio_vsock::VsockStream::connect(addr).await {
            Ok(mut s) => {
                let _ = s.write_all(format!("{line}\n").as_bytes()).await;
                let _ = s.shutdown(std::net::Shutdown::Both);
                tracing::info!(port, "announced to the host");
                return;
            }
            Err(e) if attempt == 49 => {
                tracing::warn!(port, "cannot announce to the host: {e}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
