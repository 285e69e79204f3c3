//! The state one connection's tasks and handles share, and the connection's life: close
//! (flush the write queue, then stop) and cancel (stop now).

use super::lock;
use super::read::ReadQueue;
use super::shared::Shared;
use super::write::WriteQueue;
use peerpool_proto::scheduler::{ConnId, Direction, Stat};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

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
    pub(super) write: Mutex<WriteQueue>,
    /// Wakes the writer task when the write queue has data or is closed (single waiter).
    pub(super) write_data: Notify,
    /// Wakes `write` callers when the write queue has room or is closed (many waiters).
    pub(super) write_room: Notify,
    /// Set by the writer task once the closed write queue is drained and the stream shut.
    pub(super) flushed: watch::Sender<bool>,
    /// Set once the tasks are stopped and the stream dropped.
    pub(super) finished: watch::Sender<bool>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The statistics last read from the core, kept for after the connection is removed.
    pub(super) last_stat: Mutex<Stat>,
}

impl ConnShared {
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

    /// Stops the connection now: forgets it in the scheduler, aborts its tasks (dropping the
    /// stream), ends both queues. Safe to call from the connection's own tasks.
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
    pub(super) async fn close(&self, timeout: Duration) {
        self.close_write();
        let mut flushed = self.flushed.subscribe();
        let mut finished = self.finished.subscribe();
        // The writer reports "flushed"; if it died first (I/O error), "finished" comes instead.
        let drained = async {
            // `biased` (fixed order, reproducible runs); either branch means the same: go on
            // to cancel.
            tokio::select! {
                biased;
                _ = flushed.wait_for(|f| *f) => {}
                _ = finished.wait_for(|f| *f) => {}
            }
        };
        let _ = tokio::time::timeout(timeout, drained).await;
        self.cancel();
        let _ = finished.wait_for(|f| *f).await;
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
