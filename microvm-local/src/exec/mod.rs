//! The host's client of exec and files on the agent's control channel (the contract
//! is `microvm_protocol::exec`), over any connected std Unix stream: the hybrid vsock
//! socket after `CONNECT` (see [`crate::connect`]), or a plain Unix socket to an agent
//! run in namespaces by the test suites.
//!
//! Blocking and thread-based: a [`Session`] reads frames on the caller's thread while
//! [`Writer`]s (clones of the same socket, frames written whole under one lock) send
//! stdin, resizes and signals from any other.
//!
//! - [`wire`]: HTTP/1.1 by hand (the socket goes over to frames after the `101`);
//! - [`frames`]: frames off a byte stream;
//! - [`files`]: `GET`, `HEAD` and `PUT /v1/files` (tar streams).

pub mod files;
pub mod frames;
pub mod wire;

use frames::FrameReader;
use microvm_protocol::exec::{
    frame, resize_payload, ExecRequest, ExitFrame, Kind, TtySize, MAX_FRAME, PID_HEADER, UPGRADE,
};
use microvm_protocol::{paths, ApiError};
use serde_json::Value;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest error body read from an answer (the agent's are a few hundred bytes).
const MAX_ERROR_BODY: u64 = 1 << 20;

/// Why an exec or files request did not do what was asked.
#[derive(Debug)]
pub enum ExecError {
    /// The connection failed (writing the request, reading the answer or frames).
    Io(io::Error),
    /// The agent refused: its HTTP status and JSON body (`null` when it sent none,
    /// as with `HEAD`), normally an [`ApiError`].
    Api { status: u16, body: Value },
    /// The agent's answer broke the contract.
    Protocol(String),
}

impl ExecError {
    /// The agent's refusal, if that is what this is: status and body.
    pub fn api(&self) -> Option<(u16, Value)> {
        match self {
            ExecError::Api { status, body } => Some((*status, body.clone())),
            _ => None,
        }
    }

    /// The refusal's body as the contract's [`ApiError`], when it is one.
    pub fn api_error(&self) -> Option<ApiError> {
        match self {
            ExecError::Api { body, .. } => serde_json::from_value(body.clone()).ok(),
            _ => None,
        }
    }

    /// What a person should read: the agent's (or the endpoint's) own message for a
    /// refusal.
    pub fn message(&self) -> String {
        match (self, self.api_error()) {
            (_, Some(e)) => e.message,
            (ExecError::Api { body, .. }, None) if body["message"].is_string() => {
                body["message"].as_str().unwrap_or_default().to_string()
            }
            (ExecError::Api { status, .. }, None) => format!("the agent answered HTTP {status}"),
            _ => self.to_string(),
        }
    }
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Io(e) => write!(f, "{e}"),
            ExecError::Api { status, body } => match self.api_error() {
                Some(e) => write!(f, "{status} {:?}: {}", e.error, e.message),
                None => write!(f, "the agent answered HTTP {status}: {body}"),
            },
            ExecError::Protocol(m) => write!(f, "the agent's answer breaks the contract: {m}"),
        }
    }
}

impl std::error::Error for ExecError {}

impl From<io::Error> for ExecError {
    fn from(e: io::Error) -> Self {
        ExecError::Io(e)
    }
}

/// A signal's number from its name (`SIGKILL` -> 9), as the exit frame names it.
pub fn signal_number(name: &str) -> Option<i32> {
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The exit status a shell would report for `exit`: the code, or 128 + the signal's
/// number (255 when the frame names neither).
pub fn exit_status(exit: &ExitFrame) -> i32 {
    exit.shell_status(signal_number)
}

/// A finished session's output, byte for byte, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitFrame,
}

impl Output {
    /// See [`exit_status`].
    pub fn status(&self) -> i32 {
        exit_status(&self.exit)
    }
}

/// The sending half of a session: cheap to clone, usable from any thread. Each frame
/// is written whole under one lock, so frames from several threads never interleave.
#[derive(Clone)]
pub struct Writer {
    stream: Arc<Mutex<UnixStream>>,
}

impl Writer {
    fn send(&self, kind: Kind, payload: &[u8]) -> io::Result<()> {
        self.raw_write(&frame(kind, payload))
    }

    /// Bytes for the process's stdin, in frames of at most MAX_FRAME bytes. Nothing
    /// is sent for an empty slice (an empty frame is the end of input: see
    /// [`Writer::close_stdin`]).
    pub fn stdin(&self, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(MAX_FRAME) {
            self.send(Kind::Stdin, piece)?;
        }
        Ok(())
    }

