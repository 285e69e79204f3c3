//! [`Lane`]: one direction of the scheduler, with its global bucket, the per-connection
//! state (weight, quota, cap bucket, waiting request, moving average) and the high and low
//! ready queues.

use super::bucket::{bucket_capacity, TokenBucket, NANOS_PER_SEC};
use super::config::{ConnId, LaneConfig, SchedulerError, MIN_CONN_BURST};
use super::stats::MovingAverage;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    No,
    High,
    Low,
}

#[derive(Debug, Clone)]
pub(super) struct LaneConn {
    weight: u32,
    quota: i64,
    pub(super) cap: Option<TokenBucket>,
    pending: Option<u64>,
    queued: Queued,
    pub(super) avg: MovingAverage,
}

/// One direction of the scheduler: a global bucket, per-connection quotas and caps, the high
/// and low ready queues, and the moving averages.
#[derive(Debug, Clone)]
pub struct Lane {
    config: LaneConfig,
    bucket: Option<TokenBucket>,
    pub(super) conns: BTreeMap<ConnId, LaneConn>,
    total_weight: u64,
    high: VecDeque<ConnId>,
    low: VecDeque<ConnId>,
    avg: MovingAverage,
}

impl Lane {
    /// An empty lane; the bucket (if capped) starts full at `now`.
    pub fn new(config: LaneConfig, now: Duration) -> Self {
        let bucket = config.max_speed.map(|rate| {
            let cap = bucket_capacity(rate, config.burst, config.max_chunk as u64);
            TokenBucket::new(rate, cap, now)
        });
        Lane {
            config,
            bucket,
            conns: BTreeMap::new(),
            total_weight: 0,
            high: VecDeque::new(),
            low: VecDeque::new(),
            avg: MovingAverage::new(),
        }
    }

    /// The largest burst of the global bucket, bytes (0 when the lane is not capped).
    pub fn burst_bytes(&self) -> u64 {
        self.bucket.as_ref().map_or(0, TokenBucket::capacity)
    }

    /// The global cap, bytes per second.
    pub fn max_speed(&self) -> Option<u64> {
        self.config.max_speed
    }

    /// Total bytes granted in this lane.
    pub fn total(&self) -> u64 {
        self.avg.total()
    }

    /// Moving average of this lane, bytes per second.
    pub fn rate(&self) -> u64 {
        self.avg.rate()
    }

    /// Current quota of `id`, bytes (negative: a deficit). `None` if unknown.
    pub fn quota(&self, id: ConnId) -> Option<i64> {
        self.conns.get(&id).map(|c| c.quota)
    }

    pub(super) fn add(&mut self, id: ConnId, weight: u32) {
        self.total_weight += u64::from(weight);
        self.conns.insert(
            id,
            LaneConn {
                weight,
                quota: 0,
                cap: None,
                pending: None,
                queued: Queued::No,
                avg: MovingAverage::new(),
            },
        );
    }

