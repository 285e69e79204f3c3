//! What happens in a node, for subscribers (logs, sandboxes, tests, the admin RPC).
//!
//! Events go through a bounded broadcast ring: a subscriber that falls behind loses the
//! oldest events and is told how many ([`EventError::Lagged`]); it never blocks the node.
//! Every event is emitted by the owner task, so all subscribers see one order.
//!
//! The ring holds an event only until every subscriber has read it (none without
//! subscribers), and its storage grows and shrinks with what it holds: a large
//! `event_capacity` costs memory only while a subscriber lags (tokio's `broadcast`, used
//! before, allocated every slot at start: 14 MiB at 100 000).

use crate::connection::CloseReason;
use crate::error::ConnectError;
use crate::persist::StoreError;
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{ConnectionId, ControlKind, PolicyEvent, Refusal};
use peerpool_proto::pool::P2pEvent;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;
use tokio::sync::Notify;

/// An event of a node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection is established.
    ConnectionEstablished {
        /// The connection.
        id: ConnectionId,
        /// The peer.
        peer_id: PeerId,
        /// Its socket address.
        remote_addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The connection.
        id: ConnectionId,
        /// The peer.
        peer_id: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// A connection attempt (either direction) failed; the node goes on.
    HandshakeFailed {
        /// The remote address.
        remote_addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
        /// Why.
        error: ConnectError,
    },
    /// An incoming connection was closed before any handshake (cheap checks).
    IncomingRefused {
        /// The remote address.
        remote_addr: SocketAddr,
        /// Why.
        reason: Refusal,
    },
    /// A peer sent Bootstrap; we answered with these points (none: no Advertise sent).
    BootstrapAnswered {
        /// The peer.
        peer_id: PeerId,
        /// What we advertised.
        points: Vec<Point>,
    },
    /// A peer advertised points.
    AdvertiseReceived {
        /// The peer.
        peer_id: PeerId,
        /// The points.
        points: Vec<Point>,
    },
    /// A control message went over the peer's rate and was ignored.
    ControlThrottled {
        /// The peer.
        peer_id: PeerId,
        /// Which kind.
        kind: ControlKind,
    },
    /// The peers file was saved (`Ok`) or could not be (`Err`).
    PeersFileSaved(Result<(), StoreError>),
    /// An event of the pool (BEHAVIOUR.md §11), in the pool's order.
    Pool(P2pEvent),
    /// An event of the connection manager: connection opened or closed (go-libp2p's
    /// Notifiee), a trim or an eviction with the rule that chose it, a netgroup refused.
    ConnManager(peerpool_proto::connmgr::ConnManagerEvent),
}

impl NodeEvent {
    pub(crate) fn from_policy(event: PolicyEvent) -> Option<Self> {
        Some(match event {
            PolicyEvent::Pool(e) => NodeEvent::Pool(e),
            PolicyEvent::ConnManager(e) => NodeEvent::ConnManager(e),
            PolicyEvent::BootstrapAnswered { peer_id, points } => {
                NodeEvent::BootstrapAnswered { peer_id, points }
            }
            PolicyEvent::AdvertiseReceived { peer_id, points } => {
                NodeEvent::AdvertiseReceived { peer_id, points }
            }
            PolicyEvent::ControlThrottled { peer_id, kind } => {
                NodeEvent::ControlThrottled { peer_id, kind }
            }
            _ => return None,
        })
    }
}

/// Why the next event could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EventError {
    /// The subscriber fell behind; this many events were lost. Reading goes on.
    #[error("missed {0} events")]
    Lagged(u64),
    /// The node has stopped and every event has been read.
    #[error("the node has stopped")]
    Closed,
}

/// A subscription to a node's events.
pub struct Events {
    sub: Subscription,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("next", &self.sub.next)
            .finish_non_exhaustive()
    }
}

impl Events {
    pub(crate) fn new(sub: Subscription) -> Self {
        Events { sub }
    }

