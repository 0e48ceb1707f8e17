//! Exec and files on the control channel (only when the run enabled shell ingress).
//!
//! **Exec.** `POST /v1/exec` with an [`ExecRequest`] body and the headers
//! `Connection: Upgrade`, `Upgrade: microvm-exec`. A request the agent refuses is
//! answered as any other (an [`ApiError`](crate::ApiError)); a started process is
//! answered `101 Switching Protocols` (with [`PID_HEADER`]), and the connection then
//! carries frames both ways until the agent sends [`Kind::Exit`] and closes.
//!
//! A frame is a 5-byte header, the [`Kind`] byte and the payload length (u32,
//! big-endian), then the payload, at most [`MAX_FRAME`] bytes:
//! - host to guest: [`Kind::Stdin`] (empty: end of input), [`Kind::Resize`] (rows and
//!   cols, two u16 BE), [`Kind::Signal`] (the signal number, i32 BE, sent to the
//!   process group);
//! - guest to host: [`Kind::Stdout`], [`Kind::Stderr`] (never with a terminal, whose
//!   one stream is stdout), and last [`Kind::Exit`], an [`ExitFrame`] in JSON.
//!
//! **Files.** `GET /v1/files?path=P` answers a tar stream of `P` (a file, or a
//! directory and everything below it) whose entries are named from `P`'s last
//! component; `HEAD` answers whether it exists and its [`TYPE_HEADER`]. `PUT
//! /v1/files?path=D` takes a tar stream and unpacks it into the existing directory
//! `D`, each file written to a temporary name and renamed into place, keeping
//! modes, numeric owners and modification times; the answer is a [`FilesPut`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `Upgrade` token of an exec request.
pub const UPGRADE: &str = "microvm-exec";
/// The 101 answer's header with the started process's pid (its process group).
pub const PID_HEADER: &str = "x-microvm-exec-pid";
/// `HEAD /v1/files`: `file`, `directory`, `symlink` or `other`.
pub const TYPE_HEADER: &str = "x-microvm-file-type";
/// Largest frame payload either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Frame header length.
pub const HEADER_LEN: usize = 5;
/// Sessions the agent runs at once; one more is refused with 429.
pub const MAX_SESSIONS: usize = 32;
/// Longest command line (arguments) of a request.
pub const MAX_ARGS: usize = 4096;

/// What to start.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// argv; `command[0]` is looked up in `PATH` when it has no `/`.
    pub command: Vec<String>,
    /// Added to (and overriding) the base environment: the application's, `PATH`,
    /// `HOME` of the user, and `TERM` with a terminal.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Absolute; default `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved against the image's
    /// `/etc/passwd` and `/etc/group`; default root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The process group is killed (SIGKILL) this long after the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// A pseudo-terminal of this size; without it stdin, stdout and stderr are pipes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Resize = 3,
    Signal = 4,
    Exit = 5,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdin,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Resize,
            4 => Kind::Signal,
            5 => Kind::Exit,
            _ => return None,
        })
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EndReason {
    /// The process ended by itself (or by a signal the host sent).
    Exited,
    /// `timeoutSeconds` passed; the process group was killed.
    Timeout,
    /// The MicroVM is being suspended; the process group was killed.
    Suspend,
    /// The MicroVM is being terminated; the process group was killed.
    Terminate,
    /// The host broke the frame protocol; the process group was killed.
    ProtocolError,
}

/// The last frame of a session.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitFrame {
    /// The exit code, if the process exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal's name (`SIGKILL`), if a signal ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub reason: EndReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExitFrame {
    /// The exit status a shell would report: the code, or 128 + the signal number.
    pub fn shell_status(&self, signal_number: impl Fn(&str) -> Option<i32>) -> i32 {
        match (self.exit_code, &self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + signal_number(s).unwrap_or(0),
            (None, None) => 255,
        }
    }
}

/// The answer to `PUT /v1/files`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FilesPut {
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    pub bytes: u64,
}

/// A frame's header.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let n = (len as u32).to_be_bytes();
    [kind as u8, n[0], n[1], n[2], n[3]]
}

/// A whole frame (header and payload); `payload` must not exceed [`MAX_FRAME`].
pub fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header(kind, payload.len()));
    v.extend_from_slice(payload);
    v
}

/// What a header says, or why it is not one.
pub fn parse_header(h: [u8; HEADER_LEN]) -> Result<(Kind, usize), String> {
    let kind = Kind::from_byte(h[0]).ok_or_else(|| format!("unknown frame kind {}", h[0]))?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "{kind:?} frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));
    }
    Ok((kind, len))
}

/// A resize frame's payload.
pub fn resize_payload(size: TtySize) -> [u8; 4] {
    let (r, c) = (size.rows.to_be_bytes(), size.cols.to_be_bytes());
    [r[0], r[1], c[0], c[1]]
}

pub fn parse_resize(p: &[u8]) -> Option<TtySize> {
    match p {
        [r0, r1, c0, c1] => Some(TtySize {
            rows: u16::from_be_bytes([*r0, *r1]),
            cols: u16::from_be_bytes([*c0, *c1]),
        }),
        _ => None,
    }
}

pub fn parse_signal(p: &[u8]) -> Option<i32> {
    <[u8; 4]>::try_from(p).ok().map(i32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_headers_are_named() {
        let f = frame(Kind::Stdout, b"hi");
        assert_eq!(f, [1, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(parse_header([1, 0, 0, 0, 2]), Ok((Kind::Stdout, 2)));
        assert_eq!(
            parse_header([9, 0, 0, 0, 0]),
            Err("unknown frame kind 9".into())
        );
        let big = header(Kind::Stdin, MAX_FRAME + 1);
        assert!(parse_header(big).unwrap_err().contains("exceeds"));
        assert_eq!(
            parse_header(header(Kind::Stdin, MAX_FRAME)),
            Ok((Kind::Stdin, MAX_FRAME))
        );
        let s = TtySize {
            rows: 40,
            cols: 132,
        };
        assert_eq!(parse_resize(&resize_payload(s)), Some(s));
        assert_eq!(parse_resize(&[1, 2, 3]), None);
        assert_eq!(parse_signal(&15i32.to_be_bytes()), Some(15));
        assert_eq!(parse_signal(&[0; 5]), None);
    }

    #[test]
    fn request_and_exit_wire_forms() {
        let r: ExecRequest = serde_json::from_str(
            r#"{"command":["sh","-c","true"],"env":{"A":"1"},"workingDir":"/tmp","user":"1000:1000","timeoutSeconds":5,"tty":{"rows":24,"cols":80}}"#,
        )
        .unwrap();
        assert_eq!(r.tty, Some(TtySize { rows: 24, cols: 80 }));
        assert!(serde_json::from_str::<ExecRequest>(r#"{"command":["x"],"cwd":"/"}"#).is_err());
        let e = ExitFrame {
            exit_code: None,
            signal: Some("SIGKILL".into()),
            reason: EndReason::Timeout,
            message: None,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"signal":"SIGKILL","reason":"timeout"})
        );
        assert_eq!(e.shell_status(|_| Some(9)), 137);
    }
}
