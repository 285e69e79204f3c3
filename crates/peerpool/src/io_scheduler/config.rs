//! Configuration, errors and the per-connection view of an [`IoScheduler`].

#[cfg(doc)]
use super::IoScheduler;
use peerpool_proto::scheduler::{ConnId, SchedulerError, Stat, DEFAULT_BURST};
use serde::Serialize;
use std::time::Duration;

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
    /// Checks every value; errors: [`IoSchedulerError::InvalidConfig`].
    pub(super) fn check(&self) -> Result<(), IoSchedulerError> {
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
