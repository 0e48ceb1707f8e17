//! `GET`, `HEAD` and `PUT /v1/files?path=P`: tar streams out of and into the guest,
//! streamed both ways (never held whole), one request per connection.

use super::wire::{self, Body, ChunkedWriter};
use super::{refusal, ExecError};
use microvm_protocol::exec::{FilesPut, TYPE_HEADER};
use microvm_protocol::paths;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The request target for `path`.
fn target(path: &Path) -> String {
    format!(
        "{}?path={}",
        paths::FILES,
        wire::encode_query_value(path.as_os_str().as_bytes())
    )
}

/// Send a bodiless request and read the answer's head.
fn ask<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &Path,
) -> Result<(wire::Head, BufReader<S>), ExecError> {
    let head = wire::request_head(
        method,
        &target(path),
        &[("Connection", "close"), ("Content-Length", "0")],
    );
    stream.write_all(&head)?;
    stream.flush()?;
    let mut r = BufReader::new(stream);
    let head = wire::read_head(&mut r)?;
    Ok((head, r))
}

/// What `path` is in the guest (`file`, `directory`, `symlink`, `other`), `None`
/// when it does not exist.
pub fn file_type<S: Read + Write>(stream: S, path: &Path) -> Result<Option<String>, ExecError> {
    let (head, r) = ask(stream, "HEAD", path)?;
    match head.status {
        200 => head
            .header(TYPE_HEADER)
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| ExecError::Protocol(format!("HEAD answered 200 without {TYPE_HEADER}"))),
        404 => Ok(None),
        _ => Err(refusal(r, "HEAD", &head)),
    }
}

/// A tar stream of `path` being read: the entries are named from `path`'s last
/// component. A stream cut short (the agent failed while packing, the VM was
/// suspended) is a read error, never a quiet end.
pub struct Download<S> {
    body: Body<BufReader<S>>,
}

impl<S: Read> Read for Download<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

impl<S: Read> Download<S> {
    /// Read the rest, so that the stream is known to be whole (a tar reader stops at
    /// the archive's end marker, before the body's own end).
    pub fn finish(mut self) -> io::Result<()> {
        self.body.drain().map(drop)
    }
}

/// `GET`: the tar stream of `path`, to be read.
pub fn download<S: Read + Write>(stream: S, path: &Path) -> Result<Download<S>, ExecError> {
    let (head, r) = ask(stream, "GET", path)?;
    if head.status != 200 {
        return Err(refusal(r, "GET", &head));
    }
    let framing = wire::framing("GET", &head).map_err(ExecError::Protocol)?;
    Ok(Download {
        body: Body::new(r, framing),
    })
}

/// `GET`: the tar stream of `path` copied whole into `out`; its length.
pub fn get<S: Read + Write>(
    stream: S,
    path: &Path,
    out: &mut impl Write,
) -> Result<u64, ExecError> {
    let mut d = download(stream, path)?;
    Ok(io::copy(&mut d, out)?)
}

/// `PUT`: the tar stream `tar` unpacked into the existing guest directory `dir`.
pub fn put<S: Read + Write>(stream: S, dir: &Path, tar: impl Read) -> Result<FilesPut, ExecError> {
    let mut tar = tar;
    put_with(stream, dir, |w| io::copy(&mut tar, w).map(drop))
}

/// `PUT`: the tar stream `write` writes (in chunked transfer coding, as it is made)
/// unpacked into the existing guest directory `dir`. If `write` fails the body is
/// left unfinished and the connection dropped, so the agent refuses a partial archive
/// rather than unpack it.
pub fn put_with<S: Read + Write>(
    mut stream: S,
    dir: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<FilesPut, ExecError> {
    let head = wire::request_head(
        "PUT",
        &target(dir),
        &[
            ("Connection", "close"),
            ("Content-Type", "application/x-tar"),
            ("Transfer-Encoding", "chunked"),
        ],
    );
    let sent = match stream.write_all(&head) {
        Err(e) => Err(e),
        Ok(()) => {
            let mut body = Watched {
                inner: ChunkedWriter::new(&mut stream),
                broken: false,
            };
            match write(&mut body) {
                Ok(()) => body.inner.finish().map(drop),
                // Our side failed (reading local files): the body stays unfinished.
                Err(e) if !body.broken => return Err(ExecError::Io(e)),
                Err(e) => Err(e),
            }
        }
    };
    let mut r = BufReader::new(stream);
    match sent {
        Ok(()) => {
            let head = wire::read_head(&mut r)?;
            answer(r, head)
        }
        // The agent may have answered (and closed) before taking the whole body: a
        // missing directory, a bad archive. Its answer says more than the broken pipe.
        Err(e) => match wire::read_head(&mut r) {
            Ok(head) => Err(answer(r, head).err().unwrap_or(ExecError::Io(e))),
            Err(_) => Err(ExecError::Io(e)),
        },
    }
}

/// A body writer that remembers whether the connection failed, to tell the wire's
/// errors from those of whatever produces the body.
struct Watched<W> {
    inner: W,
    broken: bool,
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(data);
        self.broken |= r.is_err();
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.broken |= r.is_err();
        r
    }
}

