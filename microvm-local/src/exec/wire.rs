//! HTTP/1.1 written and read by hand over a blocking std stream, for the exchanges
//! that hyper (crate::http) cannot serve here: an exec request hands the very socket
//! over to frames right after the `101` head (bytes already read past the head belong
//! to the frames), and tar streams go both ways without being held whole.
//!
//! Only what the agent's answers use: a status line, headers, and a body framed by
//! `Content-Length`, chunked transfer coding, or the end of the connection.

use std::io::{self, BufRead, Read, Write};

/// Longest answer head accepted: the agent's are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Chunks of a streamed request body: one write each, as large as a frame.
const CHUNK: usize = 64 * 1024;

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request head: `Host: agent` (the agent checks nothing else of it), then
/// `headers`, then the blank line.
pub fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: agent\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Parse a head: the status line and header lines, without the blank line.
pub fn parse_head(text: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the answer's head is not UTF-8")?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let version = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = words
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("no status code in {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Head { status, headers })
}

/// Read a head from `r`, leaving in it every byte after the blank line. Interim `100
/// Continue` heads are skipped (the 101 of an upgrade is final).
pub fn read_head(r: &mut impl BufRead) -> io::Result<Head> {
    loop {
        let mut text = Vec::new();
        loop {
            let start = text.len();
            let n = (&mut *r)
                .take((MAX_HEAD + 1 - start) as u64)
                .read_until(b'\n', &mut text)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    if text.is_empty() {
                        "the agent closed the connection without an answer"
                    } else {
                        "the agent closed the connection inside its answer's head"
                    },
                ));
            }
            if text.len() > MAX_HEAD {
                return Err(invalid(format!("an answer head over {MAX_HEAD} bytes")));
            }
            let line = &text[start..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let head = parse_head(&text).map_err(invalid)?;
        if head.status != 100 {
            return Ok(head);
        }
    }
}

/// How an answer's body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// The body framing of the answer `head` to a `method` request.
pub fn framing(method: &str, head: &Head) -> Result<Framing, String> {
    if method == "HEAD" || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::None);
    }
    if let Some(te) = head.header("transfer-encoding") {
        return match te.rsplit(',').next().map(str::trim) {
            Some(c) if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(format!("unsupported Transfer-Encoding {te:?}")),
        };
    }
    match head.header("content-length") {
        Some(v) => v
            .parse::<u64>()
            .map(Framing::Length)
            .map_err(|_| format!("bad Content-Length {v:?}")),
        None => Ok(Framing::Close),
    }
}

/// An answer's body as a reader: decoded, and an error (never a quiet end) when the
/// connection ends before the framing says the body does.
pub struct Body<R> {
    inner: R,
    state: State,
}

enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Chunked: bytes left of the current chunk (0: a size line comes next).
    Chunk(u64),
    /// Chunked: the CRLF after a chunk's data comes next.
    ChunkEnd,
    Close,
    Done,
}

impl<R: BufRead> Body<R> {
    pub fn new(inner: R, framing: Framing) -> Body<R> {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunk(0),
            Framing::Close => State::Close,
        };
        Body { inner, state }
    }

    /// Whether the whole body has been read.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Read what is left (a body must be whole for its end to mean anything).
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        (&mut self.inner)
            .take(MAX_CHUNK_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Err(if line.len() >= MAX_CHUNK_LINE {
                invalid("a chunk-size line too long".into())
            } else {
                cut_short()
            });
        }
        String::from_utf8(line).map_err(|_| invalid("a chunk-size line is not text".into()))
    }

    /// Read a chunk-size line; 0 ends the body after its trailer section.
    fn next_chunk(&mut self) -> io::Result<()> {
        let line = self.line()?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let n = u64::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size {size:?}")))?;
        if n > 0 {
            self.state = State::Chunk(n);
            return Ok(());
        }
        // Trailer fields, ignored, up to the blank line.
        loop {
            let l = self.line()?;
            if l == "\r\n" || l == "\n" {
                self.state = State::Done;
                return Ok(());
            }
        }
    }

    fn read_some(&mut self, buf: &mut [u8], left: u64) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(cut_short());
        }
        Ok(n)
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Close => {
                    let n = self.inner.read(buf)?;
                    if n == 0 {
                        self.state = State::Done;
                    }
                    return Ok(n);
                }
                State::Length(left) => {
                    let n = self.read_some(buf, left)?;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(n);
                }
                State::Chunk(0) => self.next_chunk()?,
                State::Chunk(left) => {
                    let n = self.read_some(buf, left)?;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::Chunk(left)
                    };
                    return Ok(n);
                }
                State::ChunkEnd => {
                    let l = self.line()?;
                    if l != "\r\n" && l != "\n" {
                        return Err(invalid("a chunk's data runs past its size".into()));
                    }
                    self.state = State::Chunk(0);
                }
            }
        }
    }
}

