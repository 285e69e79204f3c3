//! The read side of a connection: the read queue, the reader task (capped downloads), direct
//! reads by the consumer (uncapped downloads), and [`ScheduledReader`].

use super::conn::{ConnShared, Owner};
use super::lock;
use super::shared::Shared;
use crate::budget::{ByteBudget, Reservation};
use bytes::{Buf, Bytes, BytesMut};
use peerpool_proto::scheduler::{ConnId, Direction};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The read half of the registered stream.
pub(super) type ReadIo = Box<dyn AsyncRead + Send + Unpin>;

/// The bytes read for the consumer and the state of the read side.
#[derive(Default)]
pub(super) struct ReadQueue {
    /// Bytes waiting for the consumer, in order, each with its part of the budget.
    pub(super) chunks: VecDeque<Queued>,
    /// Their total, bytes.
    pub(super) bytes: usize,
    /// The read side ended (end of stream, I/O error, or the connection stopped).
    pub(super) eof: bool,
    /// The I/O error that ended it, returned once after the queued bytes.
    pub(super) error: Option<(io::ErrorKind, String)>,
    /// The consumer's waker.
    pub(super) waker: Option<Waker>,
    /// The socket's read half (`None` once the read side ended). Polled only with this lock
    /// held: by the reader task when the download is capped, by the consumer when it is not.
    pub(super) io: Option<ReadIo>,
    /// The reader task holds bytes it read that wait for their grant: the consumer must not
    /// read the socket directly until they are queued.
    pub(super) in_flight: bool,
    /// The reader task's waker: parked (queue full, or direct reads) or waiting on the socket.
    pub(super) task_waker: Option<Waker>,
    /// Buffer of the consumer's direct reads smaller than `read_buffer_size`: allocated
    /// (`4 × read_buffer_size` bytes) when such a read is due, released when the socket has
    /// nothing to read, so an idle connection holds none.
    pub(super) scratch: BytesMut,
}

/// Bytes in the read queue and the part of the node's budget they hold.
pub(super) struct Queued {
    data: Bytes,
    /// Exactly `data.len()` bytes of the budget (nothing when the scheduler has none); given
    /// back as the consumer reads them.
    held: Reservation,
}

/// The reader task's claim on the budget for its next socket read: taken before the socket
/// is read, so that a spent budget leaves the socket unread (TCP pushes back).
struct Ahead {
    /// Bytes held for the next read (none between reads).
    held: Reservation,
    /// A wait for the budget in progress (the budget was spent when the read was due).
    waiting: Option<Pin<Box<dyn Future<Output = Reservation> + Send>>>,
}

impl Ahead {
    fn new() -> Self {
        Ahead {
            held: Reservation::empty(),
            waiting: None,
        }
    }

    /// Gives back what is held or awaited (the task parks, so it will not read soon).
    fn give_back(&mut self) {
        self.held = Reservation::empty();
        self.waiting = None;
    }

