//! Outgoing bytes in flight, and the node-wide cap on them.
//!
//! A message is *in flight* from the moment it is queued until its sealed bytes have been
//! written to the socket (the outbox, the writer's batch, the I/O scheduler's write
//! queue). Each connection may have [`QueueConfig::outgoing_guaranteed_bytes`] in flight
//! on its own; what it has beyond that comes out of one node-wide budget
//! ([`NodeConfig::outgoing_budget_bytes`]). A peer that stops reading fills its
//! guarantee and then at most what the node-wide budget has left, so the node's outgoing
//! memory is bounded by `connections × guarantee + budget` instead of by
//! `connections × (outgoing_app_bytes + write_queue_size)`, and peers that keep reading
//! never depend on the shared part while they stay within their guarantee (issue 11:
//! a peer that stops reading while others keep flowing).
//!
//! [`QueueConfig::outgoing_guaranteed_bytes`]: super::QueueConfig::outgoing_guaranteed_bytes
//! [`NodeConfig::outgoing_budget_bytes`]: crate::NodeConfig::outgoing_budget_bytes

use crate::budget::{ByteBudget, Reservation};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One connection's view of the outgoing budget.
pub(super) struct Outgoing {
    /// Bytes in flight on this connection.
    in_flight: Arc<AtomicUsize>,
    guaranteed: usize,
    node: ByteBudget,
}

/// Bytes in flight that a message (or a batch of them) accounts for: given back to the
/// connection's count, and to the node-wide budget, when dropped.
#[derive(Debug)]
pub(super) struct Charge {
    in_flight: Arc<AtomicUsize>,
    bytes: usize,
    node: Reservation,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Charge {
    /// Adds `other`, if any, to this charge.
    pub(super) fn absorb_opt(&mut self, other: Option<Charge>) {
        if let Some(other) = other {
            self.absorb(other);
        }
    }

    /// Adds `other` to this charge (one charge per written batch).
    pub(super) fn absorb(&mut self, mut other: Charge) {
        self.bytes += std::mem::take(&mut other.bytes);
        self.node
            .merge(std::mem::replace(&mut other.node, Reservation::empty()));
    }
}

impl Outgoing {
    pub(super) fn new(guaranteed: usize, node: ByteBudget) -> Self {
        Outgoing {
            in_flight: Arc::new(AtomicUsize::new(0)),
            guaranteed,
            node,
        }
    }

    /// Bytes in flight on this connection now.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// An empty charge, for a batch to gather its messages' charges into.
    pub(super) fn empty(&self) -> Charge {
        Charge {
            in_flight: self.in_flight.clone(),
            bytes: 0,
            node: Reservation::empty(),
        }
    }

    /// Counts `bytes` in flight and the part beyond the guarantee it needs from the
    /// node-wide budget: `(charge, bytes still to take from the node)`.
    fn count(&self, bytes: usize) -> (Charge, usize) {
        let before = self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        let over = (before + bytes).saturating_sub(self.guaranteed).min(bytes);
        let charge = Charge {
            in_flight: self.in_flight.clone(),
            bytes,
            node: Reservation::empty(),
        };
        (charge, over)
    }

    /// Charges `bytes`, waiting while the node-wide budget lacks the part beyond the
    /// guarantee. Cancel-safe: dropped while waiting, nothing stays counted.
    pub(super) async fn charge(&self, bytes: usize) -> Charge {
        let (mut charge, over) = self.count(bytes);
        if over > 0 {
            charge.node = self.node.reserve(over).await;
        }
        charge
    }

    /// Charges `bytes` if the node-wide budget has the part beyond the guarantee now.
    pub(super) fn try_charge(&self, bytes: usize) -> Option<Charge> {
        let (mut charge, over) = self.count(bytes);
        if over > 0 {
            // On `None` the charge is dropped, and uncounted, here.
            charge.node = self.node.try_reserve(over)?;
        }
        Some(charge)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn only_bytes_beyond_the_guarantee_come_from_the_node() {
        let node = ByteBudget::new(1000);
        let a = Outgoing::new(300, node.clone());
        let b = Outgoing::new(300, node.clone());
        let a1 = a.try_charge(200).unwrap();
        assert_eq!((a.in_flight(), node.in_use()), (200, 0));
        // 200 + 250: 150 beyond the guarantee.
        let a2 = a.try_charge(250).unwrap();
        assert_eq!((a.in_flight(), node.in_use()), (450, 150));
        // The node has 850 left: a takes them all, then is refused.
        let a3 = a.try_charge(850).unwrap();
        assert_eq!(node.in_use(), 1000);
        assert!(a.try_charge(1).is_none());
        assert_eq!(a.in_flight(), 1300, "a refused charge is not counted");
        // b still has its guarantee, and nothing beyond.
        let b1 = b.try_charge(300).unwrap();
        assert!(b.try_charge(1).is_none());
        assert_eq!(b.in_flight(), 300);
        // Written: everything goes back.
        let mut batch = a.empty();
        batch.absorb(a1);
        batch.absorb(a2);
        batch.absorb(a3);
        assert_eq!(a.in_flight(), 1300);
        drop(batch);
        drop(b1);
        assert_eq!((a.in_flight(), b.in_flight(), node.in_use()), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_waiting_charge_is_served_when_bytes_are_written_and_uncounted_if_dropped() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let node = ByteBudget::new(100);
        let a = Outgoing::new(0, node.clone());
        let held = a.try_charge(100).unwrap();
        let mut waiting = Box::pin(a.charge(60));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert_eq!(a.in_flight(), 160);
        drop(waiting);
        assert_eq!(a.in_flight(), 100, "a dropped wait is uncounted");
        let mut waiting = Box::pin(a.charge(60));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(held);
        let Poll::Ready(c) = waiting.as_mut().poll(&mut cx) else {
            panic!("not served once the bytes were written");
        };
        assert_eq!((a.in_flight(), node.in_use()), (60, 60));
        drop(c);
        assert_eq!((a.in_flight(), node.in_use()), (0, 0));
    }
}
