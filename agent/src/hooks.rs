//! Delivery of lifecycle hooks to the application (DESIGN.md contract 3): an HTTP/1.1
//! `POST /aws/lambda-microvms/runtime/v1/<hook>` to the hooks port on loopback.

use crate::backoff::Backoff;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use microvm_protocol::status::HookOutcome as Outcome;
use microvm_protocol::Hook;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How much of the application's answer we keep for the host to read.
const APP_BODY_KEEP: usize = 4096;

/// Decide what a status code means for `hook`.
pub fn classify(hook: Hook, status: u16, body: String) -> Outcome {
    match status {
        200..=299 => Outcome::Ok {
            application_status: status,
        },
        503 if hook.is_image_build() => Outcome::NotReady,
        _ => Outcome::Failed {
            application_status: status,
            application_body: body,
        },
    }
}

/// Retry pauses after "connection refused": the app may still be binding its port.
fn refused_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
}

/// POST `body` to the application's `hook` on `127.0.0.1:port` within `timeout`.
/// While `app_alive()` says the process runs, a refused connection is retried until the
/// deadline (it may not have bound its port yet); then it is Unreachable, not Timeout.
pub async fn call(
    port: u16,
    hook: Hook,
    body: Vec<u8>,
    timeout: Duration,
    app_alive: impl Fn() -> bool,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut backoff = refused_backoff();
    let stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) => {
                let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                let pause = backoff.next_delay();
                if !refused || !app_alive() || Instant::now() + pause >= deadline {
                    return Outcome::Unreachable {
                        error: format!(
                            "cannot connect to 127.0.0.1:{port}: {e} (is the application listening on hooks.port?)"
                        ),
                    };
                }
                tokio::time::sleep(pause).await;
            }
            Err(_) => return timed_out(timeout),
        }
    };
    let _ = stream.set_nodelay(true);
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, exchange(stream, port, hook, body)).await {
        Ok(Ok((status, text))) => classify(hook, status, text),
        Ok(Err(e)) => Outcome::Unreachable { error: e },
        Err(_) => timed_out(timeout),
    }
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Timeout {
        timeout_ms: timeout.as_millis() as u64,
    }
}

async fn exchange(
    stream: TcpStream,
    port: u16,
    hook: Hook,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with the application: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(hook.path())
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the hook request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("application closed the connection without answering: {e}"))?;
        let status = resp.status().as_u16();
        // Keep the head of the answer; a huge or endless body must not hold us.
        let text = match Limited::new(resp.into_body(), APP_BODY_KEEP)
            .collect()
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::from("(answer body too large or broken; not kept)"),
        };
        Ok((status, text))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(Hook::Run, 200, String::new()),
            Outcome::Ok {
                application_status: 200
            }
        );
        assert_eq!(
            classify(Hook::Ready, 204, String::new()),
            Outcome::Ok {
                application_status: 204
            }
        );
        assert_eq!(classify(Hook::Ready, 503, String::new()), Outcome::NotReady);
        assert_eq!(
            classify(Hook::Validate, 503, String::new()),
            Outcome::NotReady
        );
        // Only image-build hooks may say "not yet".
        assert!(matches!(
            classify(Hook::Run, 503, "busy".into()),
            Outcome::Failed { application_status: 503, application_body } if application_body == "busy"
        ));
        assert!(matches!(
            classify(Hook::Suspend, 404, String::new()),
            Outcome::Failed {
                application_status: 404,
                ..
            }
        ));
    }

    #[test]
    fn refused_pauses_are_short_and_bounded() {
        let mut b = refused_backoff();
        let p: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(p[0], Duration::from_millis(10));
        assert!(p.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*p.last().unwrap(), Duration::from_millis(100));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nobody_listening_and_app_dead_is_unreachable_at_once() {
        // Bind then drop, to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t0 = Instant::now();
        let out = call(
            port,
            Hook::Run,
            b"{}".to_vec(),
            Duration::from_secs(5),
            || false,
        )
        .await;
        assert!(matches!(out, Outcome::Unreachable { .. }), "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
