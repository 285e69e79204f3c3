//! The peer state machine and its history (BEHAVIOUR.md §2.2, octez `P2p_peer_state`).
//!
//! `Disconnected → Accepted → Running → Disconnected`; Accepted → Disconnected is a
//! rejected connection. Peers have no backoff.

use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use thiserror::Error;

pub use super::point_state::EVENT_RING_SIZE;

/// The address a peer used: its IP and, when known, its listening port (octez
/// `P2p_connection.Id.t = addr × port option`).
///
/// JSON (BEHAVIOUR.md §4.6): `{"addr": "<IPv6 text>", "port": 9732}`, `port` optional;
/// IPv4 addresses are written IPv4-mapped (`::ffff:a.b.c.d`) as octez does, and either
/// form is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdPoint {
    /// The IP address (IPv4-mapped addresses are kept as IPv4).
    pub addr: IpAddr,
    /// The listening port, if the remote announced one.
    pub port: Option<u16>,
}

impl IdPoint {
    /// The point, if the port is known.
    pub fn point(&self) -> Option<Point> {
        self.port.map(|port| Point::new(self.addr, port))
    }
}

impl From<Point> for IdPoint {
    fn from(p: Point) -> Self {
        IdPoint {
            addr: p.ip(),
            port: Some(p.port()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct IdPointJson {
    addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl Serialize for IdPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v6 = match self.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        IdPointJson {
            addr: v6.to_string(),
            port: self.port,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = IdPointJson::deserialize(d)?;
        let addr: IpAddr = j
            .addr
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .or_else(|_| j.addr.parse::<IpAddr>())
            .map_err(serde::de::Error::custom)?;
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        Ok(IdPoint { addr, port: j.port })
    }
}

/// The state of a peer (BEHAVIOUR.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No connection.
    Disconnected,
    /// Handshake done through `point`, waiting for the Ack.
    Accepted {
        /// Where the peer is.
        point: IdPoint,
    },
    /// An established connection through `point`.
    Running {
        /// Where the peer is.
        point: IdPoint,
    },
}

impl PeerState {
    /// The state's name in lower case, as the RPC shows it.
    pub fn name(&self) -> &'static str {
        match self {
            PeerState::Disconnected => "disconnected",
            PeerState::Accepted { .. } => "accepted",
            PeerState::Running { .. } => "running",
        }
    }
}

/// The kinds of peer events; JSON names as in octez's peers file (BEHAVIOUR.md §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerEventKind {
    /// A handshake with the peer succeeded (we are waiting for the Ack).
    IncomingRequest,
    /// We refused the peer.
    RejectingRequest,
    /// The attempt failed after the handshake.
    RequestRejected,
    /// The connection is running.
    ConnectionEstablished,
    /// We closed the connection.
    Disconnection,
    /// The remote or the network closed the connection.
    ExternalDisconnection,
}

/// One entry of a peer's event ring. JSON: `{"kind", "timestamp", "addr", "port"?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEvent {
    /// What happened.
    pub kind: PeerEventKind,
    /// When. A timestamp past [`Time::MAX_RFC3339`] is read as it (see
    /// [`super::peers_file`]).
    #[serde(deserialize_with = "super::time::clamped::time")]
    pub timestamp: Time,
    /// Through which address.
    #[serde(flatten)]
    pub point: IdPoint,
}

/// A transition that the peer state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("peer {peer_id}: cannot go from {from} to {to}")]
pub struct PeerTransitionError {
    /// The peer.
    pub peer_id: PeerId,
    /// The state it was in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// Everything the pool knows about one peer id (BEHAVIOUR.md §2.2 "Info kept"), with the
/// application's peer metadata `M`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo<M> {
    peer_id: PeerId,
    created: Time,
    /// The application's data about this peer (octez `peer_metadata`), scored by
    /// [`PeerMeta::score`](super::PeerMeta::score) for GC.
    pub metadata: M,
    /// Trusted peers are never collected, never reported banned, and are acceptable in
    /// private mode.
    pub trusted: bool,
    state: PeerState,
    last_failed_connection: Option<(IdPoint, Time)>,
    last_rejected_connection: Option<(IdPoint, Time)>,
    last_established_connection: Option<(IdPoint, Time)>,
    last_disconnection: Option<(IdPoint, Time)>,
    events: VecDeque<PeerEvent>,
}

