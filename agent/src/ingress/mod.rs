//! Ingress: the host forwards each client connection to the agent over vsock (port
//! [`ports::INGRESS`](microvm_protocol::ports::INGRESS)); the agent connects it to the application in the guest and
//! measures the traffic.
//!
//! HTTP/1.1 is proxied request by request (keep-alive and pipelining included): the
//! target port comes from `X-aws-proxy-port` (default 8080), and every `x-aws-proxy-*`
//! header is removed. A WebSocket upgrade takes its port from the subprotocol
//! `lambda-microvms.port.<n>`, and the `lambda-microvms`,
//! `lambda-microvms.authentication.*` and `lambda-microvms.port.*` subprotocols are
//! removed before forwarding. HTTP/2 with prior knowledge (h2c) and anything that is
//! not HTTP are forwarded as byte streams to port 8080. A port nobody listens on is
//! 502 for HTTP and a closed connection otherwise.

mod borders;
mod leases;
#[cfg(test)]
mod props;
mod proxy;
mod route;
mod sniff;
mod stream;

pub use borders::Borders;
pub use leases::serve_leases;
pub use route::route;
pub use sniff::{sniff, Kind};

use crate::activity::Activity;
use crate::transport::{Listener, Stream};
use hyper_util::rt::TokioIo;
use sniff::SNIFF_TIMEOUT;
use std::sync::Arc;
use std::time::Duration;
use stream::ClientStream;
use tokio::io::AsyncReadExt;

async fn connection(
    stream: Stream,
    activity: Arc<Activity>,
    borders: Arc<Borders>,
    share: tokio::sync::OwnedSemaphorePermit,
) {
    let share = Arc::new(share);
    let mut client = ClientStream::new(stream, activity.clone());
    let mut prefix = Vec::new();
    let mut buf = [0u8; 64];
    let kind = loop {
        let k = sniff(&prefix);
        if k != Kind::Unknown {
            break k;
        }
        match tokio::time::timeout(SNIFF_TIMEOUT, client.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => prefix.extend_from_slice(&buf[..n]),
        }
    };
    client.replay(prefix);
    let io = client;
    match kind {
        Kind::Http1 => {
            let upstreams = Arc::new(proxy::Upstreams::default());
            let svc = hyper::service::service_fn(move |req| {
                let up = upstreams.clone();
                proxy::proxy(req, activity.clone(), borders.clone(), share.clone(), up)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await;
        }
        _ => match borders.stream_refusal() {
            Some(why) => tracing::warn!("ingress stream refused: {why}"),
            None => proxy::stream_to_app(io).await,
        },
    }
}

/// Accept forwarded client connections for as long as the agent lives, at most
/// its share of the descriptor table ([`crate::fdbudget`]) at once: past it, clients
/// wait in the listen backlog.
pub async fn serve(listener: Listener, activity: Arc<Activity>, borders: Borders) {
    let borders = Arc::new(borders);
    let cap = crate::fdbudget::current().ingress;
    tracing::info!(cap, "ingress connections at most");
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok(s) => {
                let (activity, borders) = (activity.clone(), borders.clone());
                tokio::spawn(connection(s, activity, borders, permit));
            }
            Err(e) => {
                tracing::warn!("ingress accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
