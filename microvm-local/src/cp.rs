//! `microvm-local cp SRC DEST`: files into or out of a running MicroVM, one side
//! being `MICROVM_ID:/absolute/path`, with `docker cp`'s naming rules (see
//! [`place`]): into an existing directory under the source's own name, else as the
//! destination's name (a rename) in its existing parent directory.
//!
//! Tar streams both ways (the agent's `/v1/files`): a directory and everything in it,
//! modes, numeric owners and modification times kept, symlinks copied as symlinks.
//! Locally, owners are kept only when running as root.

use crate::connect;
use crate::exec::{files, ExecError};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Local(PathBuf),
    /// `ID:/absolute/path`.
    Remote {
        id: String,
        path: PathBuf,
    },
}

/// `ID:/absolute/path` is remote: an id (no `/`) before the first `:`, an absolute
/// path after it. Anything else is a local path (`./a:b`, `a:b`).
pub fn operand(arg: &str) -> Operand {
    match arg.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
            Operand::Remote {
                id: id.to_string(),
                path: PathBuf::from(path),
            }
        }
        _ => Operand::Local(PathBuf::from(arg)),
    }
}

/// A validated `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpArgs {
    In {
        local: PathBuf,
        id: String,
        remote: PathBuf,
    },
    Out {
        id: String,
        remote: PathBuf,
        local: PathBuf,
    },
}

/// SRC and DEST of the command line: exactly one of them remote.
pub fn args(src: &str, dst: &str) -> Result<CpArgs, String> {
    match (operand(src), operand(dst)) {
        (Operand::Local(local), Operand::Remote { id, path }) => Ok(CpArgs::In {
            local,
            id,
            remote: path,
        }),
        (Operand::Remote { id, path }, Operand::Local(local)) => Ok(CpArgs::Out {
            id,
            remote: path,
            local,
        }),
        _ => Err(
            "cp: exactly one of SRC and DEST must be MICROVM_ID:/absolute/path, the other a local path"
                .into(),
        ),
    }
}

/// What a path is, as far as naming goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Dir,
    NotDir,
}

/// Where a copy lands: the directory it is unpacked into and the name of its top
/// entry there (`None`: the source's own name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub dir: PathBuf,
    pub name: Option<OsString>,
}

/// `docker cp`'s rules, given what the destination is (`None`: missing) and, when it
/// is missing, what its parent is:
/// - an existing directory: the source goes inside it, under its own name;
/// - an existing file (or symlink): a file replaces it, a directory is refused;
/// - missing: its parent must be an existing directory, and the source is copied
///   there under the destination's name (`DEST/` with a trailing slash must exist).
pub fn place(
    dst: &Path,
    dst_kind: Option<PathKind>,
    parent_kind: Option<PathKind>,
    src_is_dir: bool,
) -> Result<Placement, String> {
    let shown = dst.display();
    match dst_kind {
        Some(PathKind::Dir) => {
            return Ok(Placement {
                dir: dst.to_path_buf(),
                name: None,
            })
        }
        Some(PathKind::NotDir) if src_is_dir => {
            return Err(format!(
                "cannot copy a directory onto {shown}, which is not one"
            ))
        }
        _ => {}
    }
    let bytes = dst.as_os_str().as_bytes();
    if bytes.ends_with(b"/") || bytes.ends_with(b"/.") {
        return Err(format!("{shown}: no such directory"));
    }
    let (Some(name), Some(parent)) = (dst.file_name(), dst.parent()) else {
        return Err(format!("{shown} names no file"));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if dst_kind.is_none() && parent_kind != Some(PathKind::Dir) {
        return Err(match parent_kind {
            None => format!("{shown}: its directory {} does not exist", parent.display()),
            Some(_) => format!("{shown}: {} is not a directory", parent.display()),
        });
    }
    Ok(Placement {
        dir: parent.to_path_buf(),
        name: Some(name.to_os_string()),
    })
}

/// The name a local source's entries take: its last component, or for `.`, `..` and
/// the like, the name of the directory it resolves to.
pub fn source_name(src: &Path) -> io::Result<OsString> {
    if let Some(n) = src.file_name() {
        return Ok(n.to_os_string());
    }
    std::fs::canonicalize(src)?
        .file_name()
        .map(OsStr::to_os_string)
        .ok_or_else(|| {
            io::Error::other(format!(
                "{}: name a file or directory below /",
                src.display()
            ))
        })
}

/// A tar stream of local `src` (a file, a symlink, or a directory and everything
/// below it, symlinks not followed) whose top entry is `name`: modes, numeric owners
/// and modification times as they are.
pub fn tar_of(src: &Path, name: &OsStr, out: &mut dyn Write) -> io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let with_path =
        |e: io::Error| io::Error::new(e.kind(), format!("{}: {}", src.display(), chain(&e)));
    if std::fs::symlink_metadata(src).map_err(with_path)?.is_dir() {
        b.append_dir_all(name, src).map_err(with_path)?;
    } else {
        b.append_path_with_name(src, name).map_err(with_path)?;
    }
    b.finish()
}

