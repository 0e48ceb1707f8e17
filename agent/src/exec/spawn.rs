//! From an exec request to a running process: validation, the user, the environment,
//! a pseudo-terminal or pipes, and the spawn through the agent's one reaper.

use super::pty;
use crate::supervisor::privileges::{self, Identity};
use crate::supervisor::Reaper;
use microvm_protocol::exec::{ExecRequest, TtySize, MAX_ARGS};
use microvm_protocol::status::Exit;
use microvm_protocol::{ApiError, ErrorCode};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::sync::oneshot;

/// `PATH` when neither the application's environment nor the request has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `TERM` of a terminal session whose request names none.
pub const DEFAULT_TERM: &str = "xterm";
/// The longest `timeoutSeconds` (a week): longer is a mistake, not a plan.
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// What every session starts from, fixed at boot.
#[derive(Debug, Clone, Default)]
pub struct Base {
    /// The application's environment (the image config's, with `PATH`).
    pub env: Vec<(String, String)>,
    /// Children get the default OOM score back (the agent made itself -1000).
    pub reset_oom_score: bool,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub identity: Identity,
    pub timeout: Option<Duration>,
    pub tty: Option<TtySize>,
}

fn bad(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, msg).with_field(field)
}

/// Check a request and decide its environment and identity (`passwd` and `group` are
/// the image's user database texts).
pub fn plan(req: ExecRequest, base: &Base, passwd: &str, group: &str) -> Result<Plan, ApiError> {
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(bad(
            "command",
            "command is empty: give argv, e.g. [\"sh\", \"-c\", \"...\"]",
        ));
    }
    if req.command.len() > MAX_ARGS {
        return Err(bad(
            "command",
            format!(
                "{} arguments exceed the limit of {MAX_ARGS}",
                req.command.len()
            ),
        ));
    }
    if let Some(i) = req.command.iter().position(|a| a.contains('\0')) {
        return Err(bad(&format!("command[{i}]"), "contains a NUL byte"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(bad(
                &format!("env.{k}"),
                "a variable name must be non-empty without '=' or NUL, its value without NUL",
            ));
        }
    }
    let working_dir = req.working_dir.unwrap_or_else(|| "/".into());
    if !working_dir.starts_with('/') || working_dir.contains('\0') {
        return Err(bad(
            "workingDir",
            format!("{working_dir:?} is not an absolute path"),
        ));
    }
    let timeout = match req.timeout_seconds {
        Some(0) => return Err(bad("timeoutSeconds", "must be at least 1")),
        Some(n) if n > MAX_TIMEOUT_SECONDS => {
            return Err(bad(
                "timeoutSeconds",
                format!("{n} exceeds the limit of {MAX_TIMEOUT_SECONDS}"),
            ))
        }
        n => n.map(Duration::from_secs),
    };
    let identity = match &req.user {
        Some(u) => privileges::resolve(u, passwd, group).map_err(|e| bad("user", e.to_string()))?,
        None => privileges::resolve("0", passwd, group).unwrap_or(Identity {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: None,
        }),
    };
    let mut env: Vec<(String, String)> = base.env.clone();
    let mut set = |k: &str, v: String, replace: bool| match env.iter_mut().find(|(key, _)| key == k)
    {
        Some(e) if replace => e.1 = v,
        Some(_) => {}
        None => env.push((k.to_string(), v)),
    };
    set("PATH", DEFAULT_PATH.into(), false);
    set(
        "HOME",
        identity.home.clone().unwrap_or_else(|| "/".into()),
        true,
    );
    if req.tty.is_some() {
        set("TERM", DEFAULT_TERM.into(), false);
    }
    for (k, v) in req.env {
        set(&k, v, true);
    }
    Ok(Plan {
        command: req.command,
        env,
        working_dir,
        identity,
        timeout,
        tty: req.tty,
    })
}

/// The agent's ends of the process's standard streams.
pub enum Streams {
    /// stdin (write end), stdout and stderr (read ends).
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The terminal's master side: the one stream both ways.
    Pty { master: OwnedFd },
}

pub struct Spawned {
    /// Also the process group's id: the process leads its own group.
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    pub streams: Streams,
}

/// A spawn failure as the host sees it: a missing command is 404 (the runner exits
/// 127, as a shell does), one that cannot be executed 400 on `command` (126).
fn spawn_error(e: std::io::Error, plan: &Plan) -> ApiError {
    let what = &plan.command[0];
    match e.raw_os_error() {
        Some(libc::ENOENT) if !std::path::Path::new(&plan.working_dir).is_dir() => bad(
            "workingDir",
            format!("working directory {} does not exist", plan.working_dir),
        ),
        Some(libc::ENOENT) => ApiError::new(
            ErrorCode::NotFound,
            format!("command {what:?} not found (PATH and the image's files)"),
        ),
        Some(libc::ENOTDIR) => bad(
            "workingDir",
            format!("{} is not a directory", plan.working_dir),
        ),
        Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EPERM) => {
            bad("command", format!("cannot execute {what:?}: {e}"))
        }
        _ => ApiError::new(ErrorCode::InternalError, format!("starting {what:?}: {e}")),
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InternalError, format!("{what}: {e}"))
}

