//! Signals an init passes on to the application.

use super::process::Supervisor;
use nix::sys::signal::Signal;
use std::sync::Arc;

/// Forward the signals an init passes on, for as long as the agent lives.
pub async fn forward_signals(sup: Arc<Supervisor>) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (kind, sig) in kinds {
        let sup = sup.clone();
        match signal(kind) {
            Ok(mut stream) => {
                tasks.spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::info!("forwarding {sig} to the application");
                        sup.forward(sig);
                    }
                });
            }
            Err(e) => tracing::error!("cannot handle {sig}: {e}"),
        }
    }
    while tasks.join_next().await.is_some() {}
}