impl<M> PeerInfo<M> {
    /// A new, disconnected peer created at `created`.
    pub fn new(peer_id: PeerId, created: Time, metadata: M) -> Self {
        PeerInfo {
            peer_id,
            created,
            metadata,
            trusted: false,
            state: PeerState::Disconnected,
            last_failed_connection: None,
            last_rejected_connection: None,
            last_established_connection: None,
            last_disconnection: None,
            events: VecDeque::new(),
        }
    }

    /// The peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// When the pool first heard of this peer.
    pub fn created(&self) -> Time {
        self.created
    }

    /// The current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The address of the current connection (Accepted or Running).
    pub fn current_point(&self) -> Option<IdPoint> {
        match self.state {
            PeerState::Accepted { point } | PeerState::Running { point } => Some(point),
            PeerState::Disconnected => None,
        }
    }

    /// Never written by octez; kept so that a loaded file round-trips.
    pub fn last_failed_connection(&self) -> Option<(IdPoint, Time)> {
        self.last_failed_connection
    }

    /// The last Accepted → Disconnected.
    pub fn last_rejected_connection(&self) -> Option<(IdPoint, Time)> {
        self.last_rejected_connection
    }

    /// The last → Running.
    pub fn last_established_connection(&self) -> Option<(IdPoint, Time)> {
        self.last_established_connection
    }

    /// The last Running → Disconnected.
    pub fn last_disconnection(&self) -> Option<(IdPoint, Time)> {
        self.last_disconnection
    }

    /// Most recent of established / rejected / disconnection.
    pub fn last_seen(&self) -> Option<(IdPoint, Time)> {
        [
            self.last_rejected_connection,
            self.last_established_connection,
            self.last_disconnection,
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(_, t)| *t)
    }

    /// Most recent of failed / rejected / disconnection.
    pub fn last_miss(&self) -> Option<(IdPoint, Time)> {
        [
            self.last_failed_connection,
            self.last_rejected_connection,
            self.last_disconnection,
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(_, t)| *t)
    }

    /// The address the peer was last seen at: the current connection's, else the most
    /// recent in the history. Used to greylist a peer's IP after it left (§13.3).
    pub fn last_known_addr(&self) -> Option<IpAddr> {
        self.current_point()
            .or_else(|| self.last_seen().map(|(p, _)| p))
            .or_else(|| self.last_failed_connection.map(|(p, _)| p))
            .map(|p| p.addr)
    }

