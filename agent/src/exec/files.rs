//! Files in and out of the guest as tar streams: packing a file or tree, and
//! unpacking one into a directory with each file written to a temporary name and
//! renamed into place (a reader sees the old file or the new one, never a part),
//! keeping modes, numeric owners and modification times.
//!
//! Both directions are synchronous (the `tar` crate) and run on blocking threads fed
//! by channels of chunks; a full disk, a bad archive or a missing path is a typed
//! [`FilesError`] the control channel turns into its answer.

use hyper::body::Bytes;
use microvm_protocol::exec::EndReason;
use microvm_protocol::exec::FilesPut;
use microvm_protocol::{ApiError, ErrorCode};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the archive is not a valid tar stream: {0}")]
    BadArchive(String),
    #[error("no space left on the guest's disk writing {0}: free some space and retry")]
    Full(String),
    #[error("{0}")]
    Io(String),
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> ApiError {
        let code = match &e {
            FilesError::Missing(_) => ErrorCode::NotFound,
            FilesError::BadRequest(_) | FilesError::BadArchive(_) => ErrorCode::BadRequest,
            FilesError::Full(_) => ErrorCode::InsufficientStorage,
            FilesError::Io(_) => ErrorCode::InternalError,
        };
        ApiError::new(code, e.to_string())
    }
}

/// An I/O error writing `what`, a full disk named as such.
fn write_error(what: &Path, e: io::Error) -> FilesError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        FilesError::Full(what.display().to_string())
    } else {
        FilesError::Io(format!("writing {}: {e}", what.display()))
    }
}

/// An error reading the archive: the stream's own fault, or the disk's.
fn archive_error(e: io::Error, writing: &Path) -> FilesError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => FilesError::Full(writing.display().to_string()),
        Some(_) => FilesError::Io(format!("writing {}: {e}", writing.display())),
        None => FilesError::BadArchive(e.to_string()),
    }
}

/// The `path` query parameter, percent-decoded: absolute, and not `/` itself.
pub fn query_path(query: Option<&str>) -> Result<PathBuf, FilesError> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .ok_or_else(|| FilesError::BadRequest("give the path: ?path=/absolute/path".into()))?;
    let bytes = percent_decode(raw)
        .ok_or_else(|| FilesError::BadRequest(format!("path {raw:?} is badly percent-encoded")))?;
    let path =
        String::from_utf8(bytes).map_err(|_| FilesError::BadRequest("path is not UTF-8".into()))?;
    if !path.starts_with('/') || path.contains('\0') {
        return Err(FilesError::BadRequest(format!(
            "{path:?} is not an absolute path"
        )));
    }
    Ok(PathBuf::from(path))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// What `HEAD` reports of a path.
pub fn file_type(path: &Path) -> Result<&'static str, FilesError> {
    let m =
        fs::symlink_metadata(path).map_err(|_| FilesError::Missing(path.display().to_string()))?;
    let t = m.file_type();
    Ok(if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "other"
    })
}

/// Check that `path` can be packed; its entries are then named from its last
/// component.
pub fn check_source(path: &Path) -> Result<(), FilesError> {
    if path.file_name().is_none() {
        return Err(FilesError::BadRequest(format!(
            "{} names no file: give a file or directory below /",
            path.display()
        )));
    }
    fs::symlink_metadata(path).map_err(|_| FilesError::Missing(path.display().to_string()))?;
    Ok(())
}

/// Write a tar stream of `path` (a file, a symlink, or a directory and everything
/// below it, symlinks not followed) to `out`.
pub fn pack(path: &Path, out: impl Write) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    if fs::symlink_metadata(path)?.is_dir() {
        b.append_dir_all(name, path)?;
    } else {
        b.append_path_with_name(path, name)?;
    }
    b.into_inner()?.flush()
}

/// The directories' modes and times are set after their contents are in (a read-only
/// directory would refuse them), deepest first.
struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(dest: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.microvm-{}-{n}", std::process::id()))
}

