//! The I/O scheduler: every byte a connection reads or writes passes through it
//! (BEHAVIOUR.md §6, octez `P2p_io_scheduler`).
//!
//! [`IoScheduler::register`] takes any byte stream (`TcpStream`, `tokio::io::duplex`, ...) and
//! returns a [`ScheduledConnection`]. Two tasks per connection move the bytes: when the
//! connection's download is capped (global or per-connection cap), a *reader* task reads at
//! most `read_buffer_size` bytes from the socket, asks the scheduler for permission to
//! deliver them, then pushes them into the connection's bounded read queue; when it is not
//! capped (every request would be granted at once), the reader task stays parked and the
//! consumer's `poll_read` reads the socket itself once the read queue is empty (*direct
//! read*: no task hop, no extra copy for reads of at least `read_buffer_size` bytes; smaller
//! reads read `read_buffer_size` bytes and queue the rest), counting the bytes in the
//! scheduler as a grant would ([`Scheduler::record`]). Setting or removing a cap switches
//! between the two at once, in order: the socket is only ever read by one side at a time
//! and never while bytes read by the task wait for their grant. A *writer* task takes the next queued buffer (split into pieces of at most
//! `read_buffer_size` bytes when the upload or the connection is capped) from the bounded
//! write queue, asks for permission, then writes it to the socket. One *dispatcher* task per scheduler hands
//! out permissions that had to wait (global cap reached, per-connection cap reached) and
//! runs the one-second refresh of quotas and moving averages. All the arithmetic lives in
//! [`peerpool_proto::scheduler`]; this module only moves bytes and timers.
//!
//! Queues, all bounded:
//! - read queue, `read_queue_size` bytes: when full, the reader task stops reading that
//!   socket, so TCP flow control pushes back on the remote; other connections are not
//!   affected. Nothing is dropped. With direct reads the socket is read only when the
//!   consumer reads, so the pushback starts even earlier (no read-ahead beyond the socket's
//!   own buffers).
//! - write queue, `write_queue_size` bytes: [`ScheduledConnection::write`] waits for room,
//!   [`ScheduledConnection::write_now`] refuses (returns `false`). As in octez's pipes, a
//!   buffer is accepted when `queued + len < write_queue_size` or the queue is empty, so the
//!   queue holds at most `max(write_queue_size, largest single buffer)` bytes.
//! - the dispatcher's waiting requests: at most one per connection and direction.
//!
//! Fairness: when a direction is capped, requests that have to wait are served
//! high-quota-first (octez's rule) with shares proportional to connection weights; see
//! [`peerpool_proto::scheduler`] for the arithmetic and where it departs from octez. When
//! nothing is capped every request is granted at once, so weights have no effect.
//!
//! Time comes only from `tokio::time`, so tests run under `tokio::time::pause()`.

