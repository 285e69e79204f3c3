//! The node's errors, typed end to end and cheap to clone (shared sources are `Arc`ed), so
//! one failure can go both to the caller and to event subscribers.

use crate::io_scheduler::IoSchedulerError;
use crate::socket::SocketError;
use peerpool_proto::connection_message::NackMotive;
use peerpool_proto::handshake::HandshakeError;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{AttemptFailure, Refusal};
use peerpool_proto::pool::PoolError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why a connection attempt failed (either direction).
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable …).
    #[error("connect failed: {0}")]
    Connect(Arc<io::Error>),
    /// The I/O scheduler refused the connection (it is shutting down).
    #[error("i/o scheduler: {0}")]
    Scheduler(Arc<IoSchedulerError>),
    /// The whole attempt took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] SocketError),
    /// The pool refused the point or the peer (ours, banned, private mode, unexpected peer
    /// id, already connected or pending).
    #[error("refused by the pool: {0}")]
    Pool(PoolError),
    /// We refused the peer with this Nack motive, or refused to dial with it (too many
    /// connections).
    #[error("we rejected the peer: {0}")]
    RejectedByUs(NackMotive),
    /// Too many incoming handshakes were in flight.
    #[error("too many incoming handshakes")]
    TooManyIncomingHandshakes,
    /// The node is shutting down.
    #[error("node stopped")]
    NodeStopped,
}

impl From<Refusal> for ConnectError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Pool(e) => ConnectError::Pool(e),
            Refusal::TooManyConnections => {
                ConnectError::RejectedByUs(NackMotive::TooManyConnections)
            }
            Refusal::TooManyIncomingHandshakes
            | Refusal::TooManyHandshakesFromAddr
            | Refusal::TooManyHandshakesFromNetgroup(_) => ConnectError::TooManyIncomingHandshakes,
            _ => ConnectError::NodeStopped,
        }
    }
}

impl ConnectError {
    /// The Nack motive and points, if the peer refused us.
    pub fn nack(&self) -> Option<(NackMotive, &[Point])> {
        match self {
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::RejectedByNack {
                motive,
                points,
            })) => Some((*motive, points)),
            _ => None,
        }
    }

    /// Whether this is an expected outcome of two nodes dialing each other at once
    /// (`Already_connected` either way), logged at debug level only.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            ConnectError::RejectedByUs(NackMotive::AlreadyConnected)
                | ConnectError::Pool(PoolError::AlreadyConnected(_))
        ) || matches!(self.nack(), Some((NackMotive::AlreadyConnected, _)))
    }

    /// A short name of the kind of failure, for summaries (`"timeout"`, `"handshake"` …).
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Connect(_) => "connect",
            ConnectError::Scheduler(_) => "scheduler",
            ConnectError::Timeout(_) => "timeout",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::Pool(_) => "refused by the pool",
            ConnectError::RejectedByUs(_) => "rejected by us",
            ConnectError::TooManyIncomingHandshakes => "too many incoming handshakes",
            ConnectError::NodeStopped => "node stopped",
        }
    }

    /// How the policy sees this failure (BEHAVIOUR.md §1.2, §5).
    pub(crate) fn classify(&self) -> AttemptFailure {
        match self {
            ConnectError::Connect(_) => AttemptFailure::Connect,
            ConnectError::Timeout(_) => AttemptFailure::Timeout,
            ConnectError::Handshake(e) if e.greylists_peer_address() => AttemptFailure::Garbage,
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::Myself)) => {
                AttemptFailure::Myself
            }
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::RejectedByNack {
                motive,
                points,
            })) => AttemptFailure::Nacked {
                motive: *motive,
                points: points.clone(),
            },
            ConnectError::Handshake(_) => AttemptFailure::Closed,
            ConnectError::RejectedByUs(
                NackMotive::UnknownChainName
                | NackMotive::DeprecatedP2pVersion
                | NackMotive::DeprecatedDistributedDbVersion,
            ) => AttemptFailure::NoCommonProtocol,
            ConnectError::Pool(_) | ConnectError::RejectedByUs(_) => AttemptFailure::RefusedByUs,
            ConnectError::Scheduler(_)
            | ConnectError::TooManyIncomingHandshakes
            | ConnectError::NodeStopped => AttemptFailure::Aborted,
        }
    }
}

/// Why [`Node::send`](crate::Node::send) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection with that peer.
    #[error("not connected")]
    NotConnected,
    /// The connection closed.
    #[error("connection closed")]
    Closed,
}

/// Why [`Node::disconnect_and_wait`](crate::Node::disconnect_and_wait) could not confirm
/// that both sides forgot the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DisconnectError {
    /// No connection with that peer.
    #[error("not connected")]
    NotConnected,
    /// This node has forgotten the connection, but the peer did not close its end within
    /// the node's `close_timeout` (the socket is closed anyway).
    #[error("the peer did not close its end in time")]
    Unacknowledged,
}

/// Why a `try_send` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// No connection with that peer.
    #[error("not connected")]
    NotConnected,
    /// The connection's queue is full (messages or bytes).
    #[error("queue full")]
    Full,
    /// The connection closed.
    #[error("connection closed")]
    Closed,
}

/// Why a node could not start.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: Arc<io::Error>,
    },
    /// The I/O scheduler could not start (no tokio runtime).
    #[error(transparent)]
    Scheduler(Arc<IoSchedulerError>),
    /// The pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why a query or command could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NodeStopped {
    /// The node has shut down.
    #[error("the node has stopped")]
    Stopped,
}
