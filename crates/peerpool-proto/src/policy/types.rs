//! The values that cross the policy's boundary: ids, inputs the runtime reports, decisions
//! it gets back, and the actions it must carry out.

use crate::connection_message::{ConnectionMetadata, NackMotive, NetworkVersion};
use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{P2pEvent, PeerRecord, PoolError};
use std::fmt;
use std::net::SocketAddr;

/// One connection attempt, and the connection it becomes when it succeeds (the id is kept).
/// Unique for the life of a [`ConnectionPolicy`](super::ConnectionPolicy), never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A control message (WIRE.md §7, tags 0x02–0x05), as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Asks for known points.
    Bootstrap,
    /// Known points (at most 100 on the wire).
    Advertise(Vec<Point>),
    /// A swap proposal: connect to this point / peer.
    SwapRequest(Point, PeerId),
    /// A swap acceptance, proposing this point / peer.
    SwapAck(Point, PeerId),
}

impl ControlMessage {
    /// The kind, for logs and counters.
    pub fn kind(&self) -> ControlKind {
        match self {
            ControlMessage::Bootstrap => ControlKind::Bootstrap,
            ControlMessage::Advertise(_) => ControlKind::Advertise,
            ControlMessage::SwapRequest(..) => ControlKind::SwapRequest,
            ControlMessage::SwapAck(..) => ControlKind::SwapAck,
        }
    }
}

/// The kind of a [`ControlMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlKind {
    /// Bootstrap.
    Bootstrap,
    /// Advertise.
    Advertise,
    /// Swap_request.
    SwapRequest,
    /// Swap_ack.
    SwapAck,
}

/// Who asked for a connection to close, and why: the reasons of octez's
/// `P2p_disconnection_reason` that are ours to give (BEHAVIOUR.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application or an operator asked (`Explicit_RPC`, `P2p.disconnect`).
    Requested,
    /// Every connection is being closed (`tear_down_connections`).
    TearDown,
    /// The node is shutting down (`Pool_destroyed`).
    Shutdown,
    /// The peer id was banned (`Peer_id_manually_banned`).
    PeerBanned,
    /// The peer's address was banned (`IP_manually_banned`).
    AddrBanned,
    /// The peer was greylisted (application misbehaviour report).
    Greylisted,
    /// The point now expects another peer id (`Unexpected_peer_id`).
    UnexpectedPeerId,
    /// A second connection with a peer already connected (simultaneous dials).
    Duplicate,
    /// Too many connections: chosen by the victim policy (`Maintenance_too_many`).
    TooManyConnections,
    /// Evicted to admit a better connection (admission hook).
    Evicted,
    /// Dropped after a swap replaced it (`Peer_swapped`, BEHAVIOUR.md §7.4).
    Swapped,
    /// A large message arrived so slowly that it held its share of the node's receive
    /// budget past its deadline while other large messages waited for it (not in octez).
    SlowMessage,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisconnectReason::Requested => "disconnection requested",
            DisconnectReason::TearDown => "tear down",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::PeerBanned => "peer banned",
            DisconnectReason::AddrBanned => "address banned",
            DisconnectReason::Greylisted => "peer greylisted",
            DisconnectReason::UnexpectedPeerId => "unexpected peer id",
            DisconnectReason::Duplicate => "duplicate connection",
            DisconnectReason::TooManyConnections => "too many connections",
            DisconnectReason::Evicted => "evicted",
            DisconnectReason::Swapped => "swapped",
            DisconnectReason::SlowMessage => "message too slow",
        })
    }
}

/// Why the policy refuses to start an attempt (a dial, or an incoming handshake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The pool refuses the point or the peer: ours, banned, private mode, unexpected
    /// peer id, already connected or pending.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Every connection slot is taken (`max_connections`, BEHAVIOUR.md §1.3).
    #[error("too many connections")]
    TooManyConnections,
    /// Too many incoming handshakes in flight (`max_incoming_connections`, §1.2).
    #[error("too many incoming handshakes in flight")]
    TooManyIncomingHandshakes,
    /// Too many incoming handshakes in flight from this address.
    #[error("too many incoming handshakes in flight from this address")]
    TooManyHandshakesFromAddr,
    /// Too many incoming handshakes in flight from this netgroup.
    #[error("too many incoming handshakes in flight from netgroup {0}")]
    TooManyHandshakesFromNetgroup(crate::netgroup::Netgroup),
    /// The node is not active yet (`activate` not called) or is shutting down.
    #[error("the node is not active")]
    NotActive,
}

/// What a peer said about itself during the handshake, up to the decision step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedPeer {
    /// Its peer id (hash of its public key).
    pub peer_id: PeerId,
    /// The listening port it announced (`None` for 0).
    pub announced_port: Option<u16>,
    /// The version it announced.
    pub announced_version: NetworkVersion,
    /// Its connection metadata.
    pub metadata: ConnectionMetadata,
}

