//! The state every task of one scheduler shares, and the dispatcher task that hands out the
//! permissions that had to wait and runs the periodic refresh.

use super::conn::ConnShared;
use super::{lock, IoSchedulerConfig, IoSchedulerError};
use crate::budget::ByteBudget;
use peerpool_proto::scheduler::{ConnId, Direction, Scheduler, DEFAULT_PERIOD};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// The scheduler's mutable state, behind [`Shared::core`].
pub(super) struct Core {
    /// The arithmetic: buckets, quotas, waiting requests, statistics.
    pub(super) sched: Scheduler,
    /// Requests that have to wait, by connection and direction: the dispatcher fires the
    /// sender when the core grants them. Ordered, so that clearing it (at stop) drops the
    /// senders, and so wakes their tasks, in the same order on every run.
    pub(super) waiters: BTreeMap<(ConnId, Direction), oneshot::Sender<()>>,
    /// The registered connections, by id.
    pub(super) conns: BTreeMap<ConnId, Arc<ConnShared>>,
    /// The id of the next registered connection.
    pub(super) next_id: u64,
    /// No new registration (shutdown started).
    pub(super) closing: bool,
    /// The dispatcher must exit; requests fail.
    pub(super) stopped: bool,
}

/// What the scheduler's handle, its dispatcher and every connection's tasks share.
pub(super) struct Shared {
    pub(super) core: Mutex<Core>,
    /// Wakes the dispatcher: a request waits, a cap changed, or the scheduler stops.
    pub(super) wake: Notify,
    /// Time zero of the core's clock.
    pub(super) origin: Instant,
    pub(super) config: IoSchedulerConfig,
    /// The budget every read queue counts against (`None`: unlimited).
    pub(super) budget: Option<ByteBudget>,
    /// Every task of the scheduler: the dispatcher, each connection's reader and writer.
    /// Closed at shutdown or drop, so it completes once they have all ended.
    pub(super) tracker: TaskTracker,
    /// The runtime the tasks are spawned on (the one [`IoScheduler::new`] ran in).
    ///
    /// [`IoScheduler::new`]: super::IoScheduler::new
    pub(super) rt: tokio::runtime::Handle,
}

impl Shared {
    /// Time since [`Shared::origin`], from tokio's clock.
    pub(super) fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// Waits until `n` bytes of `id` may move in `direction`.
    ///
    /// Errors: [`IoSchedulerError::Shutdown`] once the scheduler stopped;
    /// [`IoSchedulerError::Closed`] when the connection is gone.
    pub(super) async fn acquire(
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

    /// The largest single grant for `id` in `direction`, bytes (`usize::MAX`: not capped).
    pub(super) fn chunk_limit(&self, id: ConnId, direction: Direction) -> usize {
        lock(&self.core).sched.chunk_limit(id, direction)
    }

    /// Counts `n` bytes of `id` that moved without a request (direct read).
    pub(super) fn record(&self, id: ConnId, direction: Direction, n: u64) {
        let now = self.now();
        lock(&self.core).sched.record(id, direction, n, now);
    }

    /// Refuses new connections and requests, fails the waiting ones, stops the dispatcher.
    pub(super) fn stop(&self) {
        let mut core = lock(&self.core);
        core.closing = true;
        core.stopped = true;
        core.waiters.clear();
        drop(core);
        self.wake.notify_one();
    }
}

/// The dispatcher task: fires the waiting requests the core grants, sleeping until the
/// core's next deadline or a wake-up; exits once the scheduler is stopped.
pub(super) async fn dispatch(shared: Arc<Shared>) {
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
        // `biased`: polled in this order, not at random, so a run is reproducible under a
        // seeded simulator. Both branches lead to the same recomputation; the wake-up goes
        // first so that a stored notification is consumed now rather than causing one more
        // round at once.
        tokio::select! {
            biased;
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(at) => {}
        }
    }
}