/// A PUT's answer: the [`FilesPut`] of a 200, else the refusal.
fn answer<R: io::BufRead>(r: R, head: wire::Head) -> Result<FilesPut, ExecError> {
    if head.status != 200 {
        return Err(refusal(r, "PUT", &head));
    }
    let framing = wire::framing("PUT", &head).map_err(ExecError::Protocol)?;
    let mut body = Vec::new();
    Body::new(r, framing)
        .take(super::MAX_ERROR_BODY)
        .read_to_end(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| {
        ExecError::Protocol(format!(
            "PUT answered {:?}: {e}",
            String::from_utf8_lossy(&body)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::wire::Framing;
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;

    /// A fake agent: reads one request (head, then a chunked body if it has one),
    /// answers `answer`, and returns what it read.
    fn agent(answer: &'static [u8]) -> (UnixStream, std::thread::JoinHandle<(String, Vec<u8>)>) {
        let (host, agent) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = agent.try_clone().unwrap();
            let mut r = BufReader::new(agent);
            let mut head = String::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                head.push_str(&l);
                if l == "\r\n" || l.is_empty() {
                    break;
                }
            }
            let mut body = Vec::new();
            if head.contains("Transfer-Encoding: chunked") {
                Body::new(&mut r, Framing::Chunked)
                    .read_to_end(&mut body)
                    .unwrap();
            }
            w.write_all(answer).unwrap();
            (head, body)
        });
        (host, t)
    }

    #[test]
    fn head_names_the_type_or_none() {
        let (s, t) = agent(
            b"HTTP/1.1 200 OK\r\nx-microvm-file-type: directory\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(
            file_type(s, Path::new("/tmp/a b")).unwrap().as_deref(),
            Some("directory")
        );
        let (head, _) = t.join().unwrap();
        assert!(
            head.starts_with("HEAD /v1/files?path=/tmp/a%20b HTTP/1.1\r\n"),
            "{head}"
        );
        let (s, _) = agent(b"HTTP/1.1 404 Not Found\r\ncontent-length: 50\r\n\r\n");
        assert_eq!(file_type(s, Path::new("/nope")).unwrap(), None);
        let (s, _) = agent(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 50\r\n\r\n");
        assert_eq!(
            file_type(s, Path::new("/x")).unwrap_err().api().unwrap().0,
            403
        );
    }

    #[test]
    fn get_streams_a_chunked_tar_and_notices_a_cut() {
        let (s, _) = agent(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let mut out = Vec::new();
        assert_eq!(get(s, Path::new("/x"), &mut out).unwrap(), 5);
        assert_eq!(out, b"abcde");
        let (s, _) = agent(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n");
        let mut out = Vec::new();
        let e = get(s, Path::new("/x"), &mut out).unwrap_err();
        assert!(
            matches!(e, ExecError::Io(ref i) if i.kind() == io::ErrorKind::UnexpectedEof),
            "{e}"
        );
        let (s, _) = agent(b"HTTP/1.1 404 Not Found\r\ncontent-length: 37\r\n\r\n{\"error\":\"NotFound\",\"message\":\"/x\"}  ");
        let e = get(s, Path::new("/x"), &mut Vec::new()).unwrap_err();
        assert_eq!(e.api().unwrap().0, 404);
        assert_eq!(e.message(), "/x");
    }

    #[test]
    fn put_sends_a_chunked_body_and_reads_the_count() {
        let (s, t) = agent(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 47\r\n\r\n{\"files\":2,\"directories\":1,\"links\":0,\"bytes\":9}",
        );
        let data = vec![5u8; 150_000];
        let put = put(s, Path::new("/dest dir"), &data[..]).unwrap();
        assert_eq!((put.files, put.directories, put.bytes), (2, 1, 9));
        let (head, body) = t.join().unwrap();
        assert!(
            head.starts_with("PUT /v1/files?path=/dest%20dir HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(body == data);
        // A producer that fails: its error, not the agent's.
        let (s, _) = agent(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        let e = put_with(s, Path::new("/d"), |w| {
            w.write_all(b"some")?;
            Err(io::Error::other("reading /local/file: denied"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("denied"), "{e}");
    }
}
