//! [`ByteBudget`]: one node-wide cap on the bytes buffered for all connections
//! (received bytes waiting in read queues, partly decoded messages, application queues).
//!
//! Whoever buffers bytes first takes a [`Reservation`] for them and keeps it until the bytes
//! are gone (handed to the application and dropped). When the budget is spent, a reader
//! waits in [`ByteBudget::reserve`] instead of reading its socket, so TCP flow control pushes
//! back on the remote: memory stays bounded and nothing is dropped.
//!
//! A reader reserves a whole message at its 4-byte length prefix, before buffering any of
//! its body: a connection either holds all it needs to finish the message or holds
//! nothing, so readers waiting for the budget can never deadlock one another. Small
//! requests have a lane of their own (see [`ByteBudget`]), so slow large messages cannot
//! hold up everyone else's small ones.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest budget, bytes (the semaphore counts reservations in `u32` units).
pub const MAX_BUDGET: usize = u32::MAX as usize;

/// The largest request the small-message lane serves, bytes (or a sixteenth of the lane,
/// when that is less).
pub const SMALL_REQUEST: usize = 64 * 1024;

/// A cloneable, shared budget of buffered bytes. Clones share the same budget.
///
/// An eighth of it is a lane that only small requests (at most [`SMALL_REQUEST`] bytes) may
/// use: large messages reserved whole at their prefix and sent slowly can take the rest,
/// but never the lane, so the small messages of every other peer keep flowing (issue 11:
/// a hundred connections each sending a maximal message very slowly froze every peer's
/// reception, waiting in line behind them). A small request takes from whichever part
/// grants it first. Budgets under 128 KiB have no lane.
#[derive(Clone)]
pub struct ByteBudget {
    shared: Arc<Semaphore>,
    shared_total: usize,
    lane: Option<Arc<Semaphore>>,
    lane_total: usize,
    lane_request: usize,
    total: usize,
    /// Requests too large for the lane waiting for the rest now.
    large_waiting: Arc<AtomicUsize>,
}

/// Counts a waiting request while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget")
            .field("total", &self.total)
            .field("small_lane", &self.lane_total)
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// Bytes taken from a [`ByteBudget`]; they go back when this is dropped, or piece by piece
/// with [`Reservation::release`].
#[derive(Debug)]
pub struct Reservation {
    shared: Option<OwnedSemaphorePermit>,
    lane: Option<OwnedSemaphorePermit>,
}