use bytes::{Buf, Bytes, BytesMut};
use peerpool_proto::scheduler::{
    ConnId, Direction, Scheduler, SchedulerConfig, SchedulerError, DEFAULT_BURST, DEFAULT_PERIOD,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use peerpool_proto::scheduler::{MaState, Stat};

/// Default read chunk, bytes (BEHAVIOUR.md §9 `read-buffer-size`, 16 KiB).
pub const DEFAULT_READ_BUFFER_SIZE: usize = 16 * 1024;
/// Default read and write queue bound, bytes (BEHAVIOUR.md §9, 8 MiB).
pub const DEFAULT_QUEUE_SIZE: usize = 8 * 1024 * 1024;

/// Errors of the I/O scheduler.
#[derive(Debug, thiserror::Error)]
pub enum IoSchedulerError {
    /// The connection is closed (locally, by the remote, or after an I/O error); nothing
    /// more can be written.
    #[error("scheduled connection closed")]
    Closed,
    /// The scheduler is shutting down or shut down; no new connection is accepted.
    #[error("io scheduler shut down")]
    Shutdown,
    /// A configuration value is out of range; the text says which.
    #[error("invalid io scheduler configuration: {0}")]
    InvalidConfig(&'static str),
    /// [`IoScheduler::new`] was called outside a tokio runtime.
    #[error("io scheduler needs a tokio runtime")]
    NoRuntime,
    /// A value refused by the scheduler core (zero weight, zero cap).
    #[error(transparent)]
    Core(#[from] SchedulerError),
}

/// Configuration of an [`IoScheduler`]; checked once by [`IoScheduler::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSchedulerConfig {
    /// Global upload cap, bytes per second (default `None`: no cap). Note octez's config
    /// file gives this in KiB/s (BEHAVIOUR.md §6); convert before. Must be ≥ 1 when set.
    pub max_upload_speed: Option<u64>,
    /// Global download cap, bytes per second (default `None`). Must be ≥ 1 when set.
    pub max_download_speed: Option<u64>,
    /// Largest single socket read, bytes, and largest single grant in a capped direction
    /// (default 16 KiB). Must be ≥ 1.
    pub read_buffer_size: usize,
    /// Bound of each connection's read queue, bytes (default 8 MiB). Must be ≥ 1.
    pub read_queue_size: usize,
    /// Bound of each connection's write queue, bytes (default 8 MiB). Must be ≥ 1.
    pub write_queue_size: usize,
    /// Burst window of the token buckets: a capped direction may move at most
    /// `cap × burst` bytes (and never less than `read_buffer_size`) beyond `cap × elapsed`
    /// (default 100 ms).
    pub burst: Duration,
}

impl Default for IoSchedulerConfig {
    fn default() -> Self {
        IoSchedulerConfig {
            max_upload_speed: None,
            max_download_speed: None,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            read_queue_size: DEFAULT_QUEUE_SIZE,
            write_queue_size: DEFAULT_QUEUE_SIZE,
            burst: DEFAULT_BURST,
        }
    }
}

impl IoSchedulerConfig {
    fn check(&self) -> Result<(), IoSchedulerError> {
        if self.read_buffer_size == 0 {
            return Err(IoSchedulerError::InvalidConfig(
                "read_buffer_size must be ≥ 1",
            ));
        }
        if self.read_queue_size == 0 || self.write_queue_size == 0 {
            return Err(IoSchedulerError::InvalidConfig("queue sizes must be ≥ 1"));
        }
        if self.max_upload_speed == Some(0) || self.max_download_speed == Some(0) {
            return Err(IoSchedulerError::InvalidConfig(
                "max speeds must be ≥ 1 byte/s",
            ));
        }
        Ok(())
    }
}

/// One registered connection as seen from the scheduler ([`IoScheduler::connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// The connection id.
    pub id: ConnId,
    /// Its traffic statistics.
    pub stat: Stat,
    /// Its weight (default 1).
    pub weight: u32,
    /// Its upload cap, bytes per second.
    pub max_upload_speed: Option<u64>,
    /// Its download cap, bytes per second.
    pub max_download_speed: Option<u64>,
}

/// Locks `m`, recovering the data if a panicking thread poisoned it: every critical section
/// here leaves the state consistent between statements, so the data stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Core {
    sched: Scheduler,
    waiters: HashMap<(ConnId, Direction), oneshot::Sender<()>>,
    conns: BTreeMap<ConnId, Arc<ConnShared>>,
    next_id: u64,
    /// No new registration (shutdown started).
    closing: bool,
    /// The dispatcher must exit; requests fail.
    stopped: bool,
}

struct Shared {
    core: Mutex<Core>,
    wake: Notify,
    origin: Instant,
    config: IoSchedulerConfig,
}