/// Unpack `archive`, whose top entry is `src_name`, into the local directory `dir`
/// with its top entry named `name`. Under the same name it is unpacked in place (into
/// what is there, as `docker cp` merges); under another, into a scratch directory
/// beside it first, then renamed, so that a failure leaves nothing half made.
pub fn unpack(dir: &Path, archive: impl Read, src_name: &OsStr, name: &OsStr) -> io::Result<()> {
    let open = |r| {
        let mut a = tar::Archive::new(r);
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.set_overwrite(true);
        // Only root may give files away.
        a.set_preserve_ownerships(nix::unistd::geteuid().is_root());
        a
    };
    if name == src_name {
        return open(archive).unpack(dir);
    }
    let scratch = Scratch::new(dir)?;
    open(archive).unpack(&scratch.0)?;
    let made = scratch.0.join(src_name);
    if std::fs::symlink_metadata(&made).is_err() {
        return Err(io::Error::other(format!(
            "the archive holds no {}",
            Path::new(src_name).display()
        )));
    }
    std::fs::rename(&made, dir.join(name))
}

/// A scratch directory in `dir`, removed with whatever is left in it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(dir: &Path) -> io::Result<Scratch> {
        let p = dir.join(format!(
            ".microvm-cp-{}-{}",
            std::process::id(),
            crate::host::now_nanos()
        ));
        std::fs::create_dir(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A failure and its exit code.
struct Failure {
    line: String,
    code: i32,
}

impl From<connect::ConnectError> for Failure {
    fn from(e: connect::ConnectError) -> Self {
        Failure {
            line: format!("microvm-local: {e}"),
            code: e.exit_code(),
        }
    }
}

fn failed(m: impl std::fmt::Display) -> Failure {
    Failure {
        line: format!("microvm-local: cp: {m}"),
        code: 255,
    }
}

/// An error and its causes (the tar crate names the entry, its cause says why).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// An agent's error, with the remote path it concerns.
fn remote_failed(id: &str, path: &Path, e: ExecError) -> Failure {
    failed(format!("{id}:{}: {}", path.display(), e.message()))
}

/// The command: an exit code (0, 254 without such a MicroVM, 255 otherwise).
pub fn main(a: &CpArgs) -> i32 {
    let r = match a {
        CpArgs::In { local, id, remote } => copy_in(local, id, remote),
        CpArgs::Out { id, remote, local } => copy_out(id, remote, local),
    };
    match r {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("{}", f.line);
            f.code
        }
    }
}

/// What a guest path is; a symlink counts as a directory when it leads to one.
fn remote_kind(id: &str, path: &Path) -> Result<Option<PathKind>, Failure> {
    let head = |p: &Path| -> Result<Option<String>, Failure> {
        files::file_type(connect::control(id)?, p).map_err(|e| remote_failed(id, p, e))
    };
    Ok(match head(path)?.as_deref() {
        None => None,
        Some("directory") => Some(PathKind::Dir),
        Some("symlink") => {
            // `P/.` resolves through the link: a directory if it leads to one.
            let through = PathBuf::from(format!("{}/.", path.display()));
            match head(&through)?.as_deref() {
                Some("directory") => Some(PathKind::Dir),
                _ => Some(PathKind::NotDir),
            }
        }
        Some(_) => Some(PathKind::NotDir),
    })
}

