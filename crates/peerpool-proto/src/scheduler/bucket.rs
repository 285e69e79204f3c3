//! [`TokenBucket`]: exact integer token-bucket arithmetic, and the sizing of buckets from a
//! rate and a burst window.

use std::time::Duration;

/// Nanoseconds per second, as the unit of token and rate arithmetic.
pub(super) const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A token bucket with exact integer arithmetic.
///
/// Tokens are kept in byte-nanoseconds so refills (`rate` bytes per second × elapsed
/// nanoseconds) never round. The bucket may go negative: [`TokenBucket::can_take`] admits a
/// take of `n` bytes once the bucket holds `min(n, capacity)` tokens, so a take larger than
/// the capacity is still possible when the bucket is full, and leaves a debt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: i128,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` bytes per second, holding at most `capacity` bytes.
    pub fn new(rate: u64, capacity: u64, now: Duration) -> Self {
        TokenBucket {
            rate,
            capacity,
            tokens: i128::from(capacity) * NANOS_PER_SEC,
            last: now,
        }
    }

    /// Refill rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Capacity (largest burst), bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Adds `rate × (now − last)` tokens, up to the capacity.
    pub fn refill(&mut self, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last) else {
            return;
        };
        self.last = now;
        // Saturating: a huge rate times a long absence fills the bucket, nothing more.
        let elapsed = i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX);
        let add = i128::from(self.rate).saturating_mul(elapsed);
        let cap = i128::from(self.capacity) * NANOS_PER_SEC;
        self.tokens = self.tokens.saturating_add(add).min(cap);
    }

    /// Whole tokens currently held, bytes (negative when in debt). Call
    /// [`TokenBucket::refill`] first.
    pub fn tokens(&self) -> i64 {
        let t = self.tokens.div_euclid(NANOS_PER_SEC);
        t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    fn needed(&self, n: u64) -> i128 {
        i128::from(n.min(self.capacity)) * NANOS_PER_SEC
    }

    /// Whether a take of `n` bytes is admitted now (holds `min(n, capacity)` tokens).
    pub fn can_take(&self, n: u64) -> bool {
        self.tokens >= self.needed(n)
    }

    /// Removes `n` bytes of tokens (may leave a debt).
    pub fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(i128::from(n) * NANOS_PER_SEC);
    }

    /// The earliest `now` at which [`TokenBucket::can_take`]`(n)` holds (after a refill).
    pub fn ready_at(&self, n: u64) -> Duration {
        let missing = self.needed(n).saturating_sub(self.tokens);
        if missing <= 0 {
            return self.last;
        }
        if self.rate == 0 {
            return Duration::MAX;
        }
        // missing is in byte-nanoseconds; / rate gives nanoseconds; round up.
        let rate = i128::from(self.rate);
        let nanos = missing.saturating_add(rate - 1) / rate;
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.last.saturating_add(Duration::from_nanos(nanos))
    }
}

/// The capacity of a bucket refilled at `rate` bytes per second with a burst window of
/// `burst`: `rate × burst` bytes, and at least `floor` bytes.
pub(super) fn bucket_capacity(rate: u64, burst: Duration, floor: u64) -> u64 {
    let b = u128::from(rate).saturating_mul(burst.as_nanos()) / NANOS_PER_SEC as u128;
    u64::try_from(b).unwrap_or(u64::MAX).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_exact_and_reports_when_ready() {
        let mut b = TokenBucket::new(1000, 100, Duration::ZERO);
        assert!(b.can_take(100));
        b.take(100);
        assert!(!b.can_take(1));
        assert_eq!(b.ready_at(50), Duration::from_millis(50));
        b.refill(Duration::from_millis(50));
        assert_eq!(b.tokens(), 50);
        b.refill(Duration::from_secs(10));
        assert_eq!(b.tokens(), 100, "capped at capacity");
        assert!(
            b.can_take(1000),
            "a take above capacity is admitted when full"
        );
        b.take(1000);
        assert_eq!(b.tokens(), -900);
    }
}
