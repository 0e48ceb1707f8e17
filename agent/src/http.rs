//! HTTP helpers shared by the agent's servers (control channel and ingress).

use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use std::time::Duration;

/// How much of an unread request body an error answer waits for.
pub const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long an error answer waits for the rest of the request body.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// Read and discard what is left of a request body (at most [`DRAIN_LIMIT`] bytes,
/// within [`DRAIN_DEADLINE`]) before an error answer. A server that answers and closes
/// while the client is still sending makes the kernel reset the connection, and a
/// client that sends its body after the headers (Python's `http.client` does) then
/// sees a broken pipe instead of the status it was given.
pub async fn drain<B>(body: B)
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tokio::time::timeout(DRAIN_DEADLINE, Limited::new(body, DRAIN_LIMIT).collect()).await;
}