impl Shared {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// Waits until `n` bytes of `id` may move in `direction`.
    async fn acquire(
        &self,
        id: ConnId,
        direction: Direction,
        n: u64,
    ) -> Result<(), IoSchedulerError> {
        let rx = {
            let mut core = lock(&self.core);
            if core.stopped {
                return Err(IoSchedulerError::Shutdown);
            }
            let now = self.now();
            match core.sched.request(id, direction, n, now) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(_) => return Err(IoSchedulerError::Closed),
            }
            let (tx, rx) = oneshot::channel();
            core.waiters.insert((id, direction), tx);
            rx
        };
        self.wake.notify_one();
        rx.await.map_err(|_| IoSchedulerError::Closed)
    }

    fn chunk_limit(&self, id: ConnId, direction: Direction) -> usize {
        lock(&self.core).sched.chunk_limit(id, direction)
    }

    /// Counts `n` bytes of `id` that moved without a request (direct read).
    fn record(&self, id: ConnId, direction: Direction, n: u64) {
        let now = self.now();
        lock(&self.core).sched.record(id, direction, n, now);
    }

    fn stop(&self) {
        let mut core = lock(&self.core);
        core.closing = true;
        core.stopped = true;
        core.waiters.clear();
        drop(core);
        self.wake.notify_one();
    }
}

async fn dispatch(shared: Arc<Shared>) {
    loop {
        let deadline = {
            let mut core = lock(&shared.core);
            if core.stopped {
                return;
            }
            let now = shared.now();
            while let Some(grant) = core.sched.poll_grant(now) {
                if let Some(tx) = core.waiters.remove(&(grant.id, grant.direction)) {
                    // A dropped receiver means the task was cancelled; nothing to do.
                    let _ = tx.send(());
                }
            }
            core.sched.poll_timeout()
        };
        let at = shared
            .origin
            .checked_add(deadline)
            .unwrap_or_else(|| Instant::now() + DEFAULT_PERIOD);
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(at) => {}
        }
    }
}

/// The read half of the registered stream.
type ReadIo = Box<dyn AsyncRead + Send + Unpin>;

#[derive(Default)]
struct ReadQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    eof: bool,
    error: Option<(io::ErrorKind, String)>,
    /// The consumer's waker.
    waker: Option<Waker>,
    /// The socket's read half (`None` once the read side ended). Polled only with this lock
    /// held: by the reader task when the download is capped, by the consumer when it is not.
    io: Option<ReadIo>,
    /// The reader task holds bytes it read that wait for their grant: the consumer must not
    /// read the socket directly until they are queued.
    in_flight: bool,
    /// The reader task's waker: parked (queue full, or direct reads) or waiting on the socket.
    task_waker: Option<Waker>,
    /// Buffer of the consumer's direct reads smaller than `read_buffer_size`.
    scratch: BytesMut,
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

#[derive(Default)]
struct WriteQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    closed: bool,
}

struct ConnShared {
    id: ConnId,
    sched: Weak<Shared>,
    read: Mutex<ReadQueue>,
    /// The download of this connection is not capped (no global download cap, no
    /// per-connection one): the consumer reads the socket directly. Changed only with the
    /// scheduler's core locked.
    recv_direct: AtomicBool,
    /// `read_buffer_size` and `read_queue_size` of the configuration.
    read_buffer_size: usize,
    read_queue_size: usize,
    write: Mutex<WriteQueue>,
    /// Wakes the writer task when the write queue has data or is closed (single waiter).
    write_data: Notify,
    /// Wakes `write` callers when the write queue has room or is closed (many waiters).
    write_room: Notify,
    /// Set by the writer task once the closed write queue is drained and the stream shut.
    flushed: watch::Sender<bool>,
    /// Set once the tasks are stopped and the stream dropped.
    finished: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    last_stat: Mutex<Stat>,
}

impl ConnShared {
    fn stat(&self) -> Stat {
        if let Some(shared) = self.sched.upgrade() {
            if let Some(stat) = lock(&shared.core).sched.stat(self.id) {
                *lock(&self.last_stat) = stat;
                return stat;
            }
        }
        *lock(&self.last_stat)
    }

