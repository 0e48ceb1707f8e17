//! HTTP helpers shared by the agent's servers (control channel and ingress).

use http_body_util::BodyExt;
use hyper::body::{Body, Buf};
use std::time::Duration;

/// How much of an unread request body an error answer waits for.
pub const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long an error answer waits for each next piece of the request body.
pub const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// The longest an error answer waits for a body in all.
pub const DRAIN_TOTAL: Duration = Duration::from_secs(10);

/// Read and discard what is left of a request body (at most [`DRAIN_LIMIT`] bytes,
/// giving up after [`DRAIN_IDLE`] without a byte, and after [`DRAIN_TOTAL`] in all)
/// before an error answer. Pieces are dropped as they come: a refused request costs
/// no memory however large its body. A server that answers and closes while the
/// client is still sending makes the kernel reset the connection, and a client that
/// sends its body after the headers (Python's `http.client` does) then sees a broken
/// pipe instead of the status it was given.
pub async fn drain<B>(body: B)
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let discard = async {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while read < DRAIN_LIMIT {
            match tokio::time::timeout(DRAIN_IDLE, body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.remaining()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TOTAL, discard).await;
}
