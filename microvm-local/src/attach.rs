//! `microvm-local exec` and `microvm-local shell`: one exec session attached to this
//! process's stdio. Stdin goes to the process (until its end), stdout and stderr
//! frames to ours, and the process's status becomes our exit code.
//!
//! Threads: one reads frames and writes our stdout/stderr, one forwards stdin, one
//! takes signals (blocked everywhere else, taken with sigwait: no handler runs in an
//! arbitrary thread); the caller's thread waits for the first thing that ends the
//! session and returns, so the terminal guard is dropped on every way out.
//!
//! Signals: SIGWINCH becomes a resize frame. With a raw terminal (`shell`), keys such
//! as Ctrl-C are bytes for the remote terminal, and a SIGINT, SIGTERM, SIGHUP or
//! SIGQUIT from elsewhere ends the runner (the agent then kills the session's
//! processes). Without one (`exec`), the first SIGINT, SIGTERM or SIGHUP is forwarded
//! to the remote process group; a second one, or SIGQUIT, ends the runner.

use crate::connect;
use crate::exec::{self, ExecError, Session, Writer};
use crate::terminal::{self, RawMode};
use microvm_protocol::exec::{EndReason, ExecRequest, ExitFrame, Kind, MAX_FRAME};
use nix::sys::signal::{SigSet, Signal};
use std::io::{IsTerminal, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

/// How long the agent gets to answer the exec request (it spawns and answers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// The command `shell` runs when given none.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Where the session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A MicroVM a local runner keeps, by its id (the runner's hybrid vsock socket).
    Local(String),
    /// A MicroVM a `microvm-local serve` endpoint keeps: its endpoint URL and a shell
    /// auth token (the shell over WebSocket, [`crate::wsshell`]).
    Endpoint { url: String, token: String },
}

/// An `exec` or `shell` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub target: Target,
    /// What to run; `tty` is filled in from the local terminal.
    pub request: ExecRequest,
    /// Ask for a terminal.
    pub tty: bool,
    /// `shell`: a terminal, and stdin must be one.
    pub shell: bool,
}

impl ExecArgs {
    fn name(&self) -> &'static str {
        if self.shell {
            "shell"
        } else {
            "exec"
        }
    }
}

/// A way out before or instead of an exit status: the line to print and the code.
struct Failure {
    line: String,
    code: i32,
}

/// The exit code of an exec request the agent refused: 127 when it found no such
/// command, 126 when it refused the command itself (cannot be executed), else 255.
pub fn refusal_code(e: &ExecError) -> i32 {
    match e.api_error() {
        Some(a) if a.error == microvm_protocol::ErrorCode::NotFound => 127,
        Some(a) if a.field.as_deref() == Some("command") => 126,
        _ => 255,
    }
}

/// What to say, if anything, about how a session ended besides its status.
pub fn end_note(exit: &ExitFrame) -> Option<String> {
    let why = match exit.reason {
        EndReason::Exited => return None,
        EndReason::Timeout => "its --timeout-seconds passed; its processes were killed".to_string(),
        EndReason::Suspend => {
            "the MicroVM is being suspended; its processes were killed".to_string()
        }
        EndReason::Terminate => {
            "the MicroVM is being terminated; its processes were killed".to_string()
        }
        EndReason::ProtocolError => format!(
            "the agent ended it: {}",
            exit.message.as_deref().unwrap_or("a protocol error")
        ),
    };
    Some(format!("the session ended: {why}"))
}

/// The command: an exit code.
pub fn main(a: &ExecArgs) -> i32 {
    match attach(a) {
        Ok((code, note)) => {
            if let Some(n) = note {
                eprintln!("microvm-local: {}: {n}", a.name());
            }
            code
        }
        Err(f) => {
            eprintln!("{}", f.line);
            f.code
        }
    }
}

/// What ends a session, as the waiting thread hears of it.
enum Event {
    Exit(ExitFrame),
    /// The connection ended or broke before an exit frame.
    Broken(String),
    /// Our stdout is gone (a closed pipe): stop, as a process would on SIGPIPE.
    OutputGone,
    Signal(Signal),
}

/// How the session is reached, once the target is known to exist.
enum Way<'a> {
    Control(std::os::unix::net::UnixStream),
    WebSocket { url: &'a str, token: &'a str },
}

