//! What happens in a node, for subscribers (logs, sandboxes, tests, the admin RPC).
//!
//! Events go through a bounded broadcast channel: a subscriber that falls behind loses the
//! oldest events and is told how many ([`EventError::Lagged`]); it never blocks the node.
//! Every event is emitted by the owner task, so all subscribers see one order.

use crate::connection::CloseReason;
use crate::error::ConnectError;
use crate::persist::StoreError;
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{ConnectionId, ControlKind, PolicyEvent, Refusal};
use peerpool_proto::pool::P2pEvent;
use std::net::SocketAddr;
use thiserror::Error;
use tokio::sync::broadcast;

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
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<NodeEvent>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<NodeEvent>) -> Self {
        Events { rx }
    }

    /// The next event.
    ///
    /// Errors: [`EventError::Lagged`] (then go on reading), [`EventError::Closed`].
    pub async fn recv(&mut self) -> Result<NodeEvent, EventError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventError::Lagged(n),
            broadcast::error::RecvError::Closed => EventError::Closed,
        })
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Result<NodeEvent, EventError>> {
        match self.rx.try_recv() {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(EventError::Lagged(n))),
            Err(broadcast::error::TryRecvError::Closed) => Some(Err(EventError::Closed)),
        }
    }
}