/// The decision on an authenticated peer (BEHAVIOUR.md §1.2 "Acceptability").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Send Ack with this negotiated version.
    Accept(NetworkVersion),
    /// Send a Nack with this motive and these referral points (the form, `Nack` or
    /// `Nack_v_0`, is the handshake's choice), then close.
    Nack(NackMotive, Vec<Point>),
    /// Close without a word: bans, private mode, unexpected peer id.
    Close(PoolError),
}

/// How an attempt failed, classified for the policy (BEHAVIOUR.md §1.2, §5). The runtime
/// keeps the detailed error for its caller; the policy needs only this.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// TCP connect failed (refused, unreachable, …).
    Connect,
    /// The attempt ran past its timeout (`connection_timeout` / `authentication_timeout`).
    Timeout,
    /// The handshake showed garbage or malice: bad proof of work, bad MAC, bad sizes,
    /// undecodable messages. Greylists the address.
    Garbage,
    /// The peer is ourselves (`Myself`): the point is one of ours.
    Myself,
    /// The peer answered our Ack with a Nack, with its referral points.
    Nacked {
        /// The motive.
        motive: NackMotive,
        /// Points to register (unless peer discovery is disabled).
        points: Vec<Point>,
    },
    /// The peer closed the connection or an I/O error occurred during the handshake.
    Closed,
    /// We refused the peer (the decision was [`Admission::Nack`] or [`Admission::Close`]).
    RefusedByUs,
    /// We refused the peer because it speaks another chain or no common version: its point
    /// is forgotten (not advertised), and not greylisted.
    NoCommonProtocol,
    /// The runtime gave up for a reason of its own (shutting down, scheduler closed).
    Aborted,
}

/// How an established connection ended, classified for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosedBy {
    /// We closed it (any [`DisconnectReason`], or the application).
    Us,
    /// The peer sent Disconnect or closed the TCP stream, or the network failed.
    Peer,
    /// The peer sent bytes that are not valid chunks or messages: greylist it (§5).
    PeerFault,
}

/// A connection as the policy and its plug-ins (victim policy, admission hook) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    /// Its id.
    pub id: ConnectionId,
    /// The peer.
    pub peer_id: PeerId,
    /// The remote socket address.
    pub remote_addr: SocketAddr,
    /// The peer's listening point (outgoing: the point dialled; incoming: announced).
    pub point: Option<Point>,
    /// Who dialled.
    pub direction: Direction,
    /// The remote said it is a private node.
    pub private: bool,
    /// The point or the peer is trusted.
    pub trusted: bool,
    /// When it was established (pool time).
    pub since: crate::pool::Time,
}

/// Something that happened in the policy, for subscribers (in the order it happened).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyEvent {
    /// An event of the pool (`/network/log`, BEHAVIOUR.md §11).
    Pool(P2pEvent),
    /// An event of the connection manager: a connection opened or closed, a trim or an
    /// eviction with its rule, a netgroup refused.
    ConnManager(crate::connmgr::ConnManagerEvent),
    /// A peer sent Bootstrap; these points were sent back in an Advertise (empty: none).
    BootstrapAnswered {
        /// The peer.
        peer_id: PeerId,
        /// What was advertised.
        points: Vec<Point>,
    },
    /// A peer advertised these points.
    AdvertiseReceived {
        /// The peer.
        peer_id: PeerId,
        /// The points, as received.
        points: Vec<Point>,
    },
    /// A control message went over its per-peer rate and was ignored.
    ControlThrottled {
        /// The peer.
        peer_id: PeerId,
        /// Which kind.
        kind: ControlKind,
    },
}

/// What the runtime must do, drained with
/// [`ConnectionPolicy::poll_action`](super::ConnectionPolicy::poll_action) until `None`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action<M> {
    /// Dial `point` (from our listening address when we have one), handshake under
    /// `connection_timeout`, and report with `handle_authenticated`, then
    /// `handle_established` or `handle_attempt_failed`.
    Dial {
        /// The attempt.
        id: ConnectionId,
        /// Where.
        point: Point,
    },
    /// Close an established connection (a Disconnect is sent), then report with
    /// `handle_closed`.
    Close {
        /// Which.
        id: ConnectionId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Queue a control message on a connection, without waiting (dropped if its control
    /// queue is full, as octez's `write_now`).
    Send {
        /// Which connection.
        id: ConnectionId,
        /// What.
        message: ControlMessage,
    },
    /// Give a connection this I/O scheduler weight (from the peer's score).
    SetWeight {
        /// Which connection.
        id: ConnectionId,
        /// The weight, 1..=1000.
        weight: u32,
    },
    /// Save these peers-file records (in the background: saving never blocks the owner).
    SavePeers(Vec<PeerRecord<M>>),
    /// Ask local discovery to announce us now (the maintenance is short of peers).
    WakeDiscovery,
    /// A maintenance cycle has run: answer whoever waits in `maintain`.
    Maintained,
    /// Tell subscribers.
    Event(PolicyEvent),
}