fn local_kind(path: &Path) -> Option<PathKind> {
    std::fs::metadata(path).ok().map(|m| match m.is_dir() {
        true => PathKind::Dir,
        false => PathKind::NotDir,
    })
}

fn parent_or_dot(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn copy_in(local: &Path, id: &str, remote: &Path) -> Result<(), Failure> {
    let meta = std::fs::symlink_metadata(local)
        .map_err(|e| failed(format!("{}: {e}", local.display())))?;
    let src_name = source_name(local).map_err(failed)?;
    let dst_kind = remote_kind(id, remote)?;
    let parent_kind = match dst_kind {
        None => remote_kind(id, parent_or_dot(remote))?,
        Some(_) => None,
    };
    let at = place(remote, dst_kind, parent_kind, meta.is_dir())
        .map_err(|m| failed(format!("in MicroVM {id}: {m}")))?;
    let name = at.name.unwrap_or(src_name);
    files::put_with(connect::control(id)?, &at.dir, |w| tar_of(local, &name, w))
        .map(drop)
        .map_err(|e| match e {
            ExecError::Api { .. } => remote_failed(id, &at.dir, e),
            ExecError::Io(e) => failed(chain(&e)),
            e => failed(e),
        })
}

fn copy_out(id: &str, remote: &Path, local: &Path) -> Result<(), Failure> {
    let src_kind = files::file_type(connect::control(id)?, remote)
        .map_err(|e| remote_failed(id, remote, e))?
        .ok_or_else(|| {
            failed(format!(
                "{id}:{}: no such file or directory",
                remote.display()
            ))
        })?;
    let src_name = remote
        .file_name()
        .ok_or_else(|| {
            failed(format!(
                "{id}:{}: name a file or directory below /",
                remote.display()
            ))
        })?
        .to_os_string();
    let dst_kind = local_kind(local);
    let parent_kind = match dst_kind {
        None => local_kind(parent_or_dot(local)),
        Some(_) => None,
    };
    let at = place(local, dst_kind, parent_kind, src_kind == "directory").map_err(failed)?;
    let name = at.name.unwrap_or_else(|| src_name.clone());
    let mut download =
        files::download(connect::control(id)?, remote).map_err(|e| remote_failed(id, remote, e))?;
    unpack(&at.dir, &mut download, &src_name, &name)
        .and_then(|()| download.finish())
        .map_err(|e| {
            failed(format!(
                "{id}:{} -> {}: {e}",
                remote.display(),
                at.dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("microvm-local-cp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn operands_and_the_one_remote_side() {
        assert_eq!(
            operand("mvm-1:/tmp/x"),
            Operand::Remote {
                id: "mvm-1".into(),
                path: "/tmp/x".into()
            }
        );
        for local in ["./a:/b", "a:b", ":/x", "plain", "/abs/path", "dir/x:/y"] {
            assert_eq!(operand(local), Operand::Local(local.into()), "{local}");
        }
        assert!(matches!(args("f", "m:/tmp"), Ok(CpArgs::In { .. })));
        assert!(matches!(args("m:/tmp/f", "."), Ok(CpArgs::Out { .. })));
        assert!(args("a", "b").is_err());
        assert!(args("m:/a", "n:/b").is_err());
    }

    fn dir_ok(p: &str) -> Placement {
        Placement {
            dir: p.into(),
            name: None,
        }
    }

    fn renamed(d: &str, n: &str) -> Placement {
        Placement {
            dir: d.into(),
            name: Some(n.into()),
        }
    }

    #[test]
    fn docker_cp_naming_rules() {
        use PathKind::*;
        let p = |dst: &str, k, pk, dir| place(Path::new(dst), k, pk, dir);
        // Into an existing directory, under the source's name.
        assert_eq!(p("/tmp", Some(Dir), None, true), Ok(dir_ok("/tmp")));
        assert_eq!(p("/tmp/", Some(Dir), None, false), Ok(dir_ok("/tmp/")));
        assert_eq!(p(".", Some(Dir), None, false), Ok(dir_ok(".")));
        // Onto an existing file: a file replaces it, a directory cannot.
        assert_eq!(
            p("/etc/motd", Some(NotDir), None, false),
            Ok(renamed("/etc", "motd"))
        );
        assert!(p("/etc/motd", Some(NotDir), None, true)
            .unwrap_err()
            .contains("cannot copy a directory"));
        // Missing: a rename into its existing parent.
        assert_eq!(
            p("/tmp/new", None, Some(Dir), true),
            Ok(renamed("/tmp", "new"))
        );
        assert_eq!(p("new", None, Some(Dir), false), Ok(renamed(".", "new")));
        assert_eq!(p("a/new", None, Some(Dir), false), Ok(renamed("a", "new")));
        assert!(p("/no/new", None, None, false)
            .unwrap_err()
            .contains("does not exist"));
        assert!(p("/f/new", None, Some(NotDir), false)
            .unwrap_err()
            .contains("is not a directory"));
        // DEST/ must be a directory that exists.
        assert!(p("/tmp/new/", None, Some(Dir), false)
            .unwrap_err()
            .contains("no such directory"));
        assert!(p("/", None, None, false).is_err());
    }

    #[test]
    fn a_tree_goes_to_tar_and_back_under_a_new_name_keeping_modes_and_links() {
        let d = scratch("tree");
        let src = d.join("tree");
        std::fs::create_dir_all(src.join("deep")).unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::fs::write(src.join("deep/secret"), "s").unwrap();
        std::fs::set_permissions(
            src.join("deep/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("link")).unwrap();
        let mut archive = Vec::new();
        tar_of(&src, OsStr::new("renamed"), &mut archive).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&archive[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            names.push((
                // Directory entries end in '/'.
                e.path()
                    .unwrap()
                    .display()
                    .to_string()
                    .trim_end_matches('/')
                    .to_string(),
                h.entry_type(),
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
            ));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let uid = nix::unistd::geteuid().as_raw() as u64;
        let paths: Vec<_> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "renamed",
                "renamed/deep",
                "renamed/deep/secret",
                "renamed/link",
                "renamed/run.sh"
            ]
        );
        assert_eq!(names[3].1, tar::EntryType::Symlink);
        assert_eq!((names[4].2, names[4].3), (0o750, uid));
        assert_eq!(names[2].2, 0o600);

        // Back out: in place under the same name, and renamed through a scratch dir.
        let out = d.join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(
            &out,
            &archive[..],
            OsStr::new("renamed"),
            OsStr::new("renamed"),
        )
        .unwrap();
        unpack(
            &out,
            &archive[..],
            OsStr::new("renamed"),
            OsStr::new("again"),
        )
        .unwrap();
        for top in ["renamed", "again"] {
            let t = out.join(top);
            assert_eq!(
                std::fs::metadata(t.join("run.sh")).unwrap().mode() & 0o7777,
                0o750
            );
            assert_eq!(
                std::fs::metadata(t.join("deep/secret")).unwrap().mode() & 0o7777,
                0o600
            );
            assert_eq!(
                std::fs::read_link(t.join("link")).unwrap(),
                Path::new("run.sh")
            );
            assert_eq!(
                std::fs::metadata(t.join("run.sh")).unwrap().mtime(),
                std::fs::metadata(src.join("run.sh")).unwrap().mtime()
            );
        }
        let mut left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["again", "renamed"], "no scratch directory left");
        // An archive without the expected top entry fails and leaves nothing.
        let e = unpack(&out, &archive[..], OsStr::new("other"), OsStr::new("x")).unwrap_err();
        assert!(e.to_string().contains("holds no other"), "{e}");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
        // A single file under a new name replaces an existing one.
        let mut one = Vec::new();
        tar_of(&src.join("run.sh"), OsStr::new("run.sh"), &mut one).unwrap();
        std::fs::write(out.join("target"), "old").unwrap();
        unpack(&out, &one[..], OsStr::new("run.sh"), OsStr::new("target")).unwrap();
        assert_eq!(std::fs::read(out.join("target")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            source_name(Path::new(".")).unwrap(),
            std::env::current_dir().unwrap().file_name().unwrap()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