    /// The next event, waiting for one.
    ///
    /// Errors: [`EventError::Lagged`] (then go on reading), [`EventError::Closed`].
    pub async fn recv(&mut self) -> Result<NodeEvent, EventError> {
        let ring = self.sub.ring.clone();
        crate::notify::wait_until(&ring.wake, || self.try_recv()).await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Result<NodeEvent, EventError>> {
        let mut ring = self.sub.ring.lock();
        ring.take(&mut self.sub.next)
    }
}

/// The ring every subscriber of a node reads.
struct Ring {
    state: Mutex<RingState>,
    /// Wakes the subscribers waiting in [`Events::recv`]: an event, or the last sender gone.
    wake: Notify,
}

struct RingState {
    /// The events still unread by some subscriber, oldest first.
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]` (of the next event sent, when empty).
    head: u64,
    /// Most events held, ≥ 1.
    capacity: usize,
    subscribers: usize,
    senders: usize,
}

struct Slot {
    event: NodeEvent,
    /// Subscribers (of those there when it was sent) that have not read it yet.
    unread: usize,
}

/// Smallest storage the ring keeps once grown, slots.
const MIN_SLOTS: usize = 16;

impl Ring {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        // The critical sections below never panic half-way; recover the data regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RingState {
    /// Sequence number of the next event sent.
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Drops the oldest events every subscriber has read, and storage the ring no longer
    /// needs. A slot read by all its subscribers has every older one read too (each reads
    /// in order, and a later subscriber only counts in later slots).
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.unread == 0) {
            self.slots.pop_front();
            self.head += 1;
        }
        if self.slots.capacity() > MIN_SLOTS && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to((self.slots.len() * 2).max(MIN_SLOTS));
        }
    }

    /// The next event for a subscriber at `next` (advanced past it).
    fn take(&mut self, next: &mut u64) -> Option<Result<NodeEvent, EventError>> {
        if *next < self.head {
            // Overwritten before this subscriber read them.
            let missed = self.head - *next;
            *next = self.head;
            return Some(Err(EventError::Lagged(missed)));
        }
        let at = usize::try_from(*next - self.head).unwrap_or(usize::MAX);
        match self.slots.get_mut(at) {
            Some(slot) => {
                slot.unread -= 1;
                let event = slot.event.clone();
                *next += 1;
                self.trim();
                Some(Ok(event))
            }
            None if self.senders == 0 => Some(Err(EventError::Closed)),
            None => None,
        }
    }
}

/// The sending side of a node's events (the owner task, the peers-file saver). Cloneable;
/// subscribers see [`EventError::Closed`] once every clone is dropped and they have read
/// everything.
pub(crate) struct EventSender {
    ring: Arc<Ring>,
}

impl EventSender {
    /// A ring holding at most `capacity` events (at least 1) for each subscriber; it
    /// allocates as events wait, not up front.
    pub(crate) fn new(capacity: usize) -> Self {
        EventSender {
            ring: Arc::new(Ring {
                state: Mutex::new(RingState {
                    slots: VecDeque::new(),
                    head: 0,
                    capacity: capacity.max(1),
                    subscribers: 0,
                    senders: 1,
                }),
                wake: Notify::new(),
            }),
        }
    }

    /// Sends `event` to every subscriber; without subscribers it is dropped (`Err`). When
    /// the ring is full the oldest event goes: subscribers that had not read it will be
    /// told they lagged.
    pub(crate) fn send(&self, event: NodeEvent) -> Result<(), NodeEvent> {
        let mut ring = self.ring.lock();
        if ring.subscribers == 0 {
            return Err(event);
        }
        if ring.slots.len() >= ring.capacity {
            ring.slots.pop_front();
            ring.head += 1;
        }
        if ring.slots.len() == ring.slots.capacity() {
            // Grow by doubling, but never past the capacity.
            let more = ring
                .slots
                .len()
                .max(4)
                .min(ring.capacity - ring.slots.len());
            ring.slots.reserve_exact(more);
        }
        let unread = ring.subscribers;
        ring.slots.push_back(Slot { event, unread });
        drop(ring);
        self.ring.wake.notify_waiters();
        Ok(())
    }

    /// A new subscription: it sees the events sent from now on.
    pub(crate) fn subscribe(&self) -> Subscription {
        let mut ring = self.ring.lock();
        ring.subscribers += 1;
        Subscription {
            ring: self.ring.clone(),
            next: ring.tail(),
        }
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.ring.lock().senders += 1;
        EventSender {
            ring: self.ring.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let mut ring = self.ring.lock();
        ring.senders -= 1;
        let last = ring.senders == 0;
        drop(ring);
        if last {
            self.ring.wake.notify_waiters();
        }
    }
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring.lock();
        f.debug_struct("EventSender")
            .field("held", &ring.slots.len())
            .field("capacity", &ring.capacity)
            .field("subscribers", &ring.subscribers)
            .finish()
    }
}

/// One subscriber's place in the ring: the sequence number of the next event it reads.
/// Dropped, it no longer holds events unread.
pub(crate) struct Subscription {
    ring: Arc<Ring>,
    next: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut ring = self.ring.lock();
        ring.subscribers -= 1;
        let from = usize::try_from(self.next.saturating_sub(ring.head)).unwrap_or(usize::MAX);
        for slot in ring.slots.iter_mut().skip(from) {
            slot.unread -= 1;
        }
        ring.trim();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn event() -> NodeEvent {
        NodeEvent::PeersFileSaved(Ok(()))
    }

    /// Events held in the ring, and its storage, slots.
    fn held(tx: &EventSender) -> (usize, usize) {
        let ring = tx.ring.lock();
        (ring.slots.len(), ring.slots.capacity())
    }

    #[test]
    fn a_lagging_subscriber_is_told_how_many_it_missed_then_reads_the_newest() {
        let tx = EventSender::new(4);
        let mut rx = Events::new(tx.subscribe());
        for _ in 0..10 {
            tx.send(event()).unwrap();
        }
        assert_eq!(held(&tx).0, 4);
        assert_eq!(rx.try_recv().unwrap().unwrap_err(), EventError::Lagged(6));
        for _ in 0..4 {
            assert!(rx.try_recv().unwrap().is_ok());
        }
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn events_are_held_only_until_every_subscriber_has_read_them() {
        let tx = EventSender::new(100_000);
        assert_eq!(held(&tx), (0, 0), "nothing allocated up front");
        assert!(tx.send(event()).is_err(), "no subscriber: dropped");
        let mut a = Events::new(tx.subscribe());
        let mut b = Events::new(tx.subscribe());
        for _ in 0..1000 {
            tx.send(event()).unwrap();
        }
        assert_eq!(held(&tx).0, 1000);
        while a.try_recv().is_some() {}
        assert_eq!(held(&tx).0, 1000, "b has not read them");
        for _ in 0..500 {
            b.try_recv().unwrap().unwrap();
        }
        assert_eq!(held(&tx).0, 500);
        // A subscriber that goes away no longer holds what it did not read.
        drop(b);
        assert_eq!(held(&tx).0, 0);
        assert!(held(&tx).1 <= MIN_SLOTS, "storage given back");
        // A new subscriber sees only what is sent after it subscribed.
        tx.send(event()).unwrap();
        let mut c = Events::new(tx.subscribe());
        assert!(c.try_recv().is_none());
        assert!(a.try_recv().unwrap().is_ok());
    }

    #[tokio::test]
    async fn subscribers_are_woken_by_events_and_closed_once_every_sender_is_gone() {
        let tx = EventSender::new(8);
        let second = tx.clone();
        let mut rx = Events::new(tx.subscribe());
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        second.send(event()).unwrap();
        let (first, mut rx) = waiting.await.unwrap();
        assert!(first.is_ok());
        second.send(event()).unwrap();
        drop(tx);
        drop(second);
        // What was sent is still read, then the end.
        assert!(rx.recv().await.is_ok());
        assert_eq!(rx.recv().await.unwrap_err(), EventError::Closed);
    }
}