    /// The end of stdin: an empty Stdin frame (the pipe is closed; with a terminal,
    /// the agent types its EOF character, ^D).
    pub fn close_stdin(&self) -> io::Result<()> {
        self.send(Kind::Stdin, &[])
    }

    /// Everything `input` gives as stdin, then its end.
    pub fn copy_stdin(&self, mut input: impl Read) -> io::Result<u64> {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut total = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The process must not wait forever for input that will not come.
                    let _ = self.close_stdin();
                    return Err(e);
                }
            };
            self.stdin(&buf[..n])?;
            total += n as u64;
        }
        self.close_stdin()?;
        Ok(total)
    }

    /// The terminal's new size (ignored by the agent without a terminal).
    pub fn resize(&self, size: TtySize) -> io::Result<()> {
        self.send(Kind::Resize, &resize_payload(size))
    }

    /// A signal for the process group, by number (`libc::SIGINT`).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.send(Kind::Signal, &signal.to_be_bytes())
    }

    /// Bytes as they are, frames or not (tests of the agent's protocol errors).
    pub fn raw_write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(bytes)?;
        s.flush()
    }

    /// Shut the connection both ways: a reader blocked on it returns, and the agent
    /// takes the host for gone (it kills the process group).
    pub fn shutdown(&self) {
        let s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

/// A started exec session: frames until the agent's [`Kind::Exit`]. Dropping it
/// closes the connection (unless a [`Writer`] clone keeps it), and the agent then
/// kills the process group.
pub struct Session {
    frames: FrameReader<BufReader<UnixStream>>,
    writer: Writer,
    pid: i32,
}

impl Session {
    /// `POST /v1/exec` with `req` on `stream`, upgraded to frames. Any answer but `101`
    /// is [`ExecError::Api`]. The stream's timeouts are left as they are: the head is
    /// read under its read timeout, if it has one.
    pub fn start(stream: UnixStream, req: &ExecRequest) -> Result<Session, ExecError> {
        let body = serde_json::to_vec(req).map_err(|e| ExecError::Protocol(e.to_string()))?;
        let len = body.len().to_string();
        let mut request = wire::request_head(
            "POST",
            paths::EXEC,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", UPGRADE),
                ("Content-Type", "application/json"),
                ("Content-Length", &len),
            ],
        );
        request.extend_from_slice(&body);
        let write_half = stream.try_clone()?;
        (&stream).write_all(&request)?;
        let mut reader = BufReader::with_capacity(MAX_FRAME + 64, stream);
        let head = wire::read_head(&mut reader)?;
        if head.status != 101 {
            return Err(refusal(reader, "POST", &head));
        }
        let pid = head
            .header(PID_HEADER)
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or_else(|| {
                ExecError::Protocol(format!("the 101 answer has no numeric {PID_HEADER}"))
            })?;
        Ok(Session {
            frames: FrameReader::new(reader),
            writer: Writer {
                stream: Arc::new(Mutex::new(write_half)),
            },
            pid,
        })
    }

    /// A session on a stream that already carries frames (its `101` was read
    /// elsewhere: the WebSocket shell's client bridges frames onto `stream`).
    pub fn upgraded(stream: UnixStream, pid: i32) -> io::Result<Session> {
        let write_half = stream.try_clone()?;
        Ok(Session {
            frames: FrameReader::new(BufReader::with_capacity(MAX_FRAME + 64, stream)),
            writer: Writer {
                stream: Arc::new(Mutex::new(write_half)),
            },
            pid,
        })
    }

    /// The stream, and the bytes of it already read past the `101` (the start of the
    /// first frames), for a caller that carries the frames on by itself.
    pub fn into_stream(self) -> (UnixStream, Vec<u8>) {
        let reader = self.frames.into_inner();
        let read_ahead = reader.buffer().to_vec();
        (reader.into_inner(), read_ahead)
    }

    /// The process's pid in the guest (also its process group).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A sending half for another thread.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Bound (or unbound, `None`) how long [`Session::next_frame`] waits.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.frames.get_ref().get_ref().set_read_timeout(timeout)
    }

    /// See [`Writer::stdin`].
    pub fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.stdin(data)
    }

    /// See [`Writer::close_stdin`].
    pub fn close_stdin(&mut self) -> io::Result<()> {
        self.writer.close_stdin()
    }

    /// See [`Writer::resize`].
    pub fn resize(&mut self, size: TtySize) -> io::Result<()> {
        self.writer.resize(size)
    }

    /// See [`Writer::signal`].
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        self.writer.signal(signal)
    }

    /// See [`Writer::raw_write`].
    pub fn raw_write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.raw_write(bytes)
    }

    /// The next frame from the agent; `None` once it has closed the connection.
    pub fn next_frame(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        self.frames.next_frame()
    }

    /// Stdout and stderr until the exit frame. Stdin is left as it is: close it first
    /// if the process reads to its end.
    pub fn wait(mut self) -> Result<Output, ExecError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next_frame()? {
                Some((Kind::Stdout, b)) => stdout.extend_from_slice(&b),
                Some((Kind::Stderr, b)) => stderr.extend_from_slice(&b),
                Some((Kind::Exit, b)) => {
                    return Ok(Output {
                        stdout,
                        stderr,
                        exit: parse_exit(&b)?,
                    })
                }
                Some((kind, _)) => return Err(host_kind(kind)),
                None => return Err(ExecError::Io(closed_without_exit())),
            }
        }
    }
}