/// A temporary file removed unless it was renamed into place.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// An archive entry's path below the destination: relative, without `..`.
fn entry_path(raw: &Path) -> Result<PathBuf, FilesError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(FilesError::BadArchive(format!(
                    "entry {} leaves the destination (absolute or with ..)",
                    raw.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Walk `rel`'s parent directories below `root`, never through a symlink (an archive
/// must not reach outside the directory it is unpacked into). Missing ones are made
/// and counted in `made` when it is given, else refused.
fn parents(root: &Path, rel: &Path, mut made: Option<&mut u64>) -> Result<(), FilesError> {
    let mut at = root.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FilesError::BadRequest(format!(
                    "{} exists and is not a directory",
                    at.display()
                )))
            }
            Err(_) => match made.as_deref_mut() {
                Some(made) => {
                    fs::create_dir(&at).map_err(|e| write_error(&at, e))?;
                    *made += 1;
                }
                None => {
                    return Err(FilesError::BadArchive(format!(
                        "{} is missing",
                        at.display()
                    )))
                }
            },
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u64, gid: u64) -> Result<(), FilesError> {
    std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))
        .map_err(|e| FilesError::Io(format!("chown {}: {e}", path.display())))
}

fn set_mtime(path: &Path, mtime: u64) {
    let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

/// Unpack a tar stream into the existing directory `root`.
pub fn unpack(root: &Path, input: impl Read) -> Result<FilesPut, FilesError> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(FilesError::BadRequest(format!(
                "{} is not a directory: give the directory to unpack into",
                root.display()
            )))
        }
        Err(_) => return Err(FilesError::Missing(root.display().to_string())),
    }
    let mut archive = tar::Archive::new(input);
    let mut put = FilesPut::default();
    let mut dirs: Vec<DirMeta> = Vec::new();
    let entries = archive.entries().map_err(|e| archive_error(e, root))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_error(e, root))?;
        let raw = entry
            .path()
            .map_err(|e| archive_error(e, root))?
            .into_owned();
        let rel = entry_path(&raw)?;
        let dest = root.join(&rel);
        let h = entry.header();
        let mode = h.mode().map_err(|e| archive_error(e, root))? & 0o7777;
        let uid = h.uid().map_err(|e| archive_error(e, root))?;
        let gid = h.gid().map_err(|e| archive_error(e, root))?;
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        if rel.as_os_str().is_empty() {
            // `.`: the destination itself, which exists and keeps its own mode.
            continue;
        }
        parents(root, &rel, Some(&mut put.directories))?;
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(FilesError::BadRequest(format!(
                            "{} exists and is not a directory",
                            dest.display()
                        )))
                    }
                    Err(_) => {
                        fs::create_dir(&dest).map_err(|e| write_error(&dest, e))?;
                        put.directories += 1;
                    }
                }
                dirs.push(DirMeta {
                    path: dest,
                    mode,
                    uid,
                    gid,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let tmp = temp_name(&dest);
                let mut guard = Temp(Some(tmp.clone()));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| write_error(&dest, e))?;
                let size = entry.size();
                let n = io::copy(&mut entry, &mut f).map_err(|e| archive_error(e, &dest))?;
                // The crate reads a cut stream as a short entry, not an error.
                if n != size {
                    return Err(FilesError::BadArchive(format!(
                        "the stream ends inside {} ({n} of its {size} bytes)",
                        raw.display()
                    )));
                }
                put.bytes += n;
                drop(f);
                chown(&tmp, uid, gid)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                    .map_err(|e| write_error(&dest, e))?;
                set_mtime(&tmp, mtime);
                fs::rename(&tmp, &dest).map_err(|e| match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => FilesError::BadRequest(format!(
                        "{} is a directory; the archive has a file there",
                        dest.display()
                    )),
                    _ => write_error(&dest, e),
                })?;
                guard.0 = None;
                put.files += 1;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| archive_error(e, root))?
                    .ok_or_else(|| {
                        FilesError::BadArchive(format!("link {} has no target", raw.display()))
                    })?
                    .into_owned();
                let tmp = temp_name(&dest);
                let mut guard = Temp(Some(tmp.clone()));
                if kind == tar::EntryType::Symlink {
                    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| write_error(&dest, e))?;
                    chown(&tmp, uid, gid)?;
                } else {
                    // A hard link names a file already unpacked here. link(2) follows
                    // symlinks in the target's directories, so they are walked like an
                    // entry's own, and the target itself must be a file, not a link.
                    let from_rel = entry_path(&target)?;
                    parents(root, &from_rel, None)?;
                    let from = root.join(&from_rel);
                    if !fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
                        return Err(FilesError::BadArchive(format!(
                            "hard link {} to {}: the target is not a file unpacked here",
                            raw.display(),
                            target.display()
                        )));
                    }
                    fs::hard_link(&from, &tmp).map_err(|e| {
                        FilesError::BadArchive(format!(
                            "hard link {} to {}: {e}",
                            raw.display(),
                            target.display()
                        ))
                    })?;
                }
                fs::rename(&tmp, &dest).map_err(|e| write_error(&dest, e))?;
                guard.0 = None;
                put.links += 1;
            }
            // Headers of the format itself; the crate folds them into entries.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(FilesError::BadRequest(format!(
                    "entry {} is a {other:?}; only files, directories and links are unpacked",
                    raw.display()
                )))
            }
        }
    }
    for d in dirs.iter().rev() {
        chown(&d.path, d.uid, d.gid)?;
        fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
            .map_err(|e| write_error(&d.path, e))?;
        set_mtime(&d.path, d.mtime);
    }
    Ok(put)
}