/// Start the planned process in a process group (a session, with a terminal) of its
/// own, as its user, through the reaper.
pub fn spawn(plan: &Plan, base: &Base, reaper: &Reaper) -> Result<Spawned, ApiError> {
    let mut cmd = Command::new(&plan.command[0]);
    cmd.args(&plan.command[1..])
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&plan.working_dir);
    let (streams, child_pty) = match plan.tty {
        Some(size) => {
            let p = pty::open(size).map_err(|e| io_error("opening a pseudo-terminal", e))?;
            let slave = |fd: &OwnedFd| {
                fd.try_clone()
                    .map(Stdio::from)
                    .map_err(|e| io_error("duplicating the terminal", e))
            };
            cmd.stdin(slave(&p.slave)?)
                .stdout(slave(&p.slave)?)
                .stderr(slave(&p.slave)?);
            (Streams::Pty { master: p.master }, true)
        }
        None => {
            let pipe = || pty::pipe().map_err(|e| io_error("creating a pipe", e));
            let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
            cmd.stdin(Stdio::from(in_r))
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w))
                // A group of its own: a timeout or a signal frame reaches its whole tree.
                .process_group(0);
            (
                Streams::Pipes {
                    stdin: in_w,
                    stdout: out_r,
                    stderr: err_r,
                },
                false,
            )
        }
    };
    let id = plan.identity.clone();
    let groups: Vec<libc::gid_t> = id.groups.clone();
    let reset = base.reset_oom_score;
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (setsid, ioctl, open/write/close, raw set*id) on values
    // prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if child_pty {
                // A session of its own whose controlling terminal is the pty: job
                // control, ^C and SIGWINCH reach its foreground group.
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
            }
            if reset {
                crate::supervisor::cgroup::reset_oom_score_in_child()?;
            }
            // Raw system calls, as in supervisor/privileges.rs: musl's wrappers
            // synchronise every thread of the parent, which a forked child does not
            // have (and whose lock another thread may have held at the fork).
            let sys = |r: libc::c_long| check(if r < 0 { -1 } else { 0 });
            sys(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            sys(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid))?;
            sys(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid))?;
            Ok(())
        });
    }
    let (pid, exit) = reaper.spawn(&mut cmd).map_err(|e| spawn_error(e, plan))?;
    // The child's ends (in `cmd`) close with it, so the agent sees EOF when it exits.
    drop(cmd);
    Ok(Spawned { pid, exit, streams })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:nobody\n";

    fn req(command: &[&str]) -> ExecRequest {
        ExecRequest {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn environment_layers_base_defaults_and_request() {
        let base = Base {
            env: vec![
                ("APP".into(), "1".into()),
                ("PATH".into(), "/app/bin".into()),
            ],
            reset_oom_score: false,
        };
        let mut r = req(&["sh"]);
        r.env.insert("APP".into(), "2".into());
        r.tty = Some(TtySize { rows: 1, cols: 2 });
        r.user = Some("nobody".into());
        let p = plan(r, &base, PASSWD, GROUP).unwrap();
        let get = |k: &str| {
            p.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("APP"), Some("2"));
        assert_eq!(
            get("PATH"),
            Some("/app/bin"),
            "the application's PATH stays"
        );
        assert_eq!(get("HOME"), Some("/nonexistent"));
        assert_eq!(get("TERM"), Some(DEFAULT_TERM));
        assert_eq!(p.identity.uid, 65534);
        assert_eq!(p.identity.groups, vec![65534, 50]);
        assert_eq!(p.working_dir, "/");
        let p = plan(req(&["true"]), &Base::default(), "", "").unwrap();
        assert_eq!(
            p.identity.uid, 0,
            "root by default, even without /etc/passwd"
        );
        assert_eq!(
            p.env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str()),
            Some(DEFAULT_PATH)
        );
        assert!(
            !p.env.iter().any(|(k, _)| k == "TERM"),
            "no terminal, no TERM"
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let field = |r: ExecRequest| plan(r, &Base::default(), PASSWD, GROUP).unwrap_err().field;
        assert_eq!(field(req(&[])), Some("command".into()));
        assert_eq!(field(req(&[""])), Some("command".into()));
        assert_eq!(field(req(&["a", "b\0"])), Some("command[1]".into()));
        let mut r = req(&["x"]);
        r.working_dir = Some("tmp".into());
        assert_eq!(field(r), Some("workingDir".into()));
        let mut r = req(&["x"]);
        r.user = Some("ghost".into());
        assert_eq!(field(r), Some("user".into()));
        let mut r = req(&["x"]);
        r.env.insert("A=B".into(), "v".into());
        assert_eq!(field(r), Some("env.A=B".into()));
        let mut r = req(&["x"]);
        r.timeout_seconds = Some(0);
        assert_eq!(field(r), Some("timeoutSeconds".into()));
        let mut r = req(&["x"]);
        r.timeout_seconds = Some(MAX_TIMEOUT_SECONDS + 1);
        assert_eq!(field(r), Some("timeoutSeconds".into()));
        let many: Vec<&str> = vec!["a"; MAX_ARGS + 1];
        assert_eq!(field(req(&many)), Some("command".into()));
    }
}
