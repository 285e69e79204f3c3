//! Time for the node: the wall clock is injected ([`WallClock`]), read once at start, and
//! advanced by `tokio::time` from then on ([`NodeClock`]). So a paused tokio clock, or a
//! simulator that drives tokio's clock, drives the pool's dates too, and the node never
//! reads the system clock in the middle of a run.

use peerpool_proto::pool::Time;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// A source of wall-clock time: the duration since the Unix epoch. Read once, when the
/// node starts.
pub trait WallClock: fmt::Debug + Send + Sync + 'static {
    /// Now, as a duration since 1970-01-01T00:00:00Z.
    fn since_epoch(&self) -> Duration;
}

/// The system's clock (`SystemTime::now()`); before 1970 reads as the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn since_epoch(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that always reads the same time: for tests and simulations, where the date
/// at start must not depend on the day the test runs.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub Duration);

impl WallClock for FixedClock {
    fn since_epoch(&self) -> Duration {
        self.0
    }
}

/// The node's clock: the wall-clock time read at start, plus the `tokio::time` elapsed
/// since then. Converts pool times to tokio instants for timers, and back.
#[derive(Debug, Clone, Copy)]
pub struct NodeClock {
    origin: Instant,
    wall: Duration,
}

impl NodeClock {
    /// Reads `wall` once, now.
    pub fn start(wall: &dyn WallClock) -> Self {
        NodeClock {
            origin: Instant::now(),
            wall: wall.since_epoch(),
        }
    }

    /// Now, as a pool time.
    pub fn now(&self) -> Time {
        self.time_at(Instant::now())
    }

    /// The pool time of a tokio instant.
    pub fn time_at(&self, instant: Instant) -> Time {
        Time::from_unix(self.wall + instant.saturating_duration_since(self.origin))
    }

    /// The tokio instant of a pool time (instants before start map to the start).
    pub fn instant_of(&self, time: Time) -> Instant {
        let after = time.as_unix().saturating_sub(self.wall);
        // A far-future time (e.g. a backoff of years) is capped so the addition cannot
        // overflow the platform's instant.
        self.origin + after.min(Duration::from_secs(10 * 365 * 86_400))
    }

    /// How long the node has run.
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pool_time_follows_tokio_time_from_the_injected_start() {
        let clock = NodeClock::start(&FixedClock(Duration::from_secs(1_000)));
        assert_eq!(clock.now(), Time::from_secs(1_000));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(
            clock.now(),
            Time::from_unix(Duration::from_millis(1_002_500))
        );
        let later = Time::from_secs(1_010);
        assert_eq!(clock.time_at(clock.instant_of(later)), later);
        assert_eq!(clock.instant_of(Time::from_secs(3)), clock.origin);
    }
}
