//! Delivery of lifecycle hooks to the application (DESIGN.md contract 3): an HTTP/1.1
//! `POST /aws/lambda-microvms/runtime/v1/<hook>` to the hooks port on loopback.

use crate::backoff::Backoff;
use crate::keep::Slot;
pub use crate::keep::KEEP_IDLE;
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

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The agent's side of the application's hooks server: one connection, kept open
/// between hooks that come within [`KEEP_IDLE`] of each other (HTTP/1.1 keep-alive), so
/// such a hook costs one exchange, not a connect and a handshake too; closed past it
/// (see [`crate::keep`]). A kept connection found closed before the hook was written
/// is replaced.
#[derive(Default)]
pub struct Client {
    kept: Slot<Sender>,
}

impl Client {
    fn take(&self, port: u16) -> Option<Sender> {
        self.kept.take(port).filter(|s| !s.is_closed())
    }

    fn keep(&self, port: u16, sender: Sender) {
        self.kept.keep(port, sender);
    }

    /// POST `body` to the application's `hook` on `127.0.0.1:port` within `timeout`.
    /// While `app_alive()` says the process runs, a refused connection is retried
    /// until the deadline (it may not have bound its port yet); then it is
    /// Unreachable, not Timeout.
    pub async fn call(
        &self,
        port: u16,
        hook: Hook,
        body: Vec<u8>,
        timeout: Duration,
        app_alive: impl Fn() -> bool,
    ) -> Outcome {
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(
            deadline.into(),
            self.exchange(port, hook, body, deadline, app_alive),
        )
        .await
        {
            Ok(Ok((status, text))) => classify(hook, status, text),
            Ok(Err(o)) => o,
            // The connection is dropped with the future: a late answer cannot be
            // taken for the next hook's.
            Err(_) => timed_out(timeout),
        }
    }

    async fn exchange(
        &self,
        port: u16,
        hook: Hook,
        body: Vec<u8>,
        deadline: Instant,
        app_alive: impl Fn() -> bool,
    ) -> Result<(u16, String), Outcome> {
        let mut req = request(port, hook, body)?;
        let mut kept = self.take(port);
        loop {
            let fresh = kept.is_none();
            let mut sender = match kept.take() {
                Some(mut s) => match s.ready().await {
                    Ok(()) => s,
                    Err(_) => connect(port, deadline, &app_alive).await?,
                },
                None => connect(port, deadline, &app_alive).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Keep the head of the answer; a huge or endless body must not
                    // hold us (nor the connection: one cut short is not kept).
                    let text = match Limited::new(resp.into_body(), APP_BODY_KEEP)
                        .collect()
                        .await
                    {
                        Ok(b) => {
                            self.keep(port, sender);
                            String::from_utf8_lossy(&b.to_bytes()).into_owned()
                        }
                        Err(_) => String::from("(answer body too large or broken; not kept)"),
                    };
                    return Ok((status, text));
                }
                Err(mut e) => match e.take_message() {
                    // The application closed the kept connection as the hook went:
                    // nothing reached it, so the hook goes again on a new one.
                    Some(r) if !fresh => req = r,
                    _ => {
                        return Err(Outcome::Unreachable {
                            error: format!(
                                "application closed the connection without answering: {}",
                                e.into_error()
                            ),
                        })
                    }
                },
            }
        }
    }
}

fn request(port: u16, hook: Hook, body: Vec<u8>) -> Result<hyper::Request<Full<Bytes>>, Outcome> {
    hyper::Request::post(hook.path())
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Outcome::Unreachable {
            error: format!("building the hook request: {e}"),
        })
}

/// A new connection to the hooks server, retrying "refused" while the app lives.
async fn connect(
    port: u16,
    deadline: Instant,
    app_alive: &impl Fn() -> bool,
) -> Result<Sender, Outcome> {
    let mut backoff = refused_backoff();
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) => {
                let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
                let pause = backoff.next_delay();
                if !refused || !app_alive() || Instant::now() + pause >= deadline {
                    return Err(Outcome::Unreachable {
                        error: format!(
                            "cannot connect to 127.0.0.1:{port}: {e} (is the application listening on hooks.port?)"
                        ),
                    });
                }
                tokio::time::sleep(pause).await;
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Outcome::Unreachable {
            error: format!("HTTP handshake with the application: {e}"),
        })?;
    // Ends when the sender is dropped or the application closes the connection.
    tokio::spawn(conn);
    Ok(sender)
}

fn timed_out(timeout: Duration) -> Outcome {
    Outcome::Timeout {
        timeout_ms: timeout.as_millis() as u64,
    }
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
        let out = Client::default()
            .call(
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

    /// A hooks server on loopback that counts its connections, answers 200 with
    /// keep-alive, closes a connection idle for `idle`, and with `close_each` closes
    /// every connection after its answer.
    fn counting_server(
        idle: Duration,
        close_each: bool,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(idle)).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    loop {
                        let mut len = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match r.read_line(&mut line) {
                                Ok(n) if n > 0 => {}
                                _ => return, // idle too long, or closed
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        let close = if close_each {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{close}\r\nok");
                        if close_each {
                            return;
                        }
                    }
                });
            }
        });
        (port, count)
    }

    async fn ok(c: &Client, port: u16) {
        let out = c
            .call(
                port,
                Hook::Ready,
                b"{}".to_vec(),
                Duration::from_secs(5),
                || true,
            )
            .await;
        assert_eq!(
            out,
            Outcome::Ok {
                application_status: 200
            }
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_connection_kept_across_hooks_and_replaced_when_closed() {
        use std::sync::atomic::Ordering::SeqCst;
        let (port, n) = counting_server(Duration::from_millis(200), false);
        let c = Client::default();
        for _ in 0..3 {
            ok(&c, port).await;
        }
        assert_eq!(n.load(SeqCst), 1, "three hooks over one connection");
        // The server closes it while idle (before KEEP_IDLE): a new one, unharmed.
        tokio::time::sleep(Duration::from_millis(400)).await;
        ok(&c, port).await;
        assert_eq!(n.load(SeqCst), 2);
        ok(&c, port).await;
        assert_eq!(n.load(SeqCst), 2);

        // A server that closes after every answer: every hook still answered.
        let (port, n) = counting_server(Duration::from_secs(5), true);
        for _ in 0..3 {
            ok(&c, port).await;
        }
        assert_eq!(n.load(SeqCst), 3);

        // Past KEEP_IDLE a kept connection is not used again, even if still open.
        let (port, n) = counting_server(Duration::from_secs(30), false);
        ok(&c, port).await;
        tokio::time::sleep(KEEP_IDLE + Duration::from_millis(100)).await;
        ok(&c, port).await;
        assert_eq!(n.load(SeqCst), 2);
    }
}
