//! [`Scheduler`]: both lanes behind one API, the periodic refresh (moving averages, quotas,
//! promotion), grants and statistics.

use super::bucket::TokenBucket;
use super::config::{ConnId, Direction, LaneConfig, SchedulerConfig, SchedulerError, EMA_ALPHA};
use super::lane::Lane;
use super::stats::{int31, MaState, Stat};
use std::collections::BTreeMap;
use std::time::Duration;

/// Grant handed out by [`Scheduler::poll_grant`]: connection `id` may move `bytes` bytes in
/// `direction` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The connection.
    pub id: ConnId,
    /// The direction.
    pub direction: Direction,
    /// Bytes granted (exactly the amount requested).
    pub bytes: u64,
}

/// Both directions of the bandwidth scheduler, plus the moving-average clock.
#[derive(Debug, Clone)]
pub struct Scheduler {
    recv: Lane,
    send: Lane,
    period: Duration,
    last_refresh: Duration,
    refreshes: u64,
    now: Duration,
    weights: BTreeMap<ConnId, u32>,
}

impl Scheduler {
    /// A scheduler whose first refresh is one period after `now`.
    ///
    /// Errors: [`SchedulerError::InvalidConfig`] if a cap is 0, `max_chunk` is 0 or `period`
    /// is zero.
    pub fn new(config: SchedulerConfig, now: Duration) -> Result<Self, SchedulerError> {
        if config.max_upload_speed == Some(0) || config.max_download_speed == Some(0) {
            return Err(SchedulerError::InvalidConfig(
                "a max speed must be at least 1 byte/s",
            ));
        }
        if config.max_chunk == 0 {
            return Err(SchedulerError::InvalidConfig(
                "max_chunk must be at least 1 byte",
            ));
        }
        if config.period.is_zero() {
            return Err(SchedulerError::InvalidConfig("period must be positive"));
        }
        let lane = |max_speed| LaneConfig {
            max_speed,
            burst: config.burst,
            max_chunk: config.max_chunk,
        };
        Ok(Scheduler {
            recv: Lane::new(lane(config.max_download_speed), now),
            send: Lane::new(lane(config.max_upload_speed), now),
            period: config.period,
            last_refresh: now,
            refreshes: 0,
            now,
            weights: BTreeMap::new(),
        })
    }

    /// The lane of `direction`.
    pub fn lane(&self, direction: Direction) -> &Lane {
        match direction {
            Direction::Recv => &self.recv,
            Direction::Send => &self.send,
        }
    }

    fn lane_mut(&mut self, direction: Direction) -> &mut Lane {
        match direction {
            Direction::Recv => &mut self.recv,
            Direction::Send => &mut self.send,
        }
    }

    /// Registers `id` with weight 1, no cap and a zero quota (so it starts in the low queue,
    /// as in octez). Re-adding a known id resets it.
    pub fn add_connection(&mut self, id: ConnId) {
        self.remove_connection(id);
        self.recv.add(id, 1);
        self.send.add(id, 1);
        self.weights.insert(id, 1);
    }

    /// Forgets `id` and any request it has waiting. Unknown ids are ignored.
    pub fn remove_connection(&mut self, id: ConnId) {
        self.recv.remove(id);
        self.send.remove(id);
        self.weights.remove(&id);
    }