/// A request body in chunked transfer coding, written as it comes, in chunks of at
/// most [`CHUNK`] bytes. [`ChunkedWriter::finish`] writes the last chunk: a body
/// dropped without it is, to the agent, one cut short (and refused), never a whole one.
pub struct ChunkedWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> ChunkedWriter<W> {
    pub fn new(inner: W) -> ChunkedWriter<W> {
        ChunkedWriter {
            inner,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.inner
            .write_all(format!("{:x}\r\n", self.buf.len()).as_bytes())?;
        self.buf.extend_from_slice(b"\r\n");
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// The last chunk: the body is complete.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit()?;
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// `path` for a query string: every byte but unreserved ones and `/` percent-encoded
/// (the agent reads `+` as a space, so a `+` must be encoded too).
pub fn encode_query_value(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the agent's answer ended before its body did (cut short)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes a read: heads and bodies split
    /// anywhere, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn body_of(wire: &[u8], method: &str, step: usize) -> (Head, io::Result<Vec<u8>>) {
        let mut r = io::BufReader::with_capacity(7, Trickle(wire, step));
        let head = read_head(&mut r).unwrap();
        let f = framing(method, &head).unwrap();
        let mut out = Vec::new();
        let got = Body::new(r, f).read_to_end(&mut out).map(|_| out);
        (head, got)
    }

    #[test]
    fn a_101_head_leaves_the_frames_behind_it() {
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: microvm-exec\r\nx-microvm-exec-pid: 42\r\n\r\n\x01\x00\x00\x00\x02hi";
        for step in [1, 3, 1000] {
            let mut r = io::BufReader::with_capacity(5, Trickle(wire, step));
            let head = read_head(&mut r).unwrap();
            assert_eq!(head.status, 101);
            assert_eq!(head.header("X-Microvm-Exec-Pid"), Some("42"));
            assert_eq!(framing("POST", &head), Ok(Framing::None));
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"\x01\x00\x00\x00\x02hi", "step {step}");
        }
    }

    #[test]
    fn an_error_answer_with_its_json_body() {
        let wire = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n{\"error\":\"NotFound\",\"message\":\"no such x\"}";
        let (head, body) = body_of(wire, "POST", 2);
        assert_eq!(head.status, 404);
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["message"], "no such x");
        // Interim 100 Continue heads are skipped.
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (head, body) = body_of(wire, "PUT", 4);
        assert_eq!((head.status, body.unwrap()), (200, b"ok".to_vec()));
        // A HEAD answer has no body whatever its Content-Length says.
        let wire = b"HTTP/1.1 404 Not Found\r\ncontent-length: 43\r\n\r\n";
        let (_, body) = body_of(wire, "HEAD", 100);
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn chunked_bodies_decode_split_anywhere_and_a_cut_is_an_error() {
        let wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\ntrailer: x\r\n\r\n";
        for step in [1, 2, 5, 64] {
            let (_, body) = body_of(wire, "GET", step);
            assert_eq!(body.unwrap(), b"hello 0123456789", "step {step}");
        }
        let whole = &wire[..];
        for cut in [whole.len() - 2, whole.len() - 20, 60] {
            let (_, body) = body_of(&whole[..cut], "GET", 3);
            let e = body.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
        }
        let (_, body) = body_of(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "GET",
            9,
        );
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A Content-Length body cut short is an error too; one to the close is not.
        let (_, body) = body_of(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc", "GET", 9);
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (_, body) = body_of(b"HTTP/1.1 200 OK\r\n\r\nabc", "GET", 2);
        assert_eq!(body.unwrap(), b"abc");
    }

    #[test]
    fn bad_heads_are_named() {
        assert!(parse_head(b"SSH-2.0-x\r\n")
            .unwrap_err()
            .contains("status line"));
        assert!(parse_head(b"HTTP/1.1 abc x\r\n")
            .unwrap_err()
            .contains("status code"));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbroken\r\n")
            .unwrap_err()
            .contains("colon"));
        let mut r = io::BufReader::new(&b""[..]);
        assert_eq!(
            read_head(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let long = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; 70_000]].concat();
        let mut r = io::BufReader::new(&long[..]);
        assert_eq!(
            read_head(&mut r).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let head = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n").unwrap();
        assert!(framing("GET", &head).is_err());
    }

    #[test]
    fn chunked_writing_round_trips_through_the_decoder() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = ChunkedWriter::new(Vec::new());
        for piece in data.chunks(7_777) {
            w.write_all(piece).unwrap();
        }
        let wire = w.finish().unwrap();
        let mut out = Vec::new();
        Body::new(&wire[..], Framing::Chunked)
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data);
        // Dropped without finish: no last chunk, so the receiver sees a cut body.
        let mut w = ChunkedWriter::new(Vec::new());
        w.write_all(b"partial").unwrap();
        w.flush().unwrap();
        let wire = std::mem::take(&mut w.inner);
        let mut out = Vec::new();
        assert!(Body::new(&wire[..], Framing::Chunked)
            .read_to_end(&mut out)
            .is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value(b"/tmp/a b+c"), "/tmp/a%20b%2Bc");
        assert_eq!(
            encode_query_value(b"/x&path=/etc#?%"),
            "/x%26path%3D/etc%23%3F%25"
        );
        assert_eq!(encode_query_value("/é".as_bytes()), "/%C3%A9");
        assert_eq!(
            request_head("GET", "/v1/files?path=/x", &[("Connection", "close")]),
            b"GET /v1/files?path=/x HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        );
    }
}