    fn push_write(&self, data: Bytes, max: usize) -> Result<bool, IoSchedulerError> {
        let mut q = lock(&self.write);
        if q.closed {
            return Err(IoSchedulerError::Closed);
        }
        if data.is_empty() {
            return Ok(true);
        }
        if q.bytes == 0 || q.bytes + data.len() < max {
            q.bytes += data.len();
            q.chunks.push_back(data);
            drop(q);
            self.write_data.notify_one();
            return Ok(true);
        }
        Ok(false)
    }

    async fn write(&self, data: Bytes, max: usize) -> Result<(), IoSchedulerError> {
        loop {
            let notified = self.write_room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.push_write(data.clone(), max)? {
                return Ok(());
            }
            notified.await;
        }
    }

    fn end_read(&self, error: Option<io::Error>) {
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
    fn set_recv_direct(&self, direct: bool) -> [Option<Waker>; 2] {
        if self.recv_direct.swap(direct, Ordering::AcqRel) == direct {
            return [None, None];
        }
        let mut q = lock(&self.read);
        [q.waker.take(), q.task_waker.take()]
    }

    /// One poll of the reader task: when the download is capped and the read queue has
    /// room, reads at most `read_buffer_size` (and the connection's chunk limit) bytes from
    /// the socket into `buf`; otherwise parks until the consumer or a cap change wakes it.
    fn poll_fill(&self, cx: &mut Context<'_>, shared: &Shared, buf: &mut BytesMut) -> Poll<Fill> {
        let chunk_limit = shared.chunk_limit(self.id, Direction::Recv);
        let max = self.read_queue_size;
        let mut guard = lock(&self.read);
        let q = &mut *guard;
        if q.eof {
            return Poll::Ready(Fill::Stop);
        }
        if self.recv_direct.load(Ordering::Acquire) || q.bytes >= max {
            set_waker(&mut q.task_waker, cx);
            return Poll::Pending;
        }
        let limit = (max - q.bytes)
            .min(self.read_buffer_size)
            .min(chunk_limit)
            .max(1);
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

    /// The consumer reads the socket itself (download not capped, read queue empty, nothing
    /// in flight; `q` is the locked read queue). Reads of at least `read_buffer_size` bytes
    /// go straight into `buf`; smaller ones read `read_buffer_size` bytes and queue what
    /// does not fit. The bytes are counted in the scheduler.
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
        let result = if buf.remaining() >= self.read_buffer_size {
            let before = buf.filled().len();
            match Pin::new(io).poll_read(cx, buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => Poll::Ready(r.map(|()| buf.filled().len() - before)),
            }
        } else {
            // Never more than fits in the caller's buffer plus the (empty) queue.
            let limit = self
                .read_buffer_size
                .min(buf.remaining().saturating_add(self.read_queue_size));
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
                        q.chunks.push_back(chunk);
                    }
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        };
        match result {
            Poll::Pending => {
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

    fn close_write(&self) {
        lock(&self.write).closed = true;
        self.write_data.notify_one();
        self.write_room.notify_waiters();
    }

    /// Stops the connection now: forgets it in the scheduler, aborts its tasks (dropping the
    /// stream), ends both queues. Safe to call from the connection's own tasks.
    fn cancel(&self) {
        let _ = self.stat();
        if let Some(shared) = self.sched.upgrade() {
            let mut core = lock(&shared.core);
            core.sched.remove_connection(self.id);
            core.waiters.remove(&(self.id, Direction::Recv));
            core.waiters.remove(&(self.id, Direction::Send));
            core.conns.remove(&self.id);
        }
        self.close_write();
        self.end_read(None);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        let had_tasks = !tasks.is_empty();
        for t in &tasks {
            t.abort();
        }
        if had_tasks {
            // Report "finished" once the aborted tasks have dropped the stream.
            let finished = self.finished.clone();
            let wait = async move {
                for t in tasks {
                    let _ = t.await;
                }
                finished.send_replace(true);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(wait);
                }
                Err(_) => {
                    self.finished.send_replace(true);
                }
            }
        }
    }

    /// Flushes the write queue (up to `timeout`), then cancels; returns once the stream is
    /// dropped.
    async fn close(&self, timeout: Duration) {
        self.close_write();
        let mut flushed = self.flushed.subscribe();
        let mut finished = self.finished.subscribe();
        // The writer reports "flushed"; if it died first (I/O error), "finished" comes instead.
        let drained = async {
            tokio::select! {
                _ = flushed.wait_for(|f| *f) => {}
                _ = finished.wait_for(|f| *f) => {}
            }
        };
        let _ = tokio::time::timeout(timeout, drained).await;
        self.cancel();
        let _ = finished.wait_for(|f| *f).await;
    }
}

async fn reader_task(conn: Arc<ConnShared>, shared: Arc<Shared>) {
    let mut buf = BytesMut::new();
    loop {
        let n = match std::future::poll_fn(|cx| conn.poll_fill(cx, &shared, &mut buf)).await {
            Fill::Read(n) => n,
            Fill::End(error) => {
                conn.end_read(error);
                return;
            }
            Fill::Stop => return,
        };
        let chunk = buf.split_to(n).freeze();
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
        q.chunks.push_back(chunk);
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(conn: Arc<ConnShared>, shared: Arc<Shared>, mut wr: W) {
    loop {
        let next = loop {
            let notified = conn.write_data.notified();
            {
                let q = lock(&conn.write);
                if let Some(front) = q.chunks.front() {
                    break Some(front.len());
                }
                if q.closed {
                    break None;
                }
            }
            notified.await;
        };
        let Some(front_len) = next else {
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
            conn.flushed.send_replace(true);
            return;
        };
        // Capped: at most `read_buffer_size` (or the connection's own burst) per grant.
        // Uncapped: the whole buffer, as it is granted at once anyway.
        let n = front_len
            .min(shared.chunk_limit(conn.id, Direction::Send))
            .max(1);
        if shared
            .acquire(conn.id, Direction::Send, n as u64)
            .await
            .is_err()
        {
            conn.cancel();
            return;
        }
        let (chunk, empty) = {
            let mut q = lock(&conn.write);
            // invariant: only this task removes from the queue, and it saw a front of
            // `front_len ≥ n` bytes.
            let Some(front) = q.chunks.front_mut() else {
                return;
            };
            let chunk = front.split_to(n);
            if front.is_empty() {
                q.chunks.pop_front();
            }
            q.bytes -= n;
            (chunk, q.chunks.is_empty())
        };
        conn.write_room.notify_waiters();
        let res = match wr.write_all(&chunk).await {
            Ok(()) if empty => wr.flush().await,
            other => other,
        };
        if res.is_err() {
            conn.cancel();
            return;
        }
    }
}

/// Closes the connection when the last handle (reader half or any writer) is dropped.
struct Owner {
    conn: Arc<ConnShared>,
    write_queue_size: usize,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.conn.cancel();
    }
}

/// A connection registered with an [`IoScheduler`]: a readable side ([`AsyncRead`]) and a
/// write queue.
///
/// Dropping every handle of the connection (this value, or both halves from
/// [`ScheduledConnection::split`] and every writer clone) cancels it at once without
/// flushing; use [`ScheduledConnection::close`] to flush first.
pub struct ScheduledConnection {
    reader: ScheduledReader,
    writer: ScheduledWriter,
}

impl fmt::Debug for ScheduledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledConnection")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// The readable half of a [`ScheduledConnection`]: yields the bytes the scheduler has let
/// through, in order. End of stream (`Ok(0)`) after the remote closed or the connection
/// was closed; an I/O error of the socket is returned once, after the queued bytes.
pub struct ScheduledReader {
    owner: Arc<Owner>,
}

impl fmt::Debug for ScheduledReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledReader")
            .field("id", &self.owner.conn.id)
            .finish_non_exhaustive()
    }
}

/// The writable half of a [`ScheduledConnection`]; cheap to clone.
#[derive(Clone)]
pub struct ScheduledWriter {
    owner: Arc<Owner>,
}

impl fmt::Debug for ScheduledWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledWriter")
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
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.advance(n);
                if front.is_empty() {
                    q.chunks.pop_front();
                }
                q.bytes -= n;
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

impl AsyncRead for ScheduledConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
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

impl ScheduledWriter {
    /// The connection id (unique for the life of the scheduler).
    pub fn id(&self) -> ConnId {
        self.owner.conn.id
    }

