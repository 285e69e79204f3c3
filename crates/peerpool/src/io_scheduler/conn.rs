//! The state one connection's tasks and handles share, and the connection's life: close
//! (flush the write queue, then stop) and cancel (stop now).

use super::lock;
use super::read::{reader_task, ReadIo, ReadQueue};
use super::shared::Shared;
use super::write::{writer_task, WriteQueue};
use crate::budget::ByteBudget;
use peerpool_proto::scheduler::{ConnId, Direction, Stat};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

/// One registered connection, shared by its reader task, its writer task and its handles.
pub(super) struct ConnShared {
    pub(super) id: ConnId,
    pub(super) sched: Weak<Shared>,
    pub(super) read: Mutex<ReadQueue>,
    /// The download of this connection is not capped (no global download cap, no
    /// per-connection one): the consumer reads the socket directly. Changed only with the
    /// scheduler's core locked.
    pub(super) recv_direct: AtomicBool,
    /// `read_buffer_size` and `read_queue_size` of the configuration.
    pub(super) read_buffer_size: usize,
    pub(super) read_queue_size: usize,
    /// The node-wide budget the read queue's bytes count against (`None`: no budget).
    pub(super) budget: Option<ByteBudget>,
    pub(super) write: Mutex<WriteQueue>,
    /// Wakes the writer task when the write queue has data or is closed (single waiter).
    pub(super) write_data: Notify,
    /// Wakes `write` callers when the write queue has room or is closed (many waiters).
    pub(super) write_room: Notify,
    /// Set by the writer task once the closed write queue is drained and the stream shut.
    pub(super) flushed: Flag,
    /// The connection's two tasks (also counted in the scheduler's tracker); closed once
    /// both are spawned, so it is empty and closed once both have ended, which is when the
    /// stream is dropped.
    pub(super) tasks: TaskTracker,
    /// Aborts the two tasks (emptied by the first cancel).
    pub(super) aborts: Mutex<Vec<AbortHandle>>,
    /// The statistics last read from the core, kept for after the connection is removed.
    pub(super) last_stat: Mutex<Stat>,
}

impl ConnShared {
    /// A new connection `id` of `shared`, reading from `rd`; its tasks are not spawned yet
    /// ([`ConnShared::spawn_tasks`]).
    pub(super) fn new(id: ConnId, shared: &Arc<Shared>, rd: ReadIo) -> Self {
        let config = &shared.config;
        ConnShared {
            id,
            sched: Arc::downgrade(shared),
            read: Mutex::new(ReadQueue {
                io: Some(rd),
                ..ReadQueue::default()
            }),
            recv_direct: AtomicBool::new(config.max_download_speed.is_none()),
            read_buffer_size: config.read_buffer_size,
            read_queue_size: config.read_queue_size,
            budget: shared.budget.clone(),
            write: Mutex::new(WriteQueue::default()),
            write_data: Notify::new(),
            write_room: Notify::new(),
            flushed: Flag::default(),
            tasks: TaskTracker::new(),
            aborts: Mutex::new(Vec::new()),
            last_stat: Mutex::new(Stat::default()),
        }
    }

    /// Spawns the reader task and the writer task (writing to `wr`), each tracked by the
    /// connection's tracker and the scheduler's.
    pub(super) fn spawn_tasks<W>(self: &Arc<Self>, shared: &Arc<Shared>, wr: W)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // Hold the list while spawning so a task that cancels its connection at once finds
        // both handles.
        let mut aborts = lock(&self.aborts);
        aborts.push(self.spawn(shared, reader_task(self.clone(), shared.clone())));
        aborts.push(self.spawn(shared, writer_task(self.clone(), shared.clone(), wr)));
        drop(aborts);
        self.tasks.close();
    }

    /// Spawns `task` on the scheduler's runtime. The scheduler's tracker wraps the task
    /// first and the connection's second, so when a task ends it leaves the scheduler's count
    /// before the connection's: once [`ConnShared::ended`] returns, the scheduler no longer
    /// counts the connection's tasks either.
    fn spawn<F>(&self, shared: &Shared, task: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .spawn_on(shared.tracker.track_future(task), &shared.rt)
            .abort_handle()
    }

    /// The connection's statistics (the last known ones once it is removed).
    pub(super) fn stat(&self) -> Stat {
        if let Some(shared) = self.sched.upgrade() {
            if let Some(stat) = lock(&shared.core).sched.stat(self.id) {
                *lock(&self.last_stat) = stat;
                return stat;
            }
        }
        *lock(&self.last_stat)
    }

    /// Stops the connection now: forgets it in the scheduler, aborts its tasks (they drop the
    /// stream at the runtime's next turn), ends both queues. Safe to call from the
    /// connection's own tasks and outside a runtime.
    pub(super) fn cancel(&self) {
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
        let aborts = std::mem::take(&mut *lock(&self.aborts));
        for task in aborts {
            task.abort();
        }
    }

    /// Waits until the writer has sent what was queued and shut the stream's write side, or
    /// until the connection's tasks have ended (the writer failed, or the connection was
    /// cancelled). Call after [`ConnShared::close_write`].
    pub(super) async fn drained(&self) {
        // `biased` (a fixed order, reproducible runs); either branch means the same thing.
        tokio::select! {
            biased;
            () = self.flushed.wait() => {}
            () = self.tasks.wait() => {}
        }
    }

    /// Waits until both tasks have ended and so the stream is dropped (after a cancel).
    pub(super) async fn ended(&self) {
        self.tasks.wait().await;
    }

    /// Flushes the write queue (up to `timeout`), then cancels; returns once the stream is
    /// dropped and both tasks have ended.
    pub(super) async fn close(&self, timeout: Duration) {
        self.close_write();
        let _ = tokio::time::timeout(timeout, self.drained()).await;
        self.cancel();
        self.ended().await;
    }
}

/// A flag set once, and a wait for it: a one-shot `watch` without the separate allocation
/// (an idle connection keeps it inline, 40 bytes).
#[derive(Default)]
pub(super) struct Flag {
    set: AtomicBool,
    wake: Notify,
}

impl Flag {
    /// Sets the flag and wakes every waiter.
    pub(super) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Returns once the flag is set (at once if it is).
    pub(super) async fn wait(&self) {
        crate::notify::wait_until(&self.wake, || {
            self.set.load(Ordering::Acquire).then_some(())
        })
        .await;
    }
}

/// Closes the connection when the last handle (reader half or any writer) is dropped.
pub(super) struct Owner {
    pub(super) conn: Arc<ConnShared>,
    pub(super) write_queue_size: usize,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.conn.cancel();
    }
}
