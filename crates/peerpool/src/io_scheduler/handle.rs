//! The public handles: [`IoScheduler`] and [`ScheduledConnection`].

use super::conn::{ConnShared, Owner};
use super::read::ScheduledReader;
use super::shared::{dispatch, Core, Shared};
use super::write::ScheduledWriter;
use super::{lock, ConnectionInfo, IoSchedulerConfig, IoSchedulerError, MaState, Stat};
use crate::budget::ByteBudget;
use bytes::Bytes;
use peerpool_proto::scheduler::{ConnId, Direction, Scheduler, SchedulerConfig, DEFAULT_PERIOD};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

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

impl AsyncRead for ScheduledConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
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

    /// Counts `sent` and `received` bytes that this connection's stream moved before it was
    /// registered (the node runs the handshake on the raw stream, which saves a task hop
    /// per handshake message) as if they had passed through the scheduler: they show in
    /// the statistics and are charged to the quotas, after the fact, as direct reads are.
    pub fn record_moved(&self, sent: u64, received: u64) {
        if let Some(shared) = self.writer.owner.conn.sched.upgrade() {
            let id = self.id();
            shared.record(id, Direction::Send, sent);
            shared.record(id, Direction::Recv, received);
        }
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
/// Every task it spawns (the dispatcher, each connection's reader and writer) is tracked:
/// [`IoScheduler::live_tasks`] counts them and [`IoScheduler::shutdown`] returns once they
/// have all ended.
///
/// Dropping it stops the dispatcher: waiting requests fail and the connections are
/// cancelled (not flushed); all its tasks then end.
pub struct IoScheduler {
    shared: Arc<Shared>,
}

impl fmt::Debug for IoScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoScheduler")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl IoScheduler {
    /// Starts a scheduler (spawns its dispatcher task on the current tokio runtime; every
    /// later task of the scheduler goes to the same runtime).
    ///
    /// Errors: [`IoSchedulerError::InvalidConfig`] for a zero size or speed;
    /// [`IoSchedulerError::NoRuntime`] outside a tokio runtime.
    pub fn new(config: IoSchedulerConfig) -> Result<Self, IoSchedulerError> {
        Self::start(config, None)
    }

    /// Starts a scheduler whose read queues count against `budget`, the node-wide cap on
    /// buffered bytes (shared with whatever else holds the same [`ByteBudget`]).
    ///
    /// When a connection's download is capped, its reader task takes the bytes it is about
    /// to read from the budget *before* reading the socket, waiting while the budget is
    /// spent (the socket is then not read: TCP pushes back on the remote). The bytes keep
    /// their part of the budget in the read queue and give it back as the consumer reads
    /// them (a partial read gives back that part). While it waits on its socket a capped
    /// connection's reader holds up to `read_buffer_size` bytes, so a budget smaller than
    /// `connections × read_buffer_size` can leave busy connections waiting on idle ones.
    /// Direct reads (download not capped) read into the caller's buffer and hold nothing;
    /// a direct read smaller than `read_buffer_size` queues what does not fit only if the
    /// budget has room for it at once.
    ///
    /// Errors: as [`IoScheduler::new`]; [`IoSchedulerError::InvalidConfig`] for a budget of
    /// 0 bytes.
    pub fn with_budget(
        config: IoSchedulerConfig,
        budget: ByteBudget,
    ) -> Result<Self, IoSchedulerError> {
        if budget.total() == 0 {
            return Err(IoSchedulerError::InvalidConfig("budget must be ≥ 1 byte"));
        }
        Self::start(config, Some(budget))
    }

    fn start(
        config: IoSchedulerConfig,
        budget: Option<ByteBudget>,
    ) -> Result<Self, IoSchedulerError> {
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
                waiters: BTreeMap::new(),
                conns: BTreeMap::new(),
                next_id: 0,
                closing: false,
                stopped: false,
            }),
            wake: Notify::new(),
            origin: Instant::now(),
            config,
            budget,
            tracker: TaskTracker::new(),
            rt,
        });
        shared
            .tracker
            .spawn_on(dispatch(shared.clone()), &shared.rt);
        Ok(IoScheduler { shared })
    }

    /// The configuration.
    pub fn config(&self) -> &IoSchedulerConfig {
        &self.shared.config
    }

    /// Registers a byte stream; from now on every byte it reads or writes passes through
    /// the scheduler. Spawns a reader and a writer task for it (tracked, see
    /// [`IoScheduler::live_tasks`]); they end when the connection is closed, cancelled or
    /// dropped.
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
        let conn = Arc::new(ConnShared::new(id, &self.shared, Box::new(rd)));
        core.conns.insert(id, conn.clone());
        // Spawned with the core locked: whoever finds the connection in `conns` (shutdown,
        // drop) finds its tasks spawned, so cancelling it stops them.
        conn.spawn_tasks(&self.shared, wr);
        drop(core);
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

    /// Counts bytes that a stream moved before it could be registered and never will be
    /// (the handshake of an attempt that failed or was refused): they show in
    /// [`IoScheduler::global_stat`] and are charged to the global caps.
    pub fn record_unattached(&self, sent: u64, received: u64) {
        let now = self.shared.now();
        let mut core = lock(&self.shared.core);
        core.sched.record_unattached(Direction::Send, sent, now);
        core.sched.record_unattached(Direction::Recv, received, now);
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
    /// for up to `timeout`, see [`ScheduledWriter::close`]), stops the dispatcher, then waits
    /// until every task of the scheduler has ended: when it returns, [`IoScheduler::live_tasks`]
    /// is 0 and every registered stream is dropped. Idempotent.
    ///
    /// The write queues are flushed side by side against one deadline, `timeout` from the
    /// call; a connection is stopped once it is flushed and those before it in id order are
    /// stopped.
    pub async fn shutdown(&self, timeout: Duration) {
        let conns: Vec<_> = {
            let mut core = lock(&self.shared.core);
            core.closing = true;
            core.conns.values().cloned().collect()
        };
        for conn in &conns {
            conn.close_write();
        }
        let deadline = Instant::now().checked_add(timeout);
        for conn in &conns {
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, conn.drained()).await;
                }
                None => conn.drained().await,
            }
            conn.cancel();
        }
        for conn in &conns {
            conn.ended().await;
        }
        self.shared.stop();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }

    /// Tasks of this scheduler that have not ended yet: the dispatcher (until shutdown or
    /// drop) and two per connection (its reader and its writer, until the connection is
    /// closed, cancelled or dropped and the runtime has dropped the tasks). 0 once
    /// [`IoScheduler::shutdown`] has returned.
    pub fn live_tasks(&self) -> usize {
        self.shared.tracker.len()
    }

    /// A future that completes once the scheduler is shut down or dropped and every one of
    /// its tasks has ended; it does not hold the scheduler, so it can be awaited after the
    /// scheduler is dropped (e.g. to see that a drop without shutdown leaves no task behind).
    pub fn tasks_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let tracker = self.shared.tracker.clone();
        async move { tracker.wait().await }
    }
}

impl Drop for IoScheduler {
    /// Stops the dispatcher and cancels every connection without flushing; their tasks end
    /// at the runtime's next turn (see [`IoScheduler::tasks_ended`]).
    fn drop(&mut self) {
        self.shared.stop();
        let conns: Vec<_> = lock(&self.shared.core).conns.values().cloned().collect();
        for conn in conns {
            conn.cancel();
        }
        self.shared.tracker.close();
    }
}
