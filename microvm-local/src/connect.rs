//! The way to a MicroVM another `microvm-local run-microvm` runs: by its `microvmId`,
//! through the directory that runner keeps (`$TMPDIR/microvm-local/<id>`) and the
//! hybrid vsock socket in it, to the agent's control channel. The errors say why a
//! MicroVM cannot be reached, in words for a person, with their exit codes.

use crate::vm;
use microvm_protocol::{limits, ports};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Where the runner of MicroVM `id` keeps its files.
pub fn microvm_dir(id: &str) -> PathBuf {
    std::env::temp_dir().join("microvm-local").join(id)
}

/// Why a MicroVM could not be reached.
#[derive(Debug)]
pub enum ConnectError {
    /// No runner keeps a MicroVM of that id (exit 254, as run-microvm's
    /// ResourceNotFound).
    NotRunning { id: String, dir: PathBuf },
    /// Suspended to a file: nothing runs to answer until its runner resumes it.
    Suspended { id: String },
    /// The vsock backend took the connection but the guest never answered (paused:
    /// suspended in memory, or wedged).
    NoAnswer { id: String },
    /// Anything else (the agent does not listen on the control port, ...).
    Failed { id: String, error: io::Error },
}

impl ConnectError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ConnectError::NotRunning { .. } => 254,
            _ => 255,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::NotRunning { id, dir } => write!(
                f,
                "no running MicroVM {id} (its runner keeps {})",
                dir.display()
            ),
            ConnectError::Suspended { id } => write!(
                f,
                "MicroVM {id} is suspended (saved to a file): resume it from its runner first"
            ),
            ConnectError::NoAnswer { id } => write!(
                f,
                "MicroVM {id} does not answer on vsock within seconds: it is paused (suspended) or wedged"
            ),
            ConnectError::Failed { id, error } => {
                write!(f, "MicroVM {id}: no control channel: {error}")
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// A connected stream to the control channel of the agent of MicroVM `id`, without
/// a read timeout.
pub fn control(id: &str) -> Result<UnixStream, ConnectError> {
    let dir = microvm_dir(id);
    let not_running = || ConnectError::NotRunning {
        id: id.to_string(),
        dir: dir.clone(),
    };
    // An id is one path component: anything else names no MicroVM (and must not
    // reach outside the runner's directory).
    let plain = !id.is_empty()
        && id.len() <= limits::MAX_MICROVM_ID
        && !id.contains('/')
        && id != "."
        && id != "..";
    if !plain || !dir.is_dir() || vm::runner_alive(&dir) == Some(false) {
        return Err(not_running());
    }
    if vm::saved_in(&dir) {
        return Err(ConnectError::Suspended { id: id.to_string() });
    }
    control_at(&dir.join(vm::SOCKET)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => not_running(),
        io::ErrorKind::TimedOut => ConnectError::NoAnswer { id: id.to_string() },
        _ => ConnectError::Failed {
            id: id.to_string(),
            error: e,
        },
    })
}

/// A connected stream to the agent's control channel through the hybrid vsock socket
/// at `socket`, without a read timeout.
pub fn control_at(socket: &Path) -> io::Result<UnixStream> {
    vm::connect_hybrid(socket, ports::CONTROL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_name_nothing_are_not_running() {
        for id in ["", ".", "..", "a/b", "no-such-microvm-id-anywhere-7f3c"] {
            let e = control(id).unwrap_err();
            assert!(matches!(e, ConnectError::NotRunning { .. }), "{id}: {e}");
            assert_eq!(e.exit_code(), 254);
            assert!(e
                .to_string()
                .starts_with(&format!("no running MicroVM {id} (its runner keeps ")));
        }
    }
}
