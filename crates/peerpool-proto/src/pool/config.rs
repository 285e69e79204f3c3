//! The pool's settings ([`PoolConfig`], checked by [`PoolConfig::validate`]) and its one
//! error type ([`PoolError`]).

use super::acl::{AclConfig, AclError};
use super::peer_state;
use super::point_state::{self, ReconnectionConfig};
use crate::identity::PeerId;
use crate::point::Point;
use std::net::IpAddr;
use thiserror::Error;

/// The pool's settings (BEHAVIOUR.md §9 defaults). Checked once by [`Pool::new`].
///
/// [`Pool::new`]: super::Pool::new
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// `(max, target)` known points: when a new point arrives and the table holds `max`,
    /// GC brings it to `target` counting the new point. Default (400, 300); `1 ≤ target ≤ max`.
    pub max_known_points: (usize, usize),
    /// `(max, target)` known peer ids, as above. Default (400, 300).
    pub max_known_peer_ids: (usize, usize),
    /// Reconnection backoff of points.
    pub reconnection: ReconnectionConfig,
    /// Greylist sizes and delays.
    pub acl: AclConfig,
    /// Private mode: only trusted points and peers are acceptable, both directions, and
    /// our points are not advertised.
    pub private_mode: bool,
    /// Below this many running connections a disconnection raises
    /// [`Trigger::TooFewConnections`]. Default 10.
    ///
    /// [`Trigger::TooFewConnections`]: super::Trigger::TooFewConnections
    pub min_connections: usize,
    /// Above this many running connections a new one raises
    /// [`Trigger::TooManyConnections`]. Default 100; `≥ min_connections`.
    ///
    /// [`Trigger::TooManyConnections`]: super::Trigger::TooManyConnections
    pub max_connections: usize,
    /// Capacity of the event outbox, events; when full the oldest is dropped and counted
    /// ([`Pool::dropped_events`]). Default 1024; `≥ 1`.
    ///
    /// [`Pool::dropped_events`]: super::Pool::dropped_events
    pub event_outbox_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_known_points: (400, 300),
            max_known_peer_ids: (400, 300),
            reconnection: ReconnectionConfig::default(),
            acl: AclConfig::default(),
            private_mode: false,
            min_connections: 10,
            max_connections: 100,
            event_outbox_size: 1024,
        }
    }
}

/// Errors of the pool: bad config, unknown entries, refused transitions, and the reasons a
/// connection is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// A config field breaks a rule.
    #[error("invalid pool config: {0}")]
    InvalidConfig(&'static str),
    /// The ACL config is invalid.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// The point is not in the known points.
    #[error("unknown point {0}")]
    UnknownPoint(Point),
    /// The peer id is not in the known peer ids.
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    /// The point state machine refused the transition.
    #[error(transparent)]
    PointTransition(#[from] point_state::PointTransitionError),
    /// The peer state machine refused the transition.
    #[error(transparent)]
    PeerTransition(#[from] peer_state::PeerTransitionError),
    /// The point is one of our own addresses (octez `Myself`).
    #[error("{0} is one of our own points")]
    Myself(Point),
    /// The IP is blacklisted or greylisted (octez `Point_banned`).
    #[error("address {0} is banned")]
    PointBanned(IpAddr),
    /// The peer id is blacklisted or greylisted (octez `Peer_banned`).
    #[error("peer {0} is banned")]
    PeerBanned(PeerId),
    /// Private mode and neither the point nor the peer is trusted (octez `Private_mode`).
    #[error("private mode: {0} is not trusted")]
    PrivateMode(Point),
    /// The point expects another peer id (octez `Identity_check_failure`; no greylisting).
    #[error("{point} presented {got}, expected {expected}")]
    IdentityCheckFailure {
        /// The point.
        point: Point,
        /// The peer id recorded with [`Pool::set_expected_peer_id`].
        ///
        /// [`Pool::set_expected_peer_id`]: super::Pool::set_expected_peer_id
        expected: PeerId,
        /// The peer id of the handshake.
        got: PeerId,
    },
    /// The point or the peer already has a connection (octez `Already_connected`, sent as
    /// a Nack motive).
    #[error("{0} or its peer is already connected")]
    AlreadyConnected(Point),
}

impl PoolConfig {
    /// Checks the cross-field rules. Errors: [`PoolError::InvalidConfig`], [`PoolError::Acl`].
    pub fn validate(&self) -> Result<(), PoolError> {
        for (max, target) in [self.max_known_points, self.max_known_peer_ids] {
            if target == 0 || target > max {
                return Err(PoolError::InvalidConfig(
                    "max_known_points / max_known_peer_ids need 1 <= target <= max",
                ));
            }
        }
        let r = &self.reconnection;
        if !(r.factor.is_finite() && r.factor >= 1.0) {
            return Err(PoolError::InvalidConfig("reconnection factor must be >= 1"));
        }
        if r.initial_delay > r.increase_cap {
            return Err(PoolError::InvalidConfig(
                "reconnection initial_delay must not exceed increase_cap",
            ));
        }
        if self.min_connections > self.max_connections {
            return Err(PoolError::InvalidConfig(
                "min_connections must not exceed max_connections",
            ));
        }
        if self.event_outbox_size == 0 {
            return Err(PoolError::InvalidConfig("event_outbox_size must be >= 1"));
        }
        self.acl.validate()?;
        Ok(())
    }
}