fn attach(a: &ExecArgs) -> Result<(i32, Option<String>), Failure> {
    let name = a.name();
    let fail = |line: String, code: i32| Failure {
        line: format!("microvm-local: {name}: {line}"),
        code,
    };
    let stdin_tty = std::io::stdin().is_terminal();
    if a.shell && !stdin_tty {
        return Err(fail(
            "stdin is not a terminal (for a command without one: microvm-local exec)".into(),
            255,
        ));
    }
    let mut req = a.request.clone();
    let tty = a.tty || a.shell;
    if tty {
        req.tty = Some(terminal::size().unwrap_or(terminal::DEFAULT_SIZE));
        if let Ok(term) = std::env::var("TERM") {
            req.env.entry("TERM".into()).or_insert(term);
        }
    }
    let way = match &a.target {
        Target::Local(id) => Way::Control(connect::control(id).map_err(|e| Failure {
            line: format!("microvm-local: {e}"),
            code: e.exit_code(),
        })?),
        Target::Endpoint { url, token } => Way::WebSocket { url, token },
    };
    // Before any thread exists (the WebSocket's too), so that every thread inherits
    // the mask.
    let signals = signal_set();
    signals
        .thread_block()
        .map_err(|e| fail(format!("blocking signals: {e}"), 255))?;
    let started = match way {
        Way::Control(stream) => {
            let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
            Session::start(stream, &req)
        }
        Way::WebSocket { url, token } => crate::wsshell::open(url, token, &req, ANSWER_TIMEOUT),
    };
    let session = started.map_err(|e| match e {
        ExecError::Api { .. } => fail(e.message(), refusal_code(&e)),
        e => fail(format!("the agent did not start the command: {e}"), 255),
    })?;
    session
        .set_read_timeout(None)
        .map_err(|e| fail(e.to_string(), 255))?;
    // Raw only with a terminal on both ends: keys then go through unprocessed.
    let raw = match tty && stdin_tty {
        true => Some(RawMode::enter().map_err(|e| fail(format!("raw mode: {e}"), 255))?),
        false => None,
    };
    let code = run_session(session, signals, raw.is_some(), tty);
    drop(raw);
    Ok(code)
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Attach the session to our stdio until something ends it: (exit code, note).
fn run_session(session: Session, signals: SigSet, raw: bool, tty: bool) -> (i32, Option<String>) {
    let (tx, events) = mpsc::channel();
    let writer = session.writer();
    {
        let (tx, writer) = (tx.clone(), writer.clone());
        std::thread::spawn(move || take_signals(signals, &writer, tty, &tx));
    }
    {
        let writer = writer.clone();
        std::thread::spawn(move || forward_stdin(&writer));
    }
    std::thread::spawn(move || read_frames(session, &tx));
    let mut forwarded = false;
    loop {
        let Ok(event) = events.recv() else {
            return (255, Some("the session's threads ended".into()));
        };
        match event {
            Event::Exit(exit) => return (exec::exit_status(&exit), end_note(&exit)),
            Event::Broken(why) => {
                return (255, Some(format!("the session broke off: {why}")));
            }
            Event::OutputGone => {
                writer.shutdown();
                return (128 + libc::SIGPIPE, None);
            }
            Event::Signal(sig) if !raw && !forwarded && sig != Signal::SIGQUIT => {
                // The remote process decides what the signal means; a second one
                // ends the runner.
                forwarded = true;
                if writer.signal(sig as i32).is_err() {
                    return (128 + sig as i32, None);
                }
            }
            Event::Signal(sig) => {
                writer.shutdown();
                return (
                    128 + sig as i32,
                    Some(format!(
                        "{sig}: the session was closed; its processes are killed"
                    )),
                );
            }
        }
    }
}

fn take_signals(signals: SigSet, writer: &Writer, tty: bool, tx: &mpsc::Sender<Event>) {
    loop {
        let Ok(sig) = signals.wait() else { return };
        if sig == Signal::SIGWINCH {
            if let (true, Some(size)) = (tty, terminal::size()) {
                let _ = writer.resize(size);
            }
            continue;
        }
        if tx.send(Event::Signal(sig)).is_err() {
            return;
        }
    }
}

/// Our stdin, as it comes, then its end. A write that fails means the session is
/// over; the frame reader reports how.
fn forward_stdin(writer: &Writer) {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if writer.stdin(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = writer.close_stdin();
}

fn read_frames(mut session: Session, tx: &mpsc::Sender<Event>) {
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let event = loop {
        match session.next_frame() {
            Ok(Some((Kind::Stdout, b))) => {
                if stdout.write_all(&b).and_then(|()| stdout.flush()).is_err() {
                    break Event::OutputGone;
                }
            }
            Ok(Some((Kind::Stderr, b))) => {
                // Our stderr gone is no reason to stop the command.
                let _ = stderr.write_all(&b);
            }
            Ok(Some((Kind::Exit, b))) => match exec::parse_exit(&b) {
                Ok(exit) => break Event::Exit(exit),
                Err(e) => break Event::Broken(e.to_string()),
            },
            Ok(Some((kind, _))) => break Event::Broken(format!("the agent sent a {kind:?} frame")),
            Ok(None) => break Event::Broken("the agent closed it without an exit status".into()),
            Err(e) => break Event::Broken(e.to_string()),
        }
    };
    let _ = tx.send(event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::{ApiError, ErrorCode};

    fn refused(e: ApiError) -> ExecError {
        ExecError::Api {
            status: e.status(),
            body: serde_json::to_value(e).unwrap(),
        }
    }

    #[test]
    fn refusals_map_to_shell_like_codes() {
        let e = refused(ApiError::new(
            ErrorCode::NotFound,
            "command \"x\" not found",
        ));
        assert_eq!(refusal_code(&e), 127);
        let e =
            refused(ApiError::new(ErrorCode::BadRequest, "cannot execute").with_field("command"));
        assert_eq!(refusal_code(&e), 126);
        let e = refused(ApiError::new(ErrorCode::BadRequest, "no dir").with_field("workingDir"));
        assert_eq!(refusal_code(&e), 255);
        let e = refused(ApiError::new(ErrorCode::Forbidden, "no SHELL_INGRESS"));
        assert_eq!(refusal_code(&e), 255);
        let e = ExecError::Api {
            status: 502,
            body: serde_json::Value::Null,
        };
        assert_eq!(refusal_code(&e), 255);
    }

    #[test]
    fn only_sessions_that_did_not_end_by_themselves_get_a_note() {
        let mut exit = ExitFrame {
            exit_code: Some(0),
            signal: None,
            reason: EndReason::Exited,
            message: None,
        };
        assert_eq!(end_note(&exit), None);
        exit.reason = EndReason::Timeout;
        assert!(end_note(&exit).unwrap().contains("--timeout-seconds"));
        exit.reason = EndReason::ProtocolError;
        exit.message = Some("bad frame".into());
        assert!(end_note(&exit).unwrap().contains("bad frame"));
    }
}
