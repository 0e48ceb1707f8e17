//! The client side of an ingress connection: every byte either way counts as
//! activity, and the bytes read while sniffing the protocol are replayed first.

use crate::activity::Activity;
use crate::transport::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ClientStream {
    inner: Stream,
    activity: Arc<Activity>,
    /// Bytes already read (and counted) while sniffing, handed out again first.
    replay: Vec<u8>,
    pos: usize,
}

impl ClientStream {
    pub fn new(inner: Stream, activity: Arc<Activity>) -> Self {
        ClientStream {
            inner,
            activity,
            replay: Vec::new(),
            pos: 0,
        }
    }

    /// Read again, before anything new, the bytes read so far.
    pub fn replay(&mut self, bytes: Vec<u8>) {
        self.replay = bytes;
        self.pos = 0;
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.replay.len() {
            let n = (self.replay.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.replay[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.traffic(n);
        }
        r
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = self.inner.as_mut().poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.activity.traffic(*n);
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}
