//! The announce line: once the control channel is ready, the agent tells the host so,
//! and the host connects only after it (connecting early wedges some vsock backends).
//! And again each time the vsock device comes back (a snapshot restore hot-plugs a new
//! one, perhaps with another CID): the host has no other sign the guest is ready.

use crate::sys::{guest, uevent};
use microvm_protocol::events::Announce;
use microvm_protocol::PROTOCOL_VERSION;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Tries per announcement, [`RETRY`] apart.
const ATTEMPTS: u32 = 50;
const RETRY: Duration = Duration::from_millis(100);

/// Announcements the host received (`status.guest.announcements`).
static ANNOUNCED: AtomicU32 = AtomicU32::new(0);

/// How many announce lines reached the host so far.
pub fn announcements() -> u32 {
    ANNOUNCED.load(Ordering::Relaxed)
}

/// The line, with the CID the guest has now.
pub fn line(control: &str, cid: Option<u32>) -> Option<String> {
    let line = Announce {
        event: "ready".into(),
        cid,
        control: control.to_string(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    match serde_json::to_string(&line) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!("encoding the announce line: {e}");
            None
        }
    }
}

/// Tell the host we are up: connect to it (CID 2) on `port` and send one JSON line
/// naming the current CID. Bounded: the host may not listen, and the agent goes on
/// regardless.
pub async fn announce(port: u32, control: String) {
    use tokio::io::AsyncWriteExt;
    for attempt in 0..ATTEMPTS {
        let cid = guest::local_cid();
        let Some(line) = line(&control, cid) else {
            return;
        };
        let addr = tokio_vsock::VsockAddr::new(crate::transport::HOST_CID, port);
        match tokio_vsock::VsockStream::connect(addr).await {
            Ok(mut s) => {
                let sent = s.write_all(format!("{line}\n").as_bytes()).await;
                let _ = s.shutdown(std::net::Shutdown::Both);
                match sent {
                    Ok(()) => {
                        let n = ANNOUNCED.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::info!(port, ?cid, announcements = n, "announced to the host");
                        return;
                    }
                    Err(e) if attempt + 1 == ATTEMPTS => {
                        tracing::warn!(port, "cannot announce to the host: {e}");
                    }
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
            }
            Err(e) if attempt + 1 == ATTEMPTS => {
                tracing::warn!(port, "cannot announce to the host: {e}");
            }
            Err(_) => tokio::time::sleep(RETRY).await,
        }
    }
}

/// Announce now, and again whenever the vsock transport is bound to a device anew
/// (real guest only: the uevents are the kernel's). Listeners survive the device going
/// and coming back; only the host needs telling.
pub async fn announce_and_follow(port: u32, control: String) {
    // Subscribe first: a device that comes back while the first announcement is
    // still trying is not missed.
    let listener = uevent::Listener::open();
    let mut current = tokio::spawn(announce(port, control.clone()));
    let mut listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("no kernel uevents ({e}): the agent will not announce again after its vsock device is replaced");
            return;
        }
    };
    loop {
        let e = match listener.next().await {
            Ok(e) => e,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Uevents were lost (a burst): the device may have come back unseen.
                tracing::warn!("kernel uevents overflowed; announcing again to be safe");
                current.abort();
                current = tokio::spawn(announce(port, control.clone()));
                continue;
            }
            Err(e) => {
                tracing::warn!("reading kernel uevents: {e}; no more re-announcements");
                return;
            }
        };
        match uevent::vsock_change(&e) {
            Some(uevent::VsockChange::Bound) => {
                tracing::info!(
                    devpath = e.get("DEVPATH").unwrap_or(""),
                    cid = ?guest::local_cid(),
                    "vsock device bound; announcing again"
                );
                // A newer device makes an announcement still trying moot.
                current.abort();
                current = tokio::spawn(announce(port, control.clone()));
            }
            Some(uevent::VsockChange::Gone(action)) => {
                tracing::info!(
                    action,
                    devpath = e.get("DEVPATH").unwrap_or(""),
                    "vsock device gone"
                );
                current.abort();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_cid_it_is_given() {
        let l = line("vsock:9000", Some(7)).unwrap();
        let a: Announce = serde_json::from_str(&l).unwrap();
        assert_eq!(a.event, "ready");
        assert_eq!(a.cid, Some(7));
        assert_eq!(a.control, "vsock:9000");
        assert_eq!(a.protocol_version, PROTOCOL_VERSION);
        assert!(!l.contains('\n'));
    }
}
