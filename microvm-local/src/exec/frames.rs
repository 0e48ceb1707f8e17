//! Reading exec frames (microvm_protocol::exec) off a byte stream: a 5-byte header,
//! then the payload, either of which may arrive split across any number of reads.

use microvm_protocol::exec::{self, Kind, HEADER_LEN};
use std::io::{self, Read};

/// Frames from `R`, one at a time.
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame; `None` when the stream ends cleanly between frames. A stream
    /// that ends inside a frame is `UnexpectedEof`, a header the contract does not
    /// allow (unknown kind, payload over MAX_FRAME) `InvalidData`.
    pub fn next_frame(&mut self) -> io::Result<Option<(Kind, Vec<u8>)>> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.inner.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the session's stream ended inside a frame header ({got} of {HEADER_LEN} bytes)"),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let (kind, len) =
            exec::parse_header(h).map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
        let mut payload = vec![0u8; len];
        self.inner.read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!("the session's stream ended inside a {kind:?} frame of {len} bytes"),
                )
            } else {
                e
            }
        })?;
        Ok(Some((kind, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_protocol::exec::{frame, header, MAX_FRAME};

    /// At most `n` bytes a read.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    fn all(bytes: Vec<u8>, step: usize) -> io::Result<Vec<(Kind, Vec<u8>)>> {
        let mut r = FrameReader::new(Trickle(bytes, step));
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let big = vec![7u8; MAX_FRAME];
        let wire = [
            frame(Kind::Stdout, b"hello"),
            frame(Kind::Stderr, b""),
            frame(Kind::Stdout, &big),
            frame(Kind::Exit, br#"{"exitCode":0,"reason":"exited"}"#),
        ]
        .concat();
        for step in [1, 2, 4, 5, 6, 4096, usize::MAX] {
            let frames = all(wire.clone(), step).unwrap();
            assert_eq!(frames.len(), 4, "step {step}");
            assert_eq!(frames[0], (Kind::Stdout, b"hello".to_vec()));
            assert_eq!(frames[1], (Kind::Stderr, vec![]));
            assert!(frames[2].1 == big);
            assert_eq!(frames[3].0, Kind::Exit);
        }
        assert!(all(Vec::new(), 1).unwrap().is_empty());
    }

    #[test]
    fn bad_headers_and_cut_frames_are_errors() {
        let e = all(vec![9, 0, 0, 0, 0], 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("unknown frame kind 9"), "{e}");
        let e = all(header(Kind::Stdout, MAX_FRAME + 1).to_vec(), 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = all(vec![1, 0, 0], 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut cut = frame(Kind::Stdout, b"hello");
        cut.truncate(7);
        let e = all(cut, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("Stdout frame of 5 bytes"), "{e}");
    }
}