    /// Queues `data` for sending, waiting while the write queue is full (BEHAVIOUR.md §6
    /// `write`). The buffer is queued whole or not at all, so dropping the future is safe
    /// (cancel-safe): after a drop, nothing of `data` was queued.
    ///
    /// Errors: [`IoSchedulerError::Closed`] once the connection is closing or closed.
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), IoSchedulerError> {
        self.owner
            .conn
            .write(data.into(), self.owner.write_queue_size)
            .await
    }

    /// Queues `data` at once if there is room, never waits (BEHAVIOUR.md §6 `write_now`).
    /// Returns `false` when the queue is full (`queued + len ≥ write_queue_size` and not
    /// empty) or the connection is closed.
    pub fn write_now(&self, data: impl Into<Bytes>) -> bool {
        matches!(
            self.owner
                .conn
                .push_write(data.into(), self.owner.write_queue_size),
            Ok(true)
        )
    }

    /// Bytes waiting in the write queue.
    pub fn queued(&self) -> usize {
        lock(&self.owner.conn.write).bytes
    }

    /// Traffic statistics of this connection (the last values once it is closed).
    pub fn stat(&self) -> Stat {
        self.owner.conn.stat()
    }

    /// Closes the connection: refuses new writes, lets the writer send what is queued and
    /// shut the stream's write side, then stops everything and drops the stream. After
    /// `timeout` it stops anyway, dropping what is left. Returns once the stream is dropped.
    /// Idempotent; concurrent callers all return when it is done.
    pub async fn close(&self, timeout: Duration) {
        self.owner.conn.close(timeout).await;
    }

