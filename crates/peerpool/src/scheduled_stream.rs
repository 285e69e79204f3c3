//! [`ScheduledStream`]: a [`ScheduledConnection`] seen as a plain `AsyncRead + AsyncWrite`
//! byte stream, so the connection tasks run unchanged on top of the I/O scheduler and every
//! byte they move passes through it. (The handshake runs on the raw stream before it is
//! registered; its bytes are recorded at registration, `ScheduledConnection::record_moved`.)

use crate::io_scheduler::{
    IoSchedulerError, ScheduledConnection, ScheduledReader, ScheduledWriter,
};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type WriteFuture = Pin<Box<dyn Future<Output = Result<(), IoSchedulerError>> + Send>>;
type CloseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A scheduled connection as a byte stream.
///
/// - Reads come from the connection's bounded read queue.
/// - A write queues a copy of the buffer at once when the write queue has room, else waits
///   for room (the pending buffer is remembered, so a caller retrying with the same bytes, as
///   `write_all` does, queues them once).
/// - Flush returns once the bytes are queued: the scheduler's writer task sends them.
/// - Shutdown closes the connection, flushing what is queued for at most `close_timeout`.
pub struct ScheduledStream {
    reader: ScheduledReader,
    writer: ScheduledWriter,
    pending: Option<(usize, WriteFuture)>,
    closing: Option<CloseFuture>,
    close_timeout: Duration,
}

impl std::fmt::Debug for ScheduledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduledStream")
            .field("id", &self.writer.id())
            .finish_non_exhaustive()
    }
}

impl ScheduledStream {
    /// Wraps `conn`; shutdown waits at most `close_timeout` for queued bytes to go out.
    pub fn new(conn: ScheduledConnection, close_timeout: Duration) -> Self {
        let (reader, writer) = conn.split();
        ScheduledStream {
            reader,
            writer,
            pending: None,
            closing: None,
            close_timeout,
        }
    }

    /// A handle on the write side (statistics, weight, caps, close).
    pub fn writer(&self) -> &ScheduledWriter {
        &self.writer
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((len, fut)) = self.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let len = *len;
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.pending = None;
                Poll::Ready(
                    result
                        .map(|()| len)
                        .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e)),
                )
            }
        }
    }
}

impl AsyncRead for ScheduledStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ScheduledStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let bytes = Bytes::copy_from_slice(buf);
            if self.writer.write_now(bytes.clone()) {
                return Poll::Ready(Ok(buf.len()));
            }
            let writer = self.writer.clone();
            self.pending = Some((
                buf.len(),
                Box::pin(async move { writer.write(bytes).await }),
            ));
        }
        self.poll_pending(cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending(cx).map_ok(|_| ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        if self.pending.is_some() {
            return Poll::Pending;
        }
        if self.closing.is_none() {
            let writer = self.writer.clone();
            let timeout = self.close_timeout;
            self.closing = Some(Box::pin(async move { writer.close(timeout).await }));
        }
        match self.closing.as_mut() {
            Some(fut) => fut.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
