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
//! nothing, so readers waiting for the budget can never deadlock one another.

use std::fmt;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest budget, bytes (the semaphore counts reservations in `u32` units).
pub const MAX_BUDGET: usize = u32::MAX as usize;

/// A cloneable, shared budget of buffered bytes. Clones share the same budget.
#[derive(Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget")
            .field("total", &self.total)
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// Bytes taken from a [`ByteBudget`]; they go back when this is dropped, or piece by piece
/// with [`Reservation::release`].
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of `bytes` (clamped to [`MAX_BUDGET`]).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.min(MAX_BUDGET);
        ByteBudget {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget's size, bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.total - self.semaphore.available_permits().min(self.total)
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// The part of a request that can ever be granted: at most the whole budget, so a
    /// single reservation larger than the budget waits until everything else is returned
    /// instead of forever.
    fn grantable(&self, bytes: usize) -> u32 {
        // invariant: total <= MAX_BUDGET == u32::MAX.
        u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX)
    }

    /// Takes `bytes`, waiting while the budget is spent. A request larger than the whole
    /// budget takes the whole budget. Waiters are served in order (the semaphore is fair).
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = self.grantable(bytes);
        if n == 0 {
            return Reservation::empty();
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = self.semaphore.clone().acquire_many_owned(n).await.ok();
        Reservation { permit }
    }

    /// Takes `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let n = self.grantable(bytes);
        if n == 0 {
            return Some(Reservation::empty());
        }
        let permit = self.semaphore.clone().try_acquire_many_owned(n).ok()?;
        Some(Reservation {
            permit: Some(permit),
        })
    }
}

impl Reservation {
    /// A reservation of nothing.
    pub fn empty() -> Self {
        Reservation { permit: None }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives `bytes` back to the budget now (all that is held, if less).
    pub fn release(&mut self, bytes: usize) {
        let Some(permit) = self.permit.as_mut() else {
            return;
        };
        if bytes >= permit.num_permits() {
            self.permit = None;
        } else {
            drop(permit.split(bytes));
        }
    }

    /// Adds `other`'s bytes to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        match (self.permit.as_mut(), other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.permit = theirs,
            (Some(_), None) => {}
        }
    }

    /// Splits `bytes` off into a new reservation (all that is held, if less).
    pub fn split(&mut self, bytes: usize) -> Reservation {
        let Some(permit) = self.permit.as_mut() else {
            return Reservation::empty();
        };
        if bytes >= permit.num_permits() {
            return Reservation {
                permit: self.permit.take(),
            };
        }
        Reservation {
            permit: permit.split(bytes),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

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
}