    /// Sets the connection's weight (≥ 1, default 1); its fair share is proportional to it
    /// from the next one-second refresh on.
    ///
    /// Errors: [`SchedulerError::ZeroWeight`] (as [`IoSchedulerError::Core`]);
    /// [`IoSchedulerError::Closed`] if the connection is closed.
    pub fn set_weight(&self, weight: u32) -> Result<(), IoSchedulerError> {
        let shared = self
            .owner
            .conn
            .sched
            .upgrade()
            .ok_or(IoSchedulerError::Shutdown)?;
        let mut core = lock(&shared.core);
        match core.sched.set_weight(self.id(), weight) {
            Err(SchedulerError::UnknownConnection(_)) => Err(IoSchedulerError::Closed),
            other => Ok(other?),
        }
    }

    /// Sets (or removes, with `None`) this connection's own caps, bytes per second, upload
    /// then download. Applies at once; the new buckets start full. A download cap (or the
    /// global one) sends the reads through the reader task and the scheduler's grants;
    /// without either the consumer reads the socket directly (see the module docs).
    ///
    /// Errors: a cap of 0 ([`IoSchedulerError::Core`]); [`IoSchedulerError::Closed`].
    pub fn set_cap(&self, up: Option<u64>, down: Option<u64>) -> Result<(), IoSchedulerError> {
        let shared = self
            .owner
            .conn
            .sched
            .upgrade()
            .ok_or(IoSchedulerError::Shutdown)?;
        let now = shared.now();
        let mut core = lock(&shared.core);
        let res = match core.sched.set_cap(self.id(), up, down, now) {
            Err(SchedulerError::UnknownConnection(_)) => Err(IoSchedulerError::Closed),
            other => Ok(other?),
        };
        let wakers = if res.is_ok() {
            let direct = core.sched.chunk_limit(self.id(), Direction::Recv) == usize::MAX;
            self.owner.conn.set_recv_direct(direct)
        } else {
            [None, None]
        };
        drop(core);
        wakers.into_iter().flatten().for_each(Waker::wake);
        // Waiting requests may now go (or wait longer): let the dispatcher recompute.
        shared.wake.notify_one();
        res
    }
}