/// The exit frame's payload.
pub fn parse_exit(payload: &[u8]) -> Result<ExitFrame, ExecError> {
    serde_json::from_slice(payload).map_err(|e| {
        ExecError::Protocol(format!(
            "exit frame {:?}: {e}",
            String::from_utf8_lossy(payload)
        ))
    })
}

fn host_kind(kind: Kind) -> ExecError {
    ExecError::Protocol(format!("a {kind:?} frame goes from the host to the guest"))
}

fn closed_without_exit() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the agent closed the session without an exit frame",
    )
}

/// Run `req` to its end: `stdin` is written (then its end) on a thread of its own
/// while stdout and stderr are read on this one, so any amount can flow both ways at
/// once. Stdin that could not be written (the process exited without reading it all)
/// is not an error; the exit frame says how the process ended.
pub fn run(
    stream: UnixStream,
    req: &ExecRequest,
    stdin: impl Read + Send,
) -> Result<Output, ExecError> {
    let session = Session::start(stream, req)?;
    let writer = session.writer();
    std::thread::scope(|s| {
        let feeding = writer.clone();
        let feeder = s.spawn(move || feeding.copy_stdin(stdin));
        let out = session.wait();
        if out.is_err() {
            // A broken session: a writer blocked on a full socket must not hold us.
            writer.shutdown();
        }
        let _ = feeder.join();
        out
    })
}