    /// Holds at least one byte of `budget` for a read of up to `want` bytes, waiting while
    /// the budget is spent; returns the bytes held (at most `want` when newly taken, but a
    /// claim taken earlier for a larger read is kept whole). Waiters are served in order.
    fn poll_hold(&mut self, cx: &mut Context<'_>, budget: &ByteBudget, want: usize) -> Poll<usize> {
        if self.held.bytes() == 0 {
            let waiting = match self.waiting.as_mut() {
                Some(waiting) => waiting,
                None => {
                    if let Some(now) = budget.try_reserve(want) {
                        self.held = now;
                        return Poll::Ready(self.held.bytes());
                    }
                    let budget = budget.clone();
                    self.waiting
                        .insert(Box::pin(async move { budget.reserve(want).await }))
                }
            };
            match waiting.as_mut().poll(cx) {
                Poll::Ready(held) => {
                    self.held = held;
                    self.waiting = None;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // ≥ 1: `want` ≥ 1 and the budget's total ≥ 1 (checked by `IoScheduler::with_budget`).
        Poll::Ready(self.held.bytes())
    }
}

/// Stores `cx`'s waker in `slot` unless it already holds one that wakes the same task.
fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Reads at most `limit` bytes from `io` into the spare capacity of `buf` (no zeroing).
fn poll_read_buf(
    io: &mut ReadIo,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    limit: usize,
) -> Poll<io::Result<usize>> {
    // The future only holds borrows and polls the stream once per poll, so a fresh one per
    // poll loses nothing.
    let mut limited = (&mut **io).take(limit as u64);
    let fut = std::pin::pin!(limited.read_buf(buf));
    fut.poll(cx)
}

/// What one attempt of the reader task to read the socket gave.
enum Fill {
    /// `n` bytes at the end of the task's buffer, marked in flight.
    Read(usize),
    /// End of stream, or an I/O error: end the read side.
    End(Option<io::Error>),
    /// The read side already ended.
    Stop,
}

impl ConnShared {
    pub(super) fn end_read(&self, error: Option<io::Error>) {
        let mut q = lock(&self.read);
        if !q.eof {
            q.eof = true;
            q.error = error.map(|e| (e.kind(), e.to_string()));
        }
        let io = q.io.take();
        let wakers = [q.waker.take(), q.task_waker.take()];
        drop(q);
        drop(io);
        wakers.into_iter().flatten().for_each(Waker::wake);
    }

    /// Switches between direct reads and reads through the reader task; wakes both sides
    /// so that each sees the new mode. Call with the scheduler's core locked (so concurrent
    /// cap changes apply in order); returns the wakers to wake once it is unlocked.
    pub(super) fn set_recv_direct(&self, direct: bool) -> [Option<Waker>; 2] {
        if self.recv_direct.swap(direct, Ordering::AcqRel) == direct {
            return [None, None];
        }
        let mut q = lock(&self.read);
        [q.waker.take(), q.task_waker.take()]
    }

    /// One poll of the reader task: when the download is capped and the read queue has
    /// room, takes budget for the read (waiting while it is spent), then reads at most
    /// `read_buffer_size` (and the connection's chunk limit, and the budget taken) bytes
    /// from the socket into `buf`; otherwise parks until the consumer or a cap change wakes
    /// it, giving back any budget it held.
    fn poll_fill(
        &self,
        cx: &mut Context<'_>,
        shared: &Shared,
        buf: &mut BytesMut,
        ahead: &mut Ahead,
    ) -> Poll<Fill> {
        let chunk_limit = shared.chunk_limit(self.id, Direction::Recv);
        let max = self.read_queue_size;
        let mut guard = lock(&self.read);
        let q = &mut *guard;
        if q.eof {
            return Poll::Ready(Fill::Stop);
        }
        if self.recv_direct.load(Ordering::Acquire) || q.bytes >= max {
            ahead.give_back();
            set_waker(&mut q.task_waker, cx);
            return Poll::Pending;
        }
        let mut limit = (max - q.bytes)
            .min(self.read_buffer_size)
            .min(chunk_limit)
            .max(1);
        if let Some(budget) = &self.budget {
            match ahead.poll_hold(cx, budget, limit) {
                Poll::Ready(held) => limit = limit.min(held).max(1),
                Poll::Pending => {
                    // Also woken by a cap change or the end of the connection.
                    set_waker(&mut q.task_waker, cx);
                    return Poll::Pending;
                }
            }
        }
        // Read into spare capacity; chunks split off share one allocation until it is used.
        if buf.capacity() - buf.len() < limit {
            *buf = BytesMut::with_capacity(limit.max(4 * self.read_buffer_size));
        }
        let Some(io) = q.io.as_mut() else {
            return Poll::Ready(Fill::Stop);
        };
        match poll_read_buf(io, cx, buf, limit) {
            Poll::Pending => {
                // Also woken by a cap change, which may hand the socket to the consumer.
                set_waker(&mut q.task_waker, cx);
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => Poll::Ready(Fill::End(None)),
            Poll::Ready(Ok(n)) => {
                q.in_flight = true;
                Poll::Ready(Fill::Read(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Fill::End(Some(e))),
        }
    }

    /// For a direct read into a buffer with `room` bytes free (less than
    /// `read_buffer_size`): the most bytes to read (at most `read_buffer_size`, and never
    /// more than the caller's buffer plus the empty queue) and the budget for the part that
    /// will be queued. `None` when the budget has nothing free now: read only what fits in
    /// the caller's buffer.
    fn scratch_room(&self, room: usize) -> Option<(usize, Reservation)> {
        let limit = self
            .read_buffer_size
            .min(room.saturating_add(self.read_queue_size));
        let Some(budget) = &self.budget else {
            return Some((limit, Reservation::empty()));
        };
        let held = budget.try_reserve(limit.saturating_sub(room))?;
        Some((room + held.bytes(), held))
    }

    /// The consumer reads the socket itself (download not capped, read queue empty, nothing
    /// in flight; `q` is the locked read queue). Reads of at least `read_buffer_size` bytes
    /// go straight into `buf`; smaller ones read `read_buffer_size` bytes and queue what
    /// does not fit, when the budget has room for it (else they read only into `buf`). The
    /// bytes are counted in the scheduler.
    fn poll_direct(
        &self,
        mut guard: MutexGuard<'_, ReadQueue>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let q = &mut *guard;
        let Some(io) = q.io.as_mut() else {
            q.eof = true;
            return Poll::Ready(Ok(()));
        };
        let small = if buf.remaining() >= self.read_buffer_size {
            None
        } else {
            self.scratch_room(buf.remaining())
        };
        let result = match small {
            None => {
                let before = buf.filled().len();
                match Pin::new(io).poll_read(cx, buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => Poll::Ready(r.map(|()| buf.filled().len() - before)),
                }
            }
            Some((limit, mut held)) => {
                if q.scratch.capacity() - q.scratch.len() < limit {
                    q.scratch = BytesMut::with_capacity(limit.max(4 * self.read_buffer_size));
                }
                match poll_read_buf(io, cx, &mut q.scratch, limit) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        let mut chunk = q.scratch.split_to(n).freeze();
                        let k = n.min(buf.remaining());
                        buf.put_slice(&chunk[..k]);
                        chunk.advance(k);
                        if !chunk.is_empty() {
                            q.bytes += chunk.len();
                            let held = held.split(chunk.len());
                            q.chunks.push_back(Queued { data: chunk, held });
                        }
                        Poll::Ready(Ok(n))
                    }
                    other => other,
                }
            }
        };
        match result {
            Poll::Pending => {
                // Nothing to read: hold no buffer while idle (what was split off it for the
                // queue keeps its own part alive until read).
                q.scratch = BytesMut::new();
                // Also woken when a cap change hands the socket back to the reader task.
                set_waker(&mut q.waker, cx);
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => {
                q.eof = true;
                let io = q.io.take();
                let task = q.task_waker.take();
                drop(guard);
                drop(io);
                if let Some(w) = task {
                    w.wake();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(n)) => {
                drop(guard);
                if let Some(shared) = self.sched.upgrade() {
                    shared.record(self.id, Direction::Recv, n as u64);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                // Returned now, so not kept for later: the next read ends the stream.
                q.eof = true;
                let io = q.io.take();
                let task = q.task_waker.take();
                drop(guard);
                drop(io);
                if let Some(w) = task {
                    w.wake();
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

pub(super) async fn reader_task(conn: Arc<ConnShared>, shared: Arc<Shared>) {
    let mut buf = BytesMut::new();
    let mut ahead = Ahead::new();
    loop {
        let fill = std::future::poll_fn(|cx| {
            let fill = conn.poll_fill(cx, &shared, &mut buf, &mut ahead);
            if fill.is_pending() {
                // Waiting (socket, room, budget or a cap change): hold no buffer meanwhile.
                // Every byte read was split off it, so it holds none.
                buf = BytesMut::new();
            }
            fill
        });
        let n = match fill.await {
            Fill::Read(n) => n,
            Fill::End(error) => {
                conn.end_read(error);
                return;
            }
            Fill::Stop => return,
        };
        let chunk = buf.split_to(n).freeze();
        // The budget travels with the bytes; what was taken for a larger read goes back.
        let held = ahead.held.split(n);
        ahead.give_back();
        if shared
            .acquire(conn.id, Direction::Recv, n as u64)
            .await
            .is_err()
        {
            conn.end_read(None);
            return;
        }
        let mut q = lock(&conn.read);
        q.in_flight = false;
        if q.eof {
            return;
        }
        q.bytes += chunk.len();
        q.chunks.push_back(Queued { data: chunk, held });
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The readable half of a [`ScheduledConnection`](super::ScheduledConnection): yields the bytes the scheduler has let
/// through, in order. End of stream (`Ok(0)`) after the remote closed or the connection
/// was closed; an I/O error of the socket is returned once, after the queued bytes.
pub struct ScheduledReader {
    pub(super) owner: Arc<Owner>,
}

impl fmt::Debug for ScheduledReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledReader")
            .field("id", &self.owner.conn.id)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for ScheduledReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let conn = &self.owner.conn;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut q = lock(&conn.read);
        if !q.chunks.is_empty() {
            // Copy as many queued chunks as fit.
            while buf.remaining() > 0 {
                let Some(front) = q.chunks.front_mut() else {
                    break;
                };
                let n = front.data.len().min(buf.remaining());
                buf.put_slice(&front.data[..n]);
                front.data.advance(n);
                // What the consumer has taken no longer counts against the budget.
                front.held.release(n);
                if front.data.is_empty() {
                    q.chunks.pop_front();
                }
                q.bytes -= n;
            }
            if q.chunks.is_empty() {
                // Drained: hold no queue storage while idle.
                q.chunks = VecDeque::new();
            }
            // The reader task may wait for room (with direct reads it stays parked anyway;
            // a cap change wakes it).
            let task = if conn.recv_direct.load(Ordering::Acquire) {
                None
            } else {
                q.task_waker.take()
            };
            drop(q);
            if let Some(w) = task {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        if q.eof {
            return match q.error.take() {
                Some((kind, text)) => Poll::Ready(Err(io::Error::new(kind, text))),
                None => Poll::Ready(Ok(())),
            };
        }
        if !q.in_flight && conn.recv_direct.load(Ordering::Acquire) {
            return conn.poll_direct(q, cx, buf);
        }
        set_waker(&mut q.waker, cx);
        Poll::Pending
    }
}

impl ScheduledReader {
    /// The connection id.
    pub fn id(&self) -> ConnId {
        self.owner.conn.id
    }

    /// Bytes waiting in the read queue (at most `read_queue_size`).
    pub fn queued(&self) -> usize {
        lock(&self.owner.conn.read).bytes
    }
}