/// A blocking reader of chunks sent by an async task (a request body).
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> ChunkReader {
        ChunkReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A blocking writer whose chunks an async task sends on (a response body).
/// A write waiting for room gives up when the session must end, so a host that stops
/// reading cannot hold a suspension or the session's place.
pub struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    end: watch::Receiver<Option<EndReason>>,
    runtime: tokio::runtime::Handle,
}

impl ChunkWriter {
    /// Made on a blocking thread of the runtime whose task reads the chunks.
    pub fn new(
        tx: mpsc::Sender<io::Result<Bytes>>,
        end: watch::Receiver<Option<EndReason>>,
        runtime: tokio::runtime::Handle,
    ) -> ChunkWriter {
        ChunkWriter { tx, end, runtime }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            // An empty chunk is the body's end marker (see ChunkBody): never sent here.
            return Ok(0);
        }
        let chunk = Bytes::copy_from_slice(buf);
        let (tx, end) = (&self.tx, &mut self.end);
        self.runtime.block_on(async {
            tokio::select! {
                r = tx.send(Ok(chunk)) => r.map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the host stopped reading")
                }),
                reason = super::ended(end) => Err(io::Error::other(format!(
                    "cut short: the MicroVM is ending the session ({reason:?})"
                ))),
            }
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(path: &Path) -> io::Result<u32> {
        Ok(fs::symlink_metadata(path)?.mode() & 0o7777)
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agent-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn query_paths_are_decoded_and_checked() {
        assert_eq!(
            query_path(Some("path=%2Ftmp%2Fa%20b")).unwrap(),
            PathBuf::from("/tmp/a b")
        );
        assert_eq!(
            query_path(Some("x=1&path=/etc")).unwrap(),
            PathBuf::from("/etc")
        );
        assert!(matches!(query_path(None), Err(FilesError::BadRequest(_))));
        assert!(matches!(
            query_path(Some("path=etc")),
            Err(FilesError::BadRequest(_))
        ));
        assert!(matches!(
            query_path(Some("path=/a%2")),
            Err(FilesError::BadRequest(_))
        ));
        assert!(matches!(
            query_path(Some("path=/a%00")),
            Err(FilesError::BadRequest(_))
        ));
    }

    #[test]
    fn a_tree_round_trips_with_modes_and_links() {
        let src = scratch("src");
        fs::create_dir_all(src.join("tree/sub")).unwrap();
        fs::write(src.join("tree/a.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("tree/a.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(src.join("tree/sub/secret"), "s").unwrap();
        fs::set_permissions(
            src.join("tree/sub/secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(src.join("tree/sub"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("a.sh", src.join("tree/link")).unwrap();
        let mut tar = Vec::new();
        pack(&src.join("tree"), &mut tar).unwrap();
        let dst = scratch("dst");
        let put = unpack(&dst, &tar[..]).unwrap();
        assert_eq!((put.files, put.links, put.bytes), (2, 1, 11));
        assert_eq!(mode_of(&dst.join("tree/a.sh")).unwrap(), 0o750);
        assert_eq!(mode_of(&dst.join("tree/sub")).unwrap(), 0o700);
        assert_eq!(mode_of(&dst.join("tree/sub/secret")).unwrap(), 0o600);
        assert_eq!(
            fs::read_link(dst.join("tree/link")).unwrap(),
            PathBuf::from("a.sh")
        );
        assert_eq!(fs::read(dst.join("tree/sub/secret")).unwrap(), b"s");
        // Unpacked again over itself: files replaced, nothing left behind.
        unpack(&dst, &tar[..]).unwrap();
        let names: Vec<_> = fs::read_dir(dst.join("tree"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        fs::remove_dir_all(&src).unwrap();
        fs::remove_dir_all(&dst).unwrap();
    }

    fn raw_tar(name: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn link_entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, to: &str) {
        b.append_link(&mut header(kind, 0, 0o777), name, to)
            .unwrap();
    }

    #[test]
    fn a_hard_link_cannot_reach_out_through_a_symlink_of_the_same_archive() {
        let dst = scratch("hardlink");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 1, 0o640);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        link_entry(&mut b, tar::EntryType::Link, "same", "f");
        link_entry(&mut b, tar::EntryType::Symlink, "up", "/");
        link_entry(&mut b, tar::EntryType::Link, "passwd", "up/etc/passwd");
        let e = unpack(&dst, &b.into_inner().unwrap()[..]).unwrap_err();
        assert!(matches!(e, FilesError::BadRequest(_)), "{e}");
        assert!(fs::symlink_metadata(dst.join("passwd")).is_err());
        // A link within the archive works; one to a symlink is refused.
        assert_eq!(fs::read(dst.join("same")).unwrap(), b"x");
        let mut b = tar::Builder::new(Vec::new());
        link_entry(&mut b, tar::EntryType::Link, "up2", "up");
        let e = unpack(&dst, &b.into_inner().unwrap()[..]).unwrap_err();
        assert!(matches!(e, FilesError::BadArchive(_)), "{e}");
        assert!(fs::symlink_metadata(dst.join("up2")).is_err());
        fs::remove_dir_all(&dst).unwrap();
    }

    #[test]
    fn archives_that_leave_the_destination_or_are_broken_are_refused() {
        let dst = scratch("evil");
        let e = unpack(
            &dst,
            &raw_tar(b"../escape", tar::EntryType::Regular, b"x")[..],
        )
        .unwrap_err();
        assert!(matches!(e, FilesError::BadArchive(_)), "{e}");
        assert!(!dst.parent().unwrap().join("escape").exists());
        let e = unpack(
            &dst,
            &raw_tar(b"/etc/evil", tar::EntryType::Regular, b"x")[..],
        )
        .unwrap_err();
        assert!(matches!(e, FilesError::BadArchive(_)), "{e}");
        // Through a symlink the archive itself planted.
        std::os::unix::fs::symlink("/", dst.join("up")).unwrap();
        let e = unpack(
            &dst,
            &raw_tar(b"up/tmp/x", tar::EntryType::Regular, b"x")[..],
        )
        .unwrap_err();
        assert!(matches!(e, FilesError::BadRequest(_)), "{e}");
        let mut garbage = raw_tar(b"f", tar::EntryType::Regular, b"x");
        garbage[148] ^= 0x55; // checksum
        assert!(matches!(
            unpack(&dst, &garbage[..]),
            Err(FilesError::BadArchive(_))
        ));
        // Truncated mid-file: no temporary file left behind.
        let mut cut = raw_tar(b"big", tar::EntryType::Regular, &[7u8; 4096]);
        cut.truncate(1024);
        assert!(matches!(
            unpack(&dst, &cut[..]),
            Err(FilesError::BadArchive(_))
        ));
        let left: Vec<_> = fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("up")]);
        assert!(matches!(
            unpack(&dst.join("nope"), &[][..]),
            Err(FilesError::Missing(_))
        ));
        fs::remove_dir_all(&dst).unwrap();
    }
}