    /// Registered connection ids, in order.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.weights.keys().copied()
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        self.weights.len()
    }

    /// Sets the weight of `id` in both directions; shares are proportional to weights from
    /// the next refresh on.
    ///
    /// Errors: [`SchedulerError::ZeroWeight`], [`SchedulerError::UnknownConnection`].
    pub fn set_weight(&mut self, id: ConnId, weight: u32) -> Result<(), SchedulerError> {
        if weight == 0 {
            return Err(SchedulerError::ZeroWeight);
        }
        let w = self
            .weights
            .get_mut(&id)
            .ok_or(SchedulerError::UnknownConnection(id))?;
        *w = weight;
        self.recv.set_weight(id, weight);
        self.send.set_weight(id, weight);
        Ok(())
    }

    /// The weight of `id`.
    pub fn weight(&self, id: ConnId) -> Option<u32> {
        self.weights.get(&id).copied()
    }

    /// Sets (or with `None` removes) the per-connection caps of `id`, bytes per second,
    /// upload then download. A new cap bucket starts full.
    ///
    /// Errors: [`SchedulerError::UnknownConnection`]; [`SchedulerError::InvalidConfig`] for a
    /// cap of 0.
    pub fn set_cap(
        &mut self,
        id: ConnId,
        up: Option<u64>,
        down: Option<u64>,
        now: Duration,
    ) -> Result<(), SchedulerError> {
        if up == Some(0) || down == Some(0) {
            return Err(SchedulerError::InvalidConfig(
                "a connection cap must be at least 1 byte/s",
            ));
        }
        if !self.weights.contains_key(&id) {
            return Err(SchedulerError::UnknownConnection(id));
        }
        self.send.set_cap(id, up, now);
        self.recv.set_cap(id, down, now);
        Ok(())
    }

    /// The per-connection caps of `id` (upload, download), bytes per second.
    pub fn cap(&self, id: ConnId) -> Option<(Option<u64>, Option<u64>)> {
        let up = self
            .send
            .conns
            .get(&id)?
            .cap
            .as_ref()
            .map(TokenBucket::rate);
        let down = self
            .recv
            .conns
            .get(&id)?
            .cap
            .as_ref()
            .map(TokenBucket::rate);
        Some((up, down))
    }

    /// The largest request `id` should make in `direction`, bytes: `max_chunk`, or less when
    /// the connection's own cap bucket is smaller; `usize::MAX` (no limit) when neither the
    /// lane nor the connection is capped, since such requests are always granted at once.
    pub fn chunk_limit(&self, id: ConnId, direction: Direction) -> usize {
        self.lane(direction).chunk_limit(id)
    }

    /// Asks to move `bytes` bytes of `id` in `direction`.
    ///
    /// Returns `Ok(true)` if granted at once (nobody waiting ahead in that lane, and the
    /// global and per-connection buckets admit it): the bytes are counted now. Returns
    /// `Ok(false)` if the request now waits in the high queue (positive quota) or the low
    /// queue; it will come out of [`Scheduler::poll_grant`]. A second request while one is
    /// waiting replaces the amount and keeps the place.
    ///
    /// Errors: [`SchedulerError::UnknownConnection`].
    pub fn request(
        &mut self,
        id: ConnId,
        direction: Direction,
        bytes: u64,
        now: Duration,
    ) -> Result<bool, SchedulerError> {
        self.handle_timeout(now);
        self.lane_mut(direction).request(id, bytes, now)
    }

    /// Counts `bytes` of `id` in `direction` that moved without a request: the I/O layer may
    /// move bytes straight through when neither the lane nor the connection is capped
    /// ([`Scheduler::chunk_limit`] is `usize::MAX`), since such a request would be granted
    /// at once. Charges buckets, quota and statistics as a grant would (a cap switched on in
    /// between is taken into deficit, so the bytes are paid for); a waiting request of `id`
    /// keeps its place. Unknown ids are ignored.
    pub fn record(&mut self, id: ConnId, direction: Direction, bytes: u64, now: Duration) {
        self.handle_timeout(now);
        let lane = self.lane_mut(direction);
        lane.refill(now);
        let Some(c) = lane.conns.get_mut(&id) else {
            return;
        };
        if let Some(b) = c.cap.as_mut() {
            b.refill(now);
        }
        lane.count(id, bytes);
    }

    /// Counts `bytes` that moved in `direction` outside any connection (a handshake that
    /// ended before its stream was registered): in the global totals and rates, and
    /// charged to the global cap, as [`Scheduler::record`] does for a connection.
    pub fn record_unattached(&mut self, direction: Direction, bytes: u64, now: Duration) {
        self.handle_timeout(now);
        let lane = self.lane_mut(direction);
        lane.refill(now);
        lane.count_unattached(bytes);
    }

    /// Withdraws a waiting request of `id` in `direction`, if any.
    pub fn cancel(&mut self, id: ConnId, direction: Direction) {
        self.lane_mut(direction).cancel(id);
    }

    /// The next grant, if a waiting request can go now: the first request (high queue, then
    /// low queue) not held back by its connection's cap, provided the global bucket admits
    /// it. Call until `None`.
    pub fn poll_grant(&mut self, now: Duration) -> Option<Grant> {
        self.handle_timeout(now);
        for direction in [Direction::Recv, Direction::Send] {
            if let Some((id, bytes)) = self.lane_mut(direction).poll_grant(now) {
                return Some(Grant {
                    id,
                    direction,
                    bytes,
                });
            }
        }
        None
    }

    /// Runs the periodic refresh if a period has passed since the last one: moving averages,
    /// then quotas (`quota := min(quota, 0) + share`), then low-to-high promotion.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let Some(elapsed) = now.checked_sub(self.last_refresh) else {
            return;
        };
        if elapsed < self.period {
            return;
        }
        self.last_refresh = now;
        self.refreshes += 1;
        self.recv.refresh(now, elapsed);
        self.send.refresh(now, elapsed);
    }

    /// The next `now` at which something may change without new input: the next refresh, or
    /// the time a waiting request's buckets will admit it. After [`Scheduler::poll_grant`]
    /// returned `None`, this is later than the last `now` seen.
    pub fn poll_timeout(&self) -> Duration {
        let refresh = self.last_refresh.saturating_add(self.period);
        let now = self.now;
        [self.recv.poll_timeout(now), self.send.poll_timeout(now)]
            .into_iter()
            .flatten()
            .fold(refresh, Duration::min)
    }

    /// Statistics of `id` (`None` if unknown).
    pub fn stat(&self, id: ConnId) -> Option<Stat> {
        let r = self.recv.conns.get(&id)?;
        let s = self.send.conns.get(&id)?;
        Some(Stat {
            total_sent: s.avg.total(),
            total_recv: r.avg.total(),
            current_inflow: int31(r.avg.rate()),
            current_outflow: int31(s.avg.rate()),
        })
    }

    /// Statistics of the whole scheduler (totals include connections already removed).
    pub fn global_stat(&self) -> Stat {
        Stat {
            total_sent: self.send.total(),
            total_recv: self.recv.total(),
            current_inflow: int31(self.recv.rate()),
            current_outflow: int31(self.send.rate()),
        }
    }

    /// State of the moving-average clock.
    pub fn ma_state(&self) -> MaState {
        MaState {
            period: self.period,
            alpha: EMA_ALPHA,
            refreshes: self.refreshes,
            last_refresh: self.last_refresh,
            connections: self.weights.len(),
        }
    }
}
