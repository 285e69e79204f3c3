//! Bandwidth-scheduler arithmetic: token buckets, fair-share quotas with deficit carry-over,
//! "who goes next", and moving-average statistics (BEHAVIOUR.md §6, `P2p_io_scheduler`).
//!
//! This module owns no sockets and reads no clock: every method that depends on time takes
//! `now: Duration`, the time since an arbitrary origin chosen by the caller (the runtime uses
//! the `tokio::time::Instant` at which it created the scheduler). `now` must not go backwards;
//! an earlier `now` is treated as "no time elapsed".
//!
//! # Model
//!
//! A [`Scheduler`] has two [`Lane`]s, one per [`Direction`]. A connection that wants to move
//! `n` bytes in one direction calls [`Scheduler::request`]; it is granted at once when nothing
//! stands in its way, otherwise it waits in the lane's ready queues until
//! [`Scheduler::poll_grant`] hands out the grant. Grants are exact: a grant of `n` bytes means
//! "move these `n` bytes now", and they are counted (totals, moving averages, quotas, tokens) at
//! the time of the grant.
//!
//! Octez semantics kept (BEHAVIOUR.md §6):
//! - each connection has a per-period quota, its share of the lane's rate; a deficit carries
//!   over to the next period, a surplus does not (`quota := min(quota, 0) + share`);
//! - connections with a positive quota (the *high* queue) are served before the others (the
//!   *low* queue); each queue is FIFO; quota is charged only while it is positive;
//! - a global token bucket enforces `max_speed` when one is set;
//! - moving averages refreshed every period (1 s) with α = 0.2:
//!   `avg := 0.2 · bytes / elapsed + 0.8 · avg`.
//!
//! Beyond octez:
//! - the global bucket refills continuously (`rate × elapsed`, capped at a burst) rather than
//!   once per period, so the cap also holds over windows shorter than one period;
//! - when a cap is set, shares are computed from the cap rather than the measured rate, so
//!   weights apply from the first period instead of after the average warms up;
//! - a per-connection weight (default 1): shares are proportional to weights;
//! - an optional per-connection cap (bytes per second) per direction, enforced by a
//!   per-connection token bucket; a connection held back by its own cap never blocks others.
//!
//! Invariant (property-tested): over any run, the bytes granted in a capped lane are at most
//! `max_speed × elapsed + burst`, where `burst` is [`Lane::burst_bytes`].
//!
//! # Layout
//!
//! Private files, every public item re-exported here:
//!
//! - `config.rs`: constants, [`SchedulerConfig`], [`LaneConfig`], [`SchedulerError`],
//!   [`ConnId`], [`Direction`].
//! - `bucket.rs`: [`TokenBucket`], exact byte-nanosecond arithmetic, and bucket sizing.
//! - `stats.rs`: [`MovingAverage`], [`Stat`] (octez `P2p_stat` JSON), [`MaState`].
//! - `lane.rs`: [`Lane`], one direction: global bucket, per-connection state (weight,
//!   quota with deficit carry-over, cap bucket, waiting request, average), high and low
//!   queues, "who goes next".
//! - `sched.rs`: [`Scheduler`] and [`Grant`]: both lanes, the periodic refresh, statistics.
//! - `tests.rs`: scenario and property tests of the whole scheduler (unit tests of the
//!   bucket and the statistics sit in their files).

mod bucket;
mod config;
mod lane;
mod sched;
mod stats;

#[cfg(test)]
mod tests;

pub use bucket::TokenBucket;
pub use config::{
    ConnId, Direction, LaneConfig, SchedulerConfig, SchedulerError, DEFAULT_BURST,
    DEFAULT_MAX_CHUNK, DEFAULT_PERIOD, EMA_ALPHA, MIN_CONN_BURST,
};
pub use lane::Lane;
pub use sched::{Grant, Scheduler};
pub use stats::{MaState, MovingAverage, Stat};
