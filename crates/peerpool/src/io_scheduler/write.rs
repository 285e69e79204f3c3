//! The write side of a connection: the write queue, the writer task, and
//! [`ScheduledWriter`].

use super::conn::{ConnShared, Owner};
use super::shared::Shared;
use super::{lock, IoSchedulerError};
use bytes::Bytes;
use peerpool_proto::scheduler::{ConnId, Direction, SchedulerError, Stat};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The buffers waiting for the writer task.
#[derive(Default)]
pub(super) struct WriteQueue {
    /// Buffers to send, in order.
    pub(super) chunks: VecDeque<Bytes>,
    /// Their total, bytes.
    pub(super) bytes: usize,
    /// No new buffer is accepted (the connection is closing or closed).
    pub(super) closed: bool,
}

impl ConnShared {
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
        // Queued (`Ok`) or closed (`Err`) ends the wait; a full queue waits for room.
        crate::notify::wait_until(&self.write_room, || {
            match self.push_write(data.clone(), max) {
                Ok(false) => None,
                Ok(true) => Some(Ok(())),
                Err(e) => Some(Err(e)),
            }
        })
        .await
    }

    pub(super) fn close_write(&self) {
        lock(&self.write).closed = true;
        self.write_data.notify_one();
        self.write_room.notify_waiters();
    }
}

pub(super) async fn writer_task<W: AsyncWrite + Unpin>(
    conn: Arc<ConnShared>,
    shared: Arc<Shared>,
    mut wr: W,
) {
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
            conn.flushed.set();
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
                if q.chunks.is_empty() {
                    // Idle: hold no queue storage.
                    q.chunks = VecDeque::new();
                }
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

/// The writable half of a [`ScheduledConnection`](super::ScheduledConnection); cheap to clone.
#[derive(Clone)]
pub struct ScheduledWriter {
    pub(super) owner: Arc<Owner>,
}

impl fmt::Debug for ScheduledWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduledWriter")
            .field("id", &self.owner.conn.id)
            .finish_non_exhaustive()
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
