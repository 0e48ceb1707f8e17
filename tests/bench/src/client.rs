//! A hand-written HTTP/1.1 client for the ingress figures: it keeps its connection
//! open between requests (the runner's client closes after each), streams bodies of
//! any size from and to nowhere, and costs the same on both paths it compares.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Bodies are read and written this much at a time.
pub const CHUNK: usize = 64 * 1024;

/// One connection; requests go one after another on it.
pub struct Conn<S: Read + Write> {
    r: BufReader<S>,
}

/// An answer: its status and its body (kept only when asked for).
pub struct Answer {
    pub status: u16,
    pub len: u64,
    pub body: Vec<u8>,
}

enum Framing {
    Length(u64),
    Chunked,
    /// No length and not chunked: the body runs to the end of the connection.
    Close,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(s: S) -> Self {
        Conn {
            r: BufReader::with_capacity(CHUNK, s),
        }
    }

    #[cfg(test)]
    pub fn get_mut(&mut self) -> &mut S {
        self.r.get_mut()
    }

    /// Send a request head (with `Content-Length` when a body follows).
    pub fn head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body_len: Option<u64>,
    ) -> io::Result<()> {
        let mut h = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = body_len {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        self.r.get_mut().write_all(h.as_bytes())
    }

    /// A bodiless GET; the answer's body is kept when `keep`.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)], keep: bool) -> io::Result<Answer> {
        self.head("GET", path, headers, None)?;
        self.answer(keep)
    }

    /// A POST of `len` bytes of `fill`, written `CHUNK` at a time; the answer kept.
    pub fn post_fill(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        len: u64,
        fill: u8,
    ) -> io::Result<Answer> {
        self.head("POST", path, headers, Some(len))?;
        let chunk = vec![fill; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.r.get_mut().write_all(&chunk[..n])?;
            left -= n as u64;
        }
        self.answer(true)
    }

    /// Read one answer: head, then its body by whatever framing it has.
    pub fn answer(&mut self, keep: bool) -> io::Result<Answer> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut framing = Framing::Close;
        loop {
            let mut h = String::new();
            if self.r.read_line(&mut h)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    framing = Framing::Length(v.parse().map_err(io::Error::other)?);
                } else if k.eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    framing = Framing::Chunked;
                }
            }
        }
        if (100..200).contains(&status) || status == 204 || status == 304 {
            framing = Framing::Length(0);
        }
        let mut body = Vec::new();
        let len = match framing {
            Framing::Length(n) => self.body(n, keep, &mut body)?,
            Framing::Chunked => {
                let mut total = 0;
                loop {
                    let mut size = String::new();
                    self.r.read_line(&mut size)?;
                    let hex = size.trim().split(';').next().unwrap_or("");
                    let n = u64::from_str_radix(hex, 16).map_err(io::Error::other)?;
                    if n == 0 {
                        // Trailers, then the empty line.
                        loop {
                            let mut t = String::new();
                            if self.r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                                break;
                            }
                        }
                        break total;
                    }
                    total += self.body(n, keep, &mut body)?;
                    let mut crlf = [0u8; 2];
                    self.r.read_exact(&mut crlf)?;
                }
            }
            Framing::Close => self.body(u64::MAX, keep, &mut body)?,
        };
        Ok(Answer { status, len, body })
    }

    /// Read `n` bytes of body (or to the end of the stream for `u64::MAX`).
    fn body(&mut self, n: u64, keep: bool, into: &mut Vec<u8>) -> io::Result<u64> {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < n {
            let want = (n - got).min(CHUNK as u64) as usize;
            let k = self.r.read(&mut buf[..want])?;
            if k == 0 {
                if n == u64::MAX {
                    break;
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if keep {
                into.extend_from_slice(&buf[..k]);
            }
            got += k as u64;
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that answers from a script and records what was written.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(answers: &str) -> Conn<Scripted> {
        Conn::new(Scripted {
            input: Cursor::new(answers.as_bytes().to_vec()),
            written: Vec::new(),
        })
    }

    #[test]
    fn keep_alive_answers_are_read_one_after_another() {
        let mut c = conn(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n\
             HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        );
        let a = c.get("/a", &[("X-aws-proxy-port", "1")], true).unwrap();
        assert_eq!(
            (a.status, a.len, a.body.as_slice()),
            (200, 5, &b"hello"[..])
        );
        let a = c.get("/b", &[], true).unwrap();
        assert_eq!(
            (a.status, a.len, a.body.as_slice()),
            (200, 5, &b"abcde"[..])
        );
        let a = c.get("/c", &[], false).unwrap();
        assert_eq!((a.status, a.len), (404, 0));
        assert!(c.get("/d", &[], false).is_err());
        let w = String::from_utf8(c.get_mut().written.clone()).unwrap();
        assert!(
            w.starts_with("GET /a HTTP/1.1\r\nHost: bench\r\nX-aws-proxy-port: 1\r\n\r\nGET /b")
        );
    }

    #[test]
    fn a_post_declares_its_length_and_sends_it_all() {
        let mut c = conn("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        let a = c.post_fill("/discard", &[], 100_000, b'z').unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
        let w = &c.get_mut().written;
        let head = b"POST /discard HTTP/1.1\r\nHost: bench\r\nContent-Length: 100000\r\n\r\n";
        assert!(w.starts_with(head));
        assert_eq!(w.len(), head.len() + 100_000);
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        let mut c = conn("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        assert!(c.get("/", &[], false).is_err());
        let mut c = conn("HTTP/1.1 200 OK\r\n\r\nto the end");
        assert_eq!(c.get("/", &[], false).unwrap().len, 10);
    }
}