    /// The event ring, oldest first, at most [`EVENT_RING_SIZE`] entries.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &PeerEvent> + '_ {
        self.events.iter()
    }

    fn log(&mut self, timestamp: Time, kind: PeerEventKind, point: IdPoint) {
        if self.events.len() == EVENT_RING_SIZE {
            self.events.pop_front();
        }
        self.events.push_back(PeerEvent {
            kind,
            timestamp,
            point,
        });
    }

    fn refuse(&self, to: &'static str) -> PeerTransitionError {
        PeerTransitionError {
            peer_id: self.peer_id,
            from: self.state.name(),
            to,
        }
    }

    /// Disconnected → Accepted through `point`. Logs `IncomingRequest`.
    ///
    /// Errors: from Accepted or Running.
    pub fn set_accepted(&mut self, now: Time, point: IdPoint) -> Result<(), PeerTransitionError> {
        if self.state != PeerState::Disconnected {
            return Err(self.refuse("accepted"));
        }
        self.state = PeerState::Accepted { point };
        self.log(now, PeerEventKind::IncomingRequest, point);
        Ok(())
    }

    /// Disconnected/Accepted → Running through `point`; sets
    /// `last_established_connection`. Logs `ConnectionEstablished`.
    ///
    /// Errors: from Running.
    pub fn set_running(&mut self, now: Time, point: IdPoint) -> Result<(), PeerTransitionError> {
        if matches!(self.state, PeerState::Running { .. }) {
            return Err(self.refuse("running"));
        }
        self.state = PeerState::Running { point };
        self.last_established_connection = Some((point, now));
        self.log(now, PeerEventKind::ConnectionEstablished, point);
        Ok(())
    }

    /// → Disconnected. From Accepted: `last_rejected_connection`, `RequestRejected`. From
    /// Running: `last_disconnection`, `Disconnection` if `requested` else
    /// `ExternalDisconnection`. From Disconnected: nothing.
    pub fn set_disconnected(&mut self, now: Time, requested: bool) {
        match self.state {
            PeerState::Disconnected => return,
            PeerState::Accepted { point } => {
                self.last_rejected_connection = Some((point, now));
                self.log(now, PeerEventKind::RequestRejected, point);
            }
            PeerState::Running { point } => {
                self.last_disconnection = Some((point, now));
                let kind = if requested {
                    PeerEventKind::Disconnection
                } else {
                    PeerEventKind::ExternalDisconnection
                };
                self.log(now, kind, point);
            }
        }
        self.state = PeerState::Disconnected;
    }

    /// Restores a peer loaded from `peers.json`.
    pub(crate) fn restore(
        &mut self,
        history: [Option<(IdPoint, Time)>; 4],
        events: impl IntoIterator<Item = PeerEvent>,
    ) {
        let [failed, rejected, established, disconnection] = history;
        self.last_failed_connection = failed;
        self.last_rejected_connection = rejected;
        self.last_established_connection = established;
        self.last_disconnection = disconnection;
        for e in events {
            self.log(e.timestamp, e.kind, e.point);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn ip(n: u8) -> IdPoint {
        IdPoint {
            addr: IpAddr::from([10, 0, 0, n]),
            port: Some(9732),
        }
    }

    fn t(s: u64) -> Time {
        Time::from_secs(1_000_000 + s)
    }

    fn info() -> PeerInfo<()> {
        PeerInfo::new(PeerId([7; 16]), t(0), ())
    }

    #[test]
    fn accepted_running_disconnected() {
        let mut p = info();
        p.set_accepted(t(1), ip(1)).unwrap();
        assert_eq!(p.state(), PeerState::Accepted { point: ip(1) });
        assert!(p.set_accepted(t(1), ip(1)).is_err());
        p.set_running(t(2), ip(1)).unwrap();
        assert!(p.set_running(t(2), ip(1)).is_err());
        assert!(p.set_accepted(t(2), ip(1)).is_err());
        assert_eq!(p.last_established_connection(), Some((ip(1), t(2))));
        p.set_disconnected(t(3), true);
        assert_eq!(p.state(), PeerState::Disconnected);
        assert_eq!(p.last_disconnection(), Some((ip(1), t(3))));
        assert_eq!(p.last_seen(), Some((ip(1), t(3))));
        assert_eq!(p.last_miss(), Some((ip(1), t(3))));
        let kinds: Vec<_> = p.events().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                PeerEventKind::IncomingRequest,
                PeerEventKind::ConnectionEstablished,
                PeerEventKind::Disconnection
            ]
        );
        p.set_running(t(4), ip(2)).unwrap();
        p.set_disconnected(t(5), false);
        assert_eq!(
            p.events().last().unwrap().kind,
            PeerEventKind::ExternalDisconnection
        );
        assert_eq!(p.last_known_addr(), Some(ip(2).addr));
    }

    #[test]
    fn accepted_then_dropped_is_a_rejection() {
        let mut p = info();
        p.set_accepted(t(1), ip(3)).unwrap();
        p.set_disconnected(t(2), false);
        assert_eq!(p.last_rejected_connection(), Some((ip(3), t(2))));
        assert_eq!(
            p.events().last().unwrap().kind,
            PeerEventKind::RequestRejected
        );
        assert_eq!(p.last_known_addr(), Some(ip(3).addr));
        let before = p.clone();
        p.set_disconnected(t(9), true);
        assert_eq!(p, before);
    }

    #[test]
    fn event_ring_keeps_the_last_hundred() {
        let mut p = info();
        for i in 0..150 {
            p.set_running(t(i), ip(1)).unwrap();
            p.set_disconnected(t(i), false);
        }
        assert_eq!(p.events().len(), EVENT_RING_SIZE);
        assert_eq!(p.events().last().unwrap().timestamp, t(149));
    }

    #[test]
    fn id_point_json_is_ipv6_text() {
        let j = serde_json::to_string(&ip(1)).unwrap();
        assert_eq!(j, r#"{"addr":"::ffff:10.0.0.1","port":9732}"#);
        let back: IdPoint = serde_json::from_str(&j).unwrap();
        assert_eq!(back, ip(1));
        let no_port: IdPoint = serde_json::from_str(r#"{"addr":"2001:db8::1"}"#).unwrap();
        assert_eq!(no_port.port, None);
        assert!(serde_json::from_str::<IdPoint>(r#"{"addr":"nope"}"#).is_err());
    }
}