impl ScheduledConnection {
    /// The connection id (unique for the life of the scheduler).
    pub fn id(&self) -> ConnId {
        self.writer.id()
    }

    /// See [`ScheduledWriter::write`].
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), IoSchedulerError> {
        self.writer.write(data).await
    }

    /// See [`ScheduledWriter::write_now`].
    pub fn write_now(&self, data: impl Into<Bytes>) -> bool {
        self.writer.write_now(data)
    }

    /// See [`ScheduledWriter::stat`].
    pub fn stat(&self) -> Stat {
        self.writer.stat()
    }

    /// See [`ScheduledWriter::close`].
    pub async fn close(&self, timeout: Duration) {
        self.writer.close(timeout).await;
    }

    /// See [`ScheduledWriter::set_weight`].
    pub fn set_weight(&self, weight: u32) -> Result<(), IoSchedulerError> {
        self.writer.set_weight(weight)
    }

    /// See [`ScheduledWriter::set_cap`].
    pub fn set_cap(&self, up: Option<u64>, down: Option<u64>) -> Result<(), IoSchedulerError> {
        self.writer.set_cap(up, down)
    }

    /// A writer handle sharing this connection.
    pub fn writer(&self) -> ScheduledWriter {
        self.writer.clone()
    }

    /// Bytes waiting in the read queue.
    pub fn read_queued(&self) -> usize {
        self.reader.queued()
    }

    /// Splits into the readable half and a writer, e.g. for a reader task and a writer task.
    pub fn split(self) -> (ScheduledReader, ScheduledWriter) {
        (self.reader, self.writer)
    }
}