fn permits(n: usize) -> u32 {
    // invariant: every count is at most total <= MAX_BUDGET == u32::MAX.
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl ByteBudget {
    /// A budget of `bytes` (clamped to [`MAX_BUDGET`]).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.min(MAX_BUDGET);
        let lane_total = total / 8;
        let lane_request = SMALL_REQUEST.min(lane_total / 16);
        let (lane, lane_total, lane_request) = if lane_request >= 1024 {
            (
                Some(Arc::new(Semaphore::new(lane_total))),
                lane_total,
                lane_request,
            )
        } else {
            (None, 0, 0)
        };
        ByteBudget {
            shared: Arc::new(Semaphore::new(total - lane_total)),
            shared_total: total - lane_total,
            lane,
            lane_total,
            lane_request,
            total,
            large_waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The largest request the small-message lane serves, bytes (0: no lane).
    pub fn small_request(&self) -> usize {
        self.lane_request
    }

    /// Whether a request too large for the lane is waiting for the budget now.
    pub fn large_waiting(&self) -> bool {
        self.large_waiting.load(Ordering::Relaxed) > 0
    }

    /// The budget's size, bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The part kept for small requests, bytes (0: no lane).
    pub fn small_lane(&self) -> usize {
        self.lane_total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.available().min(self.total)
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.shared.available_permits() + self.lane.as_ref().map_or(0, |l| l.available_permits())
    }

    /// The lane, when `n` bytes may use it.
    fn lane_for(&self, n: usize) -> Option<&Arc<Semaphore>> {
        self.lane.as_ref().filter(|_| n <= self.lane_request)
    }

    /// Takes `bytes`, waiting while the budget is spent. A request larger than all it may
    /// use (the whole budget, less the small lane) takes all of that instead of waiting
    /// forever. Waiters are served in order (the semaphores are fair); a small request
    /// waits on the lane and on the rest at once and takes the first to grant it.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        if bytes == 0 {
            return Reservation::empty();
        }
        if let Some(lane) = self.lane_for(bytes) {
            let n = permits(bytes);
            // Dropping the acquisition that lost gives back what it had gathered.
            return tokio::select! {
                biased;
                p = self.shared.clone().acquire_many_owned(n) => Reservation {
                    shared: p.ok(),
                    lane: None,
                },
                p = lane.clone().acquire_many_owned(n) => Reservation {
                    shared: None,
                    lane: p.ok(),
                },
            };
        }
        let n = permits(bytes.min(self.shared_total));
        if n == 0 {
            return Reservation::empty();
        }
        if let Ok(p) = self.shared.clone().try_acquire_many_owned(n) {
            return Reservation {
                shared: Some(p),
                lane: None,
            };
        }
        let _waiting = Waiting::new(&self.large_waiting);
        // The semaphore is never closed, so acquiring only fails if it were.
        Reservation {
            shared: self.shared.clone().acquire_many_owned(n).await.ok(),
            lane: None,
        }
    }

    /// Takes `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        if bytes == 0 {
            return Some(Reservation::empty());
        }
        if let Some(lane) = self.lane_for(bytes) {
            let n = permits(bytes);
            if let Ok(p) = self.shared.clone().try_acquire_many_owned(n) {
                return Some(Reservation {
                    shared: Some(p),
                    lane: None,
                });
            }
            let p = lane.clone().try_acquire_many_owned(n).ok()?;
            return Some(Reservation {
                shared: None,
                lane: Some(p),
            });
        }
        let n = permits(bytes.min(self.shared_total));
        if n == 0 {
            return Some(Reservation::empty());
        }
        let p = self.shared.clone().try_acquire_many_owned(n).ok()?;
        Some(Reservation {
            shared: Some(p),
            lane: None,
        })
    }
}