/// A non-101 (or non-2xx) answer as the error that carries it.
fn refusal<R: io::BufRead>(reader: R, method: &str, head: &wire::Head) -> ExecError {
    let framing = match wire::framing(method, head) {
        Ok(f) => f,
        Err(m) => return ExecError::Protocol(m),
    };
    let mut body = Vec::new();
    // An unreadable body still leaves the status: the refusal is reported either way.
    let _ = wire::Body::new(reader, framing)
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    ExecError::Api {
        status: head.status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::exec::{header, parse_header, parse_resize, parse_signal, EndReason};

    #[test]
    fn shell_status_maps_signal_names_to_numbers() {
        let frame = |code: Option<i32>, signal: Option<&str>| ExitFrame {
            exit_code: code,
            signal: signal.map(str::to_string),
            reason: EndReason::Exited,
            message: None,
        };
        assert_eq!(exit_status(&frame(Some(0), None)), 0);
        assert_eq!(exit_status(&frame(Some(7), None)), 7);
        assert_eq!(exit_status(&frame(None, Some("SIGKILL"))), 137);
        assert_eq!(exit_status(&frame(None, Some("SIGINT"))), 130);
        assert_eq!(exit_status(&frame(None, Some("SIGTERM"))), 143);
        assert_eq!(exit_status(&frame(None, Some("SIGPIPE"))), 141);
        assert_eq!(exit_status(&frame(None, Some("SIGNOPE"))), 128);
        assert_eq!(exit_status(&frame(None, None)), 255);
        assert_eq!(signal_number("SIGWINCH"), Some(libc::SIGWINCH));
        assert_eq!(signal_number("KILL"), None, "the frame's names carry SIG");
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    /// Read one request head and its Content-Length body from the agent's side.
    fn read_request(agent: &mut BufReader<UnixStream>) -> (String, Vec<u8>) {
        use std::io::BufRead;
        let mut head = String::new();
        loop {
            let mut l = String::new();
            agent.read_line(&mut l).unwrap();
            head.push_str(&l);
            if l == "\r\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0; len];
        agent.read_exact(&mut body).unwrap();
        (head, body)
    }

    #[test]
    fn a_session_upgrades_then_speaks_frames_both_ways() {
        let (host, agent) = pair();
        let fake = std::thread::spawn(move || {
            let mut w = agent.try_clone().unwrap();
            let mut r = BufReader::new(agent);
            let (head, body) = read_request(&mut r);
            assert!(
                head.starts_with("POST /v1/exec HTTP/1.1\r\nHost: agent\r\n"),
                "{head}"
            );
            assert!(head.contains("Connection: Upgrade\r\nUpgrade: microvm-exec\r\n"));
            let req: ExecRequest = serde_json::from_slice(&body).unwrap();
            assert_eq!(req.command, ["cat"]);
            // The head and the first frame in one write: the frame must not be lost.
            let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: microvm-exec\r\nx-microvm-exec-pid: 77\r\n\r\n".to_vec();
            answer.extend(frame(Kind::Stderr, b"ready"));
            w.write_all(&answer).unwrap();
            // Echo stdin until its end, noting the control frames.
            let mut frames = FrameReader::new(r);
            let mut seen = Vec::new();
            while let Some((kind, p)) = frames.next_frame().unwrap() {
                match kind {
                    Kind::Stdin if p.is_empty() => break,
                    Kind::Stdin => w.write_all(&frame(Kind::Stdout, &p)).unwrap(),
                    Kind::Resize => seen.push(format!("{:?}", parse_resize(&p).unwrap())),
                    Kind::Signal => seen.push(format!("sig {}", parse_signal(&p).unwrap())),
                    other => panic!("{other:?}"),
                }
            }
            let exit = serde_json::json!({"exitCode": 3, "reason": "exited"});
            w.write_all(&frame(Kind::Exit, exit.to_string().as_bytes()))
                .unwrap();
            seen
        });
        let req = ExecRequest {
            command: vec!["cat".into()],
            ..Default::default()
        };
        let mut s = Session::start(host, &req).unwrap();
        assert_eq!(s.pid(), 77);
        assert_eq!(
            s.next_frame().unwrap(),
            Some((Kind::Stderr, b"ready".to_vec()))
        );
        s.resize(TtySize { rows: 5, cols: 6 }).unwrap();
        s.signal(2).unwrap();
        let data: Vec<u8> = (0..(3 * MAX_FRAME + 5)).map(|i| i as u8).collect();
        let writer = s.writer();
        let feeder = std::thread::spawn(move || writer.copy_stdin(&data[..]).unwrap());
        let out = s.wait().unwrap();
        assert_eq!(feeder.join().unwrap(), (3 * MAX_FRAME + 5) as u64);
        assert_eq!(out.stdout.len(), 3 * MAX_FRAME + 5);
        assert!(out.stdout.iter().enumerate().all(|(i, b)| *b == i as u8));
        assert_eq!((out.exit.exit_code, out.status()), (Some(3), 3));
        assert_eq!(
            fake.join().unwrap(),
            ["TtySize { rows: 5, cols: 6 }", "sig 2"]
        );
    }

    #[test]
    fn a_refusal_carries_status_and_body_and_a_cut_session_is_an_error() {
        let (host, agent) = pair();
        std::thread::spawn(move || {
            let mut w = agent.try_clone().unwrap();
            read_request(&mut BufReader::new(agent));
            let body = r#"{"error":"NotFound","message":"command \"x\" not found"}"#;
            write!(
                w,
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let e = match Session::start(host, &ExecRequest::default()) {
            Ok(_) => panic!("started"),
            Err(e) => e,
        };
        let (status, body) = e.api().unwrap();
        assert_eq!((status, body["error"].as_str()), (404, Some("NotFound")));
        assert_eq!(e.message(), "command \"x\" not found");
        assert!(e.to_string().contains("404 NotFound"), "{e}");

        // Upgraded, then closed without an exit frame.
        let (host, agent) = pair();
        std::thread::spawn(move || {
            let mut w = agent.try_clone().unwrap();
            read_request(&mut BufReader::new(agent));
            w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nx-microvm-exec-pid: 1\r\n\r\n")
                .unwrap();
            w.write_all(&frame(Kind::Stdout, b"partial")).unwrap();
            w.write_all(&header(Kind::Stdout, 10)).unwrap();
        });
        let s = Session::start(host, &ExecRequest::default()).unwrap();
        let e = s.wait().unwrap_err();
        assert!(e.to_string().contains("inside a Stdout frame"), "{e}");
        assert!(parse_header(header(Kind::Exit, 0)).is_ok());
    }
}
