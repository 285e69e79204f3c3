//! The scheduler's constants, configuration ([`SchedulerConfig`], [`LaneConfig`]), error
//! type ([`SchedulerError`]) and identifiers ([`ConnId`], [`Direction`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Moving-average refresh period (BEHAVIOUR.md §6: 1.0 s).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// Weight of the newest sample in the moving average (BEHAVIOUR.md §6: α = 0.2).
pub const EMA_ALPHA: f64 = 0.2;
/// Default burst window: a capped bucket holds at most `max_speed × 100 ms`, and never less
/// than one chunk.
pub const DEFAULT_BURST: Duration = Duration::from_millis(100);
/// Default largest single grant, bytes (BEHAVIOUR.md §6 `read_buffer_size`, 16 KiB).
pub const DEFAULT_MAX_CHUNK: usize = 16 * 1024;
/// Smallest capacity of a per-connection cap bucket, bytes, so very low caps still move
/// reasonably sized chunks.
pub const MIN_CONN_BURST: u64 = 512;

/// Errors of the scheduler core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// The connection id is not registered (never was, or was removed).
    #[error("unknown connection {0}")]
    UnknownConnection(ConnId),
    /// Weights must be at least 1.
    #[error("weight must be at least 1")]
    ZeroWeight,
    /// A configuration value is out of range; the text says which.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(&'static str),
}

/// Identifier of a scheduled connection; unique for the life of a [`Scheduler`].
///
/// [`Scheduler`]: super::Scheduler
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A direction of traffic, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// Bytes read from the socket (download, inflow, `total_recv`).
    Recv,
    /// Bytes written to the socket (upload, outflow, `total_sent`).
    Send,
}

/// Configuration of one [`Lane`].
///
/// [`Lane`]: super::Lane
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// Global cap, bytes per second; `None` (default) means no cap.
    pub max_speed: Option<u64>,
    /// Burst window: the global bucket holds at most `max_speed × burst` bytes, and never
    /// less than `max_chunk`. Default [`DEFAULT_BURST`].
    pub burst: Duration,
    /// Largest single grant, bytes (also the smallest bucket capacity). Default
    /// [`DEFAULT_MAX_CHUNK`]. Must be at least 1.
    pub max_chunk: usize,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            max_speed: None,
            burst: DEFAULT_BURST,
            max_chunk: DEFAULT_MAX_CHUNK,
        }
    }
}

/// Configuration of a [`Scheduler`]; checked by [`Scheduler::new`].
///
/// [`Scheduler`]: super::Scheduler
/// [`Scheduler::new`]: super::Scheduler::new
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Global upload cap, bytes per second (default none). Must be ≥ 1 when set.
    pub max_upload_speed: Option<u64>,
    /// Global download cap, bytes per second (default none). Must be ≥ 1 when set.
    pub max_download_speed: Option<u64>,
    /// Burst window of the buckets (default [`DEFAULT_BURST`]).
    pub burst: Duration,
    /// Largest single grant, bytes (default [`DEFAULT_MAX_CHUNK`]; must be ≥ 1).
    pub max_chunk: usize,
    /// Quota and moving-average refresh period (default [`DEFAULT_PERIOD`]; must be > 0).
    pub period: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_upload_speed: None,
            max_download_speed: None,
            burst: DEFAULT_BURST,
            max_chunk: DEFAULT_MAX_CHUNK,
            period: DEFAULT_PERIOD,
        }
    }
}
