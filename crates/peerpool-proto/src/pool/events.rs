//! Events as plain data: the `/network/log` stream ([`P2pEvent`], BEHAVIOUR.md §11) and the
//! wake-up signals the pool gives the maintenance ([`Trigger`], octez `P2p_trigger`).
//!
//! The pool pushes both into bounded outboxes that the runtime drains with
//! [`Pool::poll_event`](super::Pool::poll_event) and
//! [`Pool::poll_trigger`](super::Pool::poll_trigger) until `None`.

use super::peer_state::IdPoint;
use crate::identity::PeerId;
use crate::point::Point;
use serde::{Deserialize, Serialize};

/// An event of the `/network/log` stream (octez `P2p_connection.P2p_event`).
///
/// JSON: `{"event": "<snake_name>", …fields}`. [`P2pEvent::tag`] gives octez's binary tag;
/// `MaintenanceStarted`/`MaintenanceEnded` have none in octez (a quirk, §13.7) and take 26
/// and 27 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum P2pEvent {
    /// Fewer connections than the minimum.
    TooFewConnections,
    /// More connections than the maximum.
    TooManyConnections,
    /// A point was added to the known points.
    NewPoint {
        /// The point.
        point: Point,
    },
    /// A peer id was added to the known peers.
    NewPeer {
        /// The peer id.
        peer_id: PeerId,
    },
    /// An incoming TCP connection was accepted.
    IncomingConnection {
        /// The remote point.
        point: Point,
    },
    /// We started dialling.
    OutgoingConnection {
        /// The point dialled.
        point: Point,
    },
    /// The handshake failed.
    AuthenticationFailed {
        /// The remote point.
        point: Point,
    },
    /// The handshake succeeded and we accept the connection.
    AcceptingRequest {
        /// The remote point.
        point: Point,
        /// The address and announced port.
        id_point: IdPoint,
        /// The remote peer id.
        peer_id: PeerId,
    },
    /// We refuse the connection after the handshake.
    RejectingRequest {
        /// The remote point.
        point: Point,
        /// The address and announced port.
        id_point: IdPoint,
        /// The remote peer id.
        peer_id: PeerId,
    },
    /// The attempt failed; with the identity if the handshake got that far.
    RequestRejected {
        /// The remote point.
        point: Point,
        /// `(id_point, peer_id)` when known.
        identity: Option<(IdPoint, PeerId)>,
    },
    /// A connection is running.
    ConnectionEstablished {
        /// The address and announced port.
        id_point: IdPoint,
        /// The remote peer id.
        peer_id: PeerId,
    },
    /// We closed a connection.
    Disconnection {
        /// The remote peer id.
        peer_id: PeerId,
    },
    /// The remote or the network closed a connection.
    ExternalDisconnection {
        /// The remote peer id.
        peer_id: PeerId,
    },
    /// The known-points GC ran.
    GcPoints,
    /// The known-peers GC ran.
    GcPeerIds,
    /// A swap request arrived.
    SwapRequestReceived {
        /// Who sent it.
        source: PeerId,
    },
    /// A swap ack arrived.
    SwapAckReceived {
        /// Who sent it.
        source: PeerId,
    },
    /// We sent a swap request.
    SwapRequestSent {
        /// To whom.
        source: PeerId,
    },
    /// We sent a swap ack.
    SwapAckSent {
        /// To whom.
        source: PeerId,
    },
    /// We ignored a swap request.
    SwapRequestIgnored {
        /// Who sent it.
        source: PeerId,
    },
    /// A swap succeeded.
    SwapSuccess {
        /// With whom.
        source: PeerId,
    },
    /// A swap failed.
    SwapFailure {
        /// With whom.
        source: PeerId,
    },
    /// We sent a Bootstrap.
    BootstrapSent {
        /// To whom.
        source: PeerId,
    },
    /// A Bootstrap arrived.
    BootstrapReceived {
        /// Who sent it.
        source: PeerId,
    },
    /// We sent an Advertise.
    AdvertiseSent {
        /// To whom.
        source: PeerId,
    },
    /// An Advertise arrived.
    AdvertiseReceived {
        /// Who sent it.
        source: PeerId,
    },
    /// A maintenance step started.
    MaintenanceStarted,
    /// A maintenance step ended.
    MaintenanceEnded,
}

impl P2pEvent {
    /// The uint8 tag of octez's binary encoding (0–25), and 26/27 for the maintenance
    /// events octez cannot encode.
    pub fn tag(&self) -> u8 {
        match self {
            P2pEvent::TooFewConnections => 0,
            P2pEvent::TooManyConnections => 1,
            P2pEvent::NewPoint { .. } => 2,
            P2pEvent::NewPeer { .. } => 3,
            P2pEvent::IncomingConnection { .. } => 4,
            P2pEvent::OutgoingConnection { .. } => 5,
            P2pEvent::AuthenticationFailed { .. } => 6,
            P2pEvent::AcceptingRequest { .. } => 7,
            P2pEvent::RejectingRequest { .. } => 8,
            P2pEvent::RequestRejected { .. } => 9,
            P2pEvent::ConnectionEstablished { .. } => 10,
            P2pEvent::Disconnection { .. } => 11,
            P2pEvent::ExternalDisconnection { .. } => 12,
            P2pEvent::GcPoints => 13,
            P2pEvent::GcPeerIds => 14,
            P2pEvent::SwapRequestReceived { .. } => 15,
            P2pEvent::SwapAckReceived { .. } => 16,
            P2pEvent::SwapRequestSent { .. } => 17,
            P2pEvent::SwapAckSent { .. } => 18,
            P2pEvent::SwapRequestIgnored { .. } => 19,
            P2pEvent::SwapSuccess { .. } => 20,
            P2pEvent::SwapFailure { .. } => 21,
            P2pEvent::BootstrapSent { .. } => 22,
            P2pEvent::BootstrapReceived { .. } => 23,
            P2pEvent::AdvertiseSent { .. } => 24,
            P2pEvent::AdvertiseReceived { .. } => 25,
            P2pEvent::MaintenanceStarted => 26,
            P2pEvent::MaintenanceEnded => 27,
        }
    }
}

/// A condition the maintenance waits on (octez `P2p_trigger`). Triggers are level
/// signals: several of the same kind pending at once are delivered once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A connection ended and fewer than `min_connections` remain.
    TooFewConnections,
    /// A connection started and more than `max_connections` run.
    TooManyConnections,
    /// A peer id was added.
    NewPeer,
    /// A point was added.
    NewPoint,
    /// A connection is running.
    NewConnection,
}

impl Trigger {
    /// All triggers, in delivery order.
    pub const ALL: [Trigger; 5] = [
        Trigger::TooFewConnections,
        Trigger::TooManyConnections,
        Trigger::NewPeer,
        Trigger::NewPoint,
        Trigger::NewConnection,
    ];

    pub(crate) fn bit(self) -> u8 {
        match self {
            Trigger::TooFewConnections => 1,
            Trigger::TooManyConnections => 2,
            Trigger::NewPeer => 4,
            Trigger::NewPoint => 8,
            Trigger::NewConnection => 16,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn json_names_and_tags() {
        let e = P2pEvent::NewPoint {
            point: "1.2.3.4:9732".parse().unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"new_point","point":"1.2.3.4:9732"}"#
        );
        assert_eq!(e.tag(), 2);
        let m = serde_json::to_string(&P2pEvent::MaintenanceEnded).unwrap();
        assert_eq!(m, r#"{"event":"maintenance_ended"}"#);
        let back: P2pEvent = serde_json::from_str(&m).unwrap();
        assert_eq!(back.tag(), 27);
    }
}