/// The I/O scheduler (BEHAVIOUR.md §6): global upload and download caps, fair shares
/// between connections (by weight), optional per-connection caps, bounded queues, and
/// moving-average statistics.
///
/// Dropping it stops the dispatcher: waiting requests fail and the connections close.
pub struct IoScheduler {
    shared: Arc<Shared>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for IoScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoScheduler")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl IoScheduler {
    /// Starts a scheduler (spawns its dispatcher task on the current tokio runtime).
    ///
    /// Errors: [`IoSchedulerError::InvalidConfig`] for a zero size or speed;
    /// [`IoSchedulerError::NoRuntime`] outside a tokio runtime.
    pub fn new(config: IoSchedulerConfig) -> Result<Self, IoSchedulerError> {
        config.check()?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| IoSchedulerError::NoRuntime)?;
        let core_config = SchedulerConfig {
            max_upload_speed: config.max_upload_speed,
            max_download_speed: config.max_download_speed,
            burst: config.burst,
            max_chunk: config.read_buffer_size,
            period: DEFAULT_PERIOD,
        };
        let sched = Scheduler::new(core_config, Duration::ZERO)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                sched,
                waiters: HashMap::new(),
                conns: BTreeMap::new(),
                next_id: 0,
                closing: false,
                stopped: false,
            }),
            wake: Notify::new(),
            origin: Instant::now(),
            config,
        });
        let dispatcher = rt.spawn(dispatch(shared.clone()));
        Ok(IoScheduler {
            shared,
            dispatcher: Mutex::new(Some(dispatcher)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &IoSchedulerConfig {
        &self.shared.config
    }

    /// Registers a byte stream; from now on every byte it reads or writes passes through
    /// the scheduler. Spawns a reader and a writer task for it.
    ///
    /// Errors: [`IoSchedulerError::Shutdown`] once [`IoScheduler::shutdown`] has started.
    pub fn register<S>(&self, stream: S) -> Result<ScheduledConnection, IoSchedulerError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let mut core = lock(&self.shared.core);
        if core.closing {
            return Err(IoSchedulerError::Shutdown);
        }
        let id = ConnId(core.next_id);
        core.next_id += 1;
        core.sched.add_connection(id);
        let conn = Arc::new(ConnShared {
            id,
            sched: Arc::downgrade(&self.shared),
            read: Mutex::new(ReadQueue {
                io: Some(Box::new(rd)),
                ..ReadQueue::default()
            }),
            recv_direct: AtomicBool::new(self.shared.config.max_download_speed.is_none()),
            read_buffer_size: self.shared.config.read_buffer_size,
            read_queue_size: self.shared.config.read_queue_size,
            write: Mutex::new(WriteQueue::default()),
            write_data: Notify::new(),
            write_room: Notify::new(),
            flushed: watch::Sender::new(false),
            finished: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
            last_stat: Mutex::new(Stat::default()),
        });
        core.conns.insert(id, conn.clone());
        drop(core);
        // Hold the task list while spawning so a task that cancels its connection at once
        // finds its handles.
        let mut tasks = lock(&conn.tasks);
        tasks.push(tokio::spawn(reader_task(conn.clone(), self.shared.clone())));
        tasks.push(tokio::spawn(writer_task(
            conn.clone(),
            self.shared.clone(),
            wr,
        )));
        drop(tasks);
        let owner = Arc::new(Owner {
            conn,
            write_queue_size: self.shared.config.write_queue_size,
        });
        Ok(ScheduledConnection {
            reader: ScheduledReader {
                owner: owner.clone(),
            },
            writer: ScheduledWriter { owner },
        })
    }

    /// Totals and current flows of the whole scheduler, including closed connections'
    /// bytes (octez `global_stat`).
    pub fn global_stat(&self) -> Stat {
        lock(&self.shared.core).sched.global_stat()
    }

    /// The registered connections with their statistics, weights and caps, by id (octez
    /// `iter_connection`).
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let core = lock(&self.shared.core);
        core.sched
            .connections()
            .filter_map(|id| {
                let stat = core.sched.stat(id)?;
                let weight = core.sched.weight(id)?;
                let (up, down) = core.sched.cap(id)?;
                Some(ConnectionInfo {
                    id,
                    stat,
                    weight,
                    max_upload_speed: up,
                    max_download_speed: down,
                })
            })
            .collect()
    }

    /// Same as [`IoScheduler::connections`], as an iterator.
    pub fn iter_connection(&self) -> impl Iterator<Item = ConnectionInfo> {
        self.connections().into_iter()
    }

    /// State of the moving-average clock (octez `ma_state`).
    pub fn ma_state(&self) -> MaState {
        lock(&self.shared.core).sched.ma_state()
    }

    /// Stops accepting connections, closes every connection (each flushing its write queue
    /// for up to `timeout`, see [`ScheduledWriter::close`]), then stops the dispatcher.
    /// Returns when every connection is closed. Idempotent.
    pub async fn shutdown(&self, timeout: Duration) {
        let conns: Vec<_> = {
            let mut core = lock(&self.shared.core);
            core.closing = true;
            core.conns.values().cloned().collect()
        };
        let mut closing = JoinSet::new();
        for conn in conns {
            closing.spawn(async move { conn.close(timeout).await });
        }
        while closing.join_next().await.is_some() {}
        self.shared.stop();
        let dispatcher = lock(&self.dispatcher).take();
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
    }
}

impl Drop for IoScheduler {
    fn drop(&mut self) {
        self.shared.stop();
        let conns: Vec<_> = lock(&self.shared.core).conns.values().cloned().collect();
        for conn in conns {
            conn.cancel();
        }
    }
}