    pub(super) fn remove(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            self.total_weight -= u64::from(c.weight);
            match c.queued {
                Queued::High => self.high.retain(|x| *x != id),
                Queued::Low => self.low.retain(|x| *x != id),
                Queued::No => {}
            }
        }
    }

    pub(super) fn set_weight(&mut self, id: ConnId, weight: u32) {
        if let Some(c) = self.conns.get_mut(&id) {
            self.total_weight = self.total_weight - u64::from(c.weight) + u64::from(weight);
            c.weight = weight;
        }
    }

    pub(super) fn set_cap(&mut self, id: ConnId, cap: Option<u64>, now: Duration) {
        let max_chunk = self.config.max_chunk as u64;
        let burst = self.config.burst;
        if let Some(c) = self.conns.get_mut(&id) {
            c.cap = cap.map(|rate| {
                let capacity =
                    bucket_capacity(rate, burst, 1).clamp(MIN_CONN_BURST.min(max_chunk), max_chunk);
                TokenBucket::new(rate, capacity, now)
            });
        }
    }

    pub(super) fn chunk_limit(&self, id: ConnId) -> usize {
        let max = self.config.max_chunk;
        match self.conns.get(&id).and_then(|c| c.cap.as_ref()) {
            Some(b) => (b.capacity() as usize).clamp(1, max),
            None if self.bucket.is_none() => usize::MAX,
            None => max,
        }
    }

    pub(super) fn refill(&mut self, now: Duration) {
        if let Some(b) = self.bucket.as_mut() {
            b.refill(now);
        }
    }

    fn conn_can_go(c: &mut LaneConn, n: u64, now: Duration) -> bool {
        match c.cap.as_mut() {
            Some(b) => {
                b.refill(now);
                b.can_take(n)
            }
            None => true,
        }
    }

    fn charge(&mut self, id: ConnId, n: u64) {
        self.count(id, n);
        if let Some(c) = self.conns.get_mut(&id) {
            c.pending = None;
            c.queued = Queued::No;
        }
    }

    /// Counts `n` bytes that moved outside any connection: the global bucket and average.
    pub(super) fn count_unattached(&mut self, n: u64) {
        if let Some(b) = self.bucket.as_mut() {
            b.take(n);
        }
        self.avg.add(n);
    }

    /// Counts `n` bytes of `id`: buckets, quota, moving averages. Leaves any waiting request
    /// of `id` alone.
    pub(super) fn count(&mut self, id: ConnId, n: u64) {
        self.count_unattached(n);
        if let Some(c) = self.conns.get_mut(&id) {
            if let Some(b) = c.cap.as_mut() {
                b.take(n);
            }
            // Octez charges the quota only for traffic from the high queue.
            if c.quota > 0 {
                c.quota -= i64::try_from(n).unwrap_or(i64::MAX);
            }
            c.avg.add(n);
        }
    }

    pub(super) fn request(
        &mut self,
        id: ConnId,
        n: u64,
        now: Duration,
    ) -> Result<bool, SchedulerError> {
        self.refill(now);
        let queues_empty = self.high.is_empty() && self.low.is_empty();
        let global_ok = self.bucket.as_ref().is_none_or(|b| b.can_take(n));
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(SchedulerError::UnknownConnection(id))?;
        if c.queued != Queued::No {
            // Already waiting: update the amount, keep the place.
            c.pending = Some(n);
            return Ok(false);
        }
        // Fast path: nobody is waiting ahead and every bucket has room.
        if queues_empty && global_ok && Self::conn_can_go(c, n, now) {
            self.charge(id, n);
            return Ok(true);
        }
        c.pending = Some(n);
        if c.quota > 0 {
            c.queued = Queued::High;
            self.high.push_back(id);
        } else {
            c.queued = Queued::Low;
            self.low.push_back(id);
        }
        Ok(false)
    }

    pub(super) fn cancel(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            match c.queued {
                Queued::High => self.high.retain(|x| *x != id),
                Queued::Low => self.low.retain(|x| *x != id),
                Queued::No => {}
            }
            c.queued = Queued::No;
            c.pending = None;
        }
    }

    /// Finds the first waiting connection not held back by its own cap, high queue first.
    fn first_eligible(&mut self, now: Duration) -> Option<(bool, usize, ConnId, u64)> {
        for (is_high, queue) in [(true, &self.high), (false, &self.low)] {
            for (i, id) in queue.iter().enumerate() {
                let Some(c) = self.conns.get_mut(id) else {
                    continue;
                };
                let n = c.pending.unwrap_or(0);
                if Self::conn_can_go(c, n, now) {
                    return Some((is_high, i, *id, n));
                }
            }
        }
        None
    }

    pub(super) fn poll_grant(&mut self, now: Duration) -> Option<(ConnId, u64)> {
        self.refill(now);
        let (is_high, i, id, n) = self.first_eligible(now)?;
        if let Some(b) = self.bucket.as_ref() {
            if !b.can_take(n) {
                return None;
            }
        }
        let queue = if is_high {
            &mut self.high
        } else {
            &mut self.low
        };
        queue.remove(i);
        self.charge(id, n);
        Some((id, n))
    }

    /// Earliest time a waiting request may be granted: requests held back by their own cap
    /// when their cap and the global bucket both admit them; the first request not held back
    /// by its cap (the head of line) when the global bucket admits it.
    pub(super) fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut head_seen = false;
        let global_at = |n| self.bucket.as_ref().map_or(now, |b| b.ready_at(n));
        for id in self.high.iter().chain(self.low.iter()) {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            let n = c.pending.unwrap_or(0);
            let cap_at = c.cap.as_ref().map_or(now, |b| b.ready_at(n));
            let t = if cap_at > now {
                cap_at.max(global_at(n))
            } else if !head_seen {
                head_seen = true;
                global_at(n)
            } else {
                continue;
            };
            next = Some(next.map_or(t, |x| x.min(t)));
        }
        next
    }

    pub(super) fn refresh(&mut self, now: Duration, elapsed: Duration) {
        self.avg.update(elapsed);
        for c in self.conns.values_mut() {
            c.avg.update(elapsed);
        }
        // Shares: from the cap when one is set (beyond octez), else from the measured rate.
        let basis = self.config.max_speed.unwrap_or_else(|| self.avg.rate());
        let period_bytes = (u128::from(basis) * elapsed.as_nanos()) / NANOS_PER_SEC as u128;
        let total_weight = u128::from(self.total_weight.max(1));
        for c in self.conns.values_mut() {
            let share = period_bytes * u128::from(c.weight) / total_weight;
            let share = i64::try_from(share).unwrap_or(i64::MAX);
            c.quota = c.quota.min(0).saturating_add(share);
        }
        // Low-queue entries whose quota is now positive move to the high queue, in order.
        let low = std::mem::take(&mut self.low);
        for id in low {
            match self.conns.get_mut(&id) {
                Some(c) if c.quota > 0 => {
                    c.queued = Queued::High;
                    self.high.push_back(id);
                }
                Some(_) => self.low.push_back(id),
                None => {}
            }
        }
        self.refill(now);
    }
}