/// Splits up to `bytes` off `permit` (all of it if it holds no more).
fn take(permit: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> Option<OwnedSemaphorePermit> {
    let held = permit.as_ref().map_or(0, |p| p.num_permits());
    if bytes == 0 || held == 0 {
        None
    } else if bytes >= held {
        permit.take()
    } else {
        permit.as_mut().and_then(|p| p.split(bytes))
    }
}

fn merge_into(mine: &mut Option<OwnedSemaphorePermit>, theirs: Option<OwnedSemaphorePermit>) {
    match (mine.as_mut(), theirs) {
        (Some(m), Some(t)) => m.merge(t),
        (None, t) => *mine = t,
        (Some(_), None) => {}
    }
}

impl Reservation {
    /// A reservation of nothing.
    pub fn empty() -> Self {
        Reservation {
            shared: None,
            lane: None,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.shared.as_ref().map_or(0, |p| p.num_permits())
            + self.lane.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives `bytes` back to the budget now (all that is held, if less); the small lane's
    /// bytes first.
    pub fn release(&mut self, bytes: usize) {
        let from_lane = take(&mut self.lane, bytes);
        let rest = bytes - from_lane.as_ref().map_or(0, |p| p.num_permits());
        drop(from_lane);
        drop(take(&mut self.shared, rest));
    }

    /// Adds `other`'s bytes to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        merge_into(&mut self.shared, other.shared);
        merge_into(&mut self.lane, other.lane);
    }

    /// Splits `bytes` off into a new reservation (all that is held, if less); the small
    /// lane's bytes first.
    pub fn split(&mut self, bytes: usize) -> Reservation {
        let lane = take(&mut self.lane, bytes);
        let rest = bytes - lane.as_ref().map_or(0, |p| p.num_permits());
        Reservation {
            shared: take(&mut self.shared, rest),
            lane,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_request_is_counted_while_it_waits_and_no_longer() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        // 1 MiB: a lane of 128 KiB for requests of at most 8 KiB.
        let budget = ByteBudget::new(1 << 20);
        assert_eq!(budget.small_request(), 8 << 10);
        let held = budget.reserve(900 << 10).await;
        assert!(!budget.large_waiting(), "served at once: never counted");
        let mut cx = Context::from_waker(Waker::noop());
        // A small request waits on the lane too: not counted.
        let small = budget.reserve(4 << 10).await;
        let mut large = Box::pin(budget.reserve(100 << 10));
        assert!(large.as_mut().poll(&mut cx).is_pending());
        assert!(budget.large_waiting());
        drop(large);
        assert!(!budget.large_waiting(), "a dropped wait is not counted");
        let mut large = Box::pin(budget.reserve(100 << 10));
        assert!(large.as_mut().poll(&mut cx).is_pending());
        drop(held);
        assert!(matches!(large.as_mut().poll(&mut cx), Poll::Ready(r) if r.bytes() == 100 << 10));
        assert!(!budget.large_waiting());
        drop(small);
    }

    #[tokio::test]
    async fn reservations_come_back_when_dropped_or_released() {
        let budget = ByteBudget::new(100);
        let mut a = budget.reserve(60).await;
        assert_eq!((budget.in_use(), budget.available()), (60, 40));
        assert!(budget.try_reserve(41).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.available(), 0);
        a.release(10);
        assert_eq!((a.bytes(), budget.available()), (50, 10));
        let c = a.split(20);
        assert_eq!((a.bytes(), c.bytes()), (30, 20));
        a.merge(c);
        assert_eq!(a.bytes(), 50);
        drop(b);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_resumes_when_bytes_are_returned() {
        let budget = ByteBudget::new(10);
        let held = budget.reserve(8).await;
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(5).await.bytes() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(10);
        let r = budget.reserve(1_000).await;
        assert_eq!((r.bytes(), budget.available()), (10, 0));
        assert_eq!(budget.try_reserve(0).unwrap().bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn small_requests_pass_large_ones_held_and_waiting() {
        let budget = ByteBudget::new(1 << 20);
        assert_eq!(budget.small_lane(), 128 * 1024);
        // Slow large messages hold everything but the lane, and one more waits in line.
        let held = budget.reserve(900 * 1024).await;
        assert_eq!(
            held.bytes(),
            896 * 1024,
            "a large request takes at most the shared part"
        );
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(500 * 1024).await.bytes() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Small messages still get through, from the lane, waiting or not.
        let mut small: Vec<Reservation> = Vec::new();
        for _ in 0..100 {
            small.push(budget.try_reserve(1024).unwrap());
        }
        let one_more =
            tokio::time::timeout(std::time::Duration::from_secs(1), budget.reserve(1024))
                .await
                .unwrap();
        assert_eq!(one_more.bytes(), 1024);
        // Nothing over the budget: the lane is spent now.
        assert!(budget.try_reserve(28 * 1024).is_none());
        assert_eq!(budget.in_use(), (896 + 101) * 1024);
        drop(held);
        assert_eq!(waiting.await.unwrap(), 500 * 1024);
    }

    #[tokio::test]
    async fn reservations_from_both_parts_merge_split_and_come_back() {
        let budget = ByteBudget::new(1 << 20);
        let big = budget.reserve(896 * 1024).await;
        let mut a = budget.try_reserve(4096).unwrap(); // from the lane
        a.merge(big);
        assert_eq!(a.bytes(), 900 * 1024);
        let b = a.split(5000); // the lane's 4096 first, then 904 shared
        assert_eq!((a.bytes(), b.bytes()), (900 * 1024 - 5000, 5000));
        a.release(1 << 30);
        assert_eq!(a.bytes(), 0);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[test]
    fn a_small_budget_has_no_lane() {
        let budget = ByteBudget::new(100 * 1024);
        assert_eq!(budget.small_lane(), 0);
        assert_eq!(budget.try_reserve(100 * 1024).unwrap().bytes(), 100 * 1024);
    }
}
