//! The pool's pure core (BEHAVIOUR.md §2, §4, §5): the tables of known and connected points
//! and peer ids, their state machines, GC, the ACL, private mode, `list_known_points`, the
//! peers file and the events the pool emits. It decides; the runtime's pool task owns one
//! [`Pool`], feeds it `now` and results of I/O, and acts on what it returns.
//!
//! # Layout
//!
//! - [`time`]: [`Time`], wall-clock time as a `Duration` since the Unix epoch, RFC 3339.
//! - [`point_state`]: the point state machine, history and reconnection backoff (§2.1).
//! - [`peer_state`]: the peer state machine and history (§2.2), [`IdPoint`].
//! - [`acl`]: peer and IP greylists (counting Bloom filter), blacklists, failure policy (§5).
//! - [`events`]: [`P2pEvent`] (the `/network/log` stream, §11) and [`Trigger`].
//! - [`peers_file`]: `peers.json` parse/serialize (§4.6).
//!
//! # Sans-IO contract
//!
//! Every method that depends on time takes `now`; randomness comes from an RNG the caller
//! seeds (the hash tables are keyed from it too, so a seeded pool is deterministic).
//! Events and triggers go to bounded outboxes drained with [`Pool::poll_event`] and
//! [`Pool::poll_trigger`]; the next IP-greylist countdown is [`Pool::poll_timeout`].

pub mod acl;
pub mod events;
pub mod peer_state;
pub mod peers_file;
pub mod point_state;
pub mod time;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use acl::{acl_action, Acl, AclAction, AclConfig, AclError, Failure};
pub use events::{P2pEvent, Trigger};
pub use peer_state::{IdPoint, PeerEvent, PeerEventKind, PeerInfo, PeerState};
pub use peers_file::{PeerRecord, PeersFileError, PointRecord};
pub use point_state::{PointEvent, PointEventKind, PointInfo, PointState, ReconnectionConfig};
pub use time::Time;

use crate::identity::PeerId;
use crate::point::Point;
use rand::RngCore;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use thiserror::Error;

/// How many of our own points the pool remembers (octez `my_id_points`, LRU of 7).
pub const MY_ID_POINTS: usize = 7;

/// Peer metadata as the pool sees it: how to make it for a new peer and how to score it
/// for GC (octez `peer_meta_initial` and `score`). Higher scores are kept longer.
pub trait PeerMeta: Clone + fmt::Debug {
    /// The metadata of a peer the pool has just heard of.
    fn initial() -> Self;

    /// The GC score; the lowest goes first. octez's shell returns the constant 1.0.
    fn score(&self) -> f64 {
        1.0
    }
}

impl PeerMeta for () {
    fn initial() -> Self {}
}

/// Opaque JSON metadata, e.g. a shell `Peer_metadata` loaded from an octez peers file.
impl PeerMeta for serde_json::Value {
    fn initial() -> Self {
        serde_json::Value::Null
    }

    /// A numeric `"score"` field if the object has one, else 1.0 (octez's shell constant).
    fn score(&self) -> f64 {
        self.get("score")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0)
    }
}

/// The pool's settings (BEHAVIOUR.md §9 defaults). Checked once by [`Pool::new`].
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
    pub min_connections: usize,
    /// Above this many running connections a new one raises
    /// [`Trigger::TooManyConnections`]. Default 100; `≥ min_connections`.
    pub max_connections: usize,
    /// Capacity of the event outbox, events; when full the oldest is dropped and counted
    /// ([`Pool::dropped_events`]). Default 1024; `≥ 1`.
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

/// A `BuildHasher` keyed from the caller's RNG: SipHash (std's `DefaultHasher`) fed a
/// 128-bit secret before the key. Keys come from remote input (advertised points, peer
/// ids), so the tables must not be predictable, yet a seeded pool must be reproducible.
#[derive(Debug, Clone)]
pub struct SeededState(u64, u64);

impl SeededState {
    /// A state keyed from `rng`.
    pub fn new(rng: &mut impl RngCore) -> Self {
        SeededState(rng.next_u64(), rng.next_u64())
    }
}

impl BuildHasher for SeededState {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h.write_u64(self.1);
        h
    }
}

type Map<K, V> = HashMap<K, V, SeededState>;
type Set<K> = HashSet<K, SeededState>;

/// The result of [`Pool::register_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The point was not known before.
    pub new: bool,
    /// What recording the expected peer id required, if one was given.
    pub expected: ExpectedPeerIdOutcome,
}

/// What [`Pool::set_expected_peer_id`] did (BEHAVIOUR.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedPeerIdOutcome {
    /// Recorded; the current connection (if any) matches or there is none.
    Recorded,
    /// The point is Accepted with another peer: its IP has been greylisted. The runtime
    /// should let the pending handshake fail.
    AddrGreylisted {
        /// The peer that is there instead.
        peer_id: PeerId,
    },
    /// The point is Running with another peer: its IP has been greylisted and the runtime
    /// must close the connection (reason `Unexpected_peer_id`).
    Disconnect {
        /// The point.
        point: Point,
        /// The peer to disconnect.
        peer_id: PeerId,
    },
}

/// A connection the runtime must close after a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// Where.
    pub point: Point,
    /// Whom.
    pub peer_id: PeerId,
}

/// Where a list of points came from, for [`Pool::register_list_of_new_points`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// An Advertise message.
    Advertise,
    /// The alternative points of a Nack.
    Nack,
    /// Local discovery.
    Discovery,
    /// Configuration or RPC.
    Config,
}

/// What [`Pool::register_list_of_new_points`] did; the runtime logs it as `get_points`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPoints {
    /// Where the list came from.
    pub medium: Medium,
    /// Who sent it.
    pub source: Option<PeerId>,
    /// How many points were in the list.
    pub received: usize,
    /// How many were new.
    pub added: usize,
}

/// The pool's pure state: tables, ACL, outboxes. `M` is the application's peer metadata.
#[derive(Debug)]
pub struct Pool<M> {
    config: PoolConfig,
    known_points: Map<Point, PointInfo>,
    connected_points: Set<Point>,
    known_peer_ids: Map<PeerId, PeerInfo<M>>,
    connected_peer_ids: Set<PeerId>,
    my_id_points: VecDeque<Point>,
    acl: Acl,
    events: VecDeque<P2pEvent>,
    dropped_events: u64,
    triggers: u8,
}

impl<M: PeerMeta> Pool<M> {
    /// An empty pool. `rng` keys the hash tables.
    ///
    /// Errors: see [`PoolConfig::validate`].
    pub fn new(config: PoolConfig, rng: &mut impl RngCore) -> Result<Self, PoolError> {
        config.validate()?;
        let state = SeededState::new(rng);
        Ok(Pool {
            acl: Acl::new(&config.acl)?,
            config,
            known_points: HashMap::with_hasher(state.clone()),
            connected_points: HashSet::with_hasher(state.clone()),
            known_peer_ids: HashMap::with_hasher(state.clone()),
            connected_peer_ids: HashSet::with_hasher(state),
            my_id_points: VecDeque::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            triggers: 0,
        })
    }

    /// The config.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    // ----- outboxes -------------------------------------------------------------------

    /// Appends an event to the `/network/log` outbox (the runtime uses this for the events
    /// it observes itself, e.g. `IncomingConnection`). When full, the oldest is dropped.
    pub fn push_event(&mut self, event: P2pEvent) {
        if self.events.len() >= self.config.event_outbox_size {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    /// The next event, oldest first; `None` when drained.
    pub fn poll_event(&mut self) -> Option<P2pEvent> {
        self.events.pop_front()
    }

    /// How many events were dropped because the outbox was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    fn raise(&mut self, t: Trigger) {
        self.triggers |= t.bit();
    }

    /// The next pending trigger; each kind is delivered once however often it was raised.
    pub fn poll_trigger(&mut self) -> Option<Trigger> {
        let t = Trigger::ALL
            .into_iter()
            .find(|t| self.triggers & t.bit() != 0)?;
        self.triggers &= !t.bit();
        Some(t)
    }

    /// When the runtime must call [`Pool::gc_greylist`] next (IP greylist countdown).
    pub fn poll_timeout(&self) -> Option<Time> {
        self.acl.ip_greylist().next_countdown()
    }

    // ----- registration (§4.2) --------------------------------------------------------

    /// Adds `point` if unknown (running the points GC first if the table is full), or
    /// updates it. `trusted = Some(b)` sets or clears trust; `expected_peer_id` runs
    /// [`Pool::set_expected_peer_id`]. A new point raises [`Trigger::NewPoint`] and logs
    /// [`P2pEvent::NewPoint`].
    pub fn register_point(
        &mut self,
        now: Time,
        point: Point,
        trusted: Option<bool>,
        expected_peer_id: Option<PeerId>,
    ) -> Registration {
        let new = !self.known_points.contains_key(&point);
        if new {
            let (max, target) = self.config.max_known_points;
            if self.known_points.len() >= max {
                // Leave room for the new point so the table ends at `target` (octez ends one
                // above it, issue 3175).
                self.gc_points_to(target - 1);
            }
            self.known_points
                .insert(point, PointInfo::new(point, trusted.unwrap_or(false), None));
            self.raise(Trigger::NewPoint);
            self.push_event(P2pEvent::NewPoint { point });
        } else if let (Some(t), Some(info)) = (trusted, self.known_points.get_mut(&point)) {
            info.trusted = t;
        }
        let expected = match expected_peer_id {
            Some(peer_id) => self.record_expected_peer_id(now, point, peer_id),
            None => ExpectedPeerIdOutcome::Recorded,
        };
        Registration { new, expected }
    }

    /// [`Pool::register_point`] for points learned from the network (Advertise, Nack,
    /// incoming connections, discovery): refuses our own points. Returns whether the point
    /// is new. No other validation, as in octez: filtering happens when dialling.
    pub fn register_new_point(&mut self, now: Time, point: Point) -> bool {
        if self.my_id_points.contains(&point) {
            return false;
        }
        self.register_point(now, point, None, None).new
    }

    /// Registers every point of a list received from `source` through `medium`.
    pub fn register_list_of_new_points(
        &mut self,
        now: Time,
        medium: Medium,
        source: Option<PeerId>,
        points: impl IntoIterator<Item = Point>,
    ) -> NewPoints {
        let mut received = 0;
        let mut added = 0;
        for p in points {
            received += 1;
            added += usize::from(self.register_new_point(now, p));
        }
        NewPoints {
            medium,
            source,
            received,
            added,
        }
    }

    /// Forgets `point` (used after `Rejected_no_common_protocol`). Returns whether it was
    /// known.
    pub fn unregister_point(&mut self, point: &Point) -> bool {
        self.connected_points.remove(point);
        self.known_points.remove(point).is_some()
    }

    /// Adds `peer_id` if unknown with [`PeerMeta::initial`] metadata (running the peers GC
    /// first if full). Returns whether it is new; a new peer raises [`Trigger::NewPeer`] and
    /// logs [`P2pEvent::NewPeer`].
    pub fn register_peer(&mut self, now: Time, peer_id: PeerId) -> bool {
        if self.known_peer_ids.contains_key(&peer_id) {
            return false;
        }
        let (max, target) = self.config.max_known_peer_ids;
        if self.known_peer_ids.len() >= max {
            self.gc_peer_ids_to(target - 1);
        }
        self.known_peer_ids
            .insert(peer_id, PeerInfo::new(peer_id, now, M::initial()));
        self.raise(Trigger::NewPeer);
        self.push_event(P2pEvent::NewPeer { peer_id });
        true
    }

    /// Records `point` as one of our own addresses (LRU of [`MY_ID_POINTS`]) and removes it
    /// from the known points.
    pub fn add_to_id_points(&mut self, point: Point) {
        self.my_id_points.retain(|p| *p != point);
        if self.my_id_points.len() >= MY_ID_POINTS {
            self.my_id_points.pop_front();
        }
        self.my_id_points.push_back(point);
        self.unregister_point(&point);
    }

    /// Whether `point` is one of our own addresses.
    pub fn is_my_point(&self, point: &Point) -> bool {
        self.my_id_points.contains(point)
    }

    /// Records that `point` must present `peer_id` (registering the point if unknown).
    /// If the point is Running with another peer, greylists its IP and tells the runtime to
    /// disconnect; if Accepted with another peer, greylists its IP (BEHAVIOUR.md §4.5).
    pub fn set_expected_peer_id(
        &mut self,
        now: Time,
        point: Point,
        peer_id: PeerId,
    ) -> ExpectedPeerIdOutcome {
        self.register_point(now, point, None, Some(peer_id))
            .expected
    }

    fn record_expected_peer_id(
        &mut self,
        now: Time,
        point: Point,
        peer_id: PeerId,
    ) -> ExpectedPeerIdOutcome {
        let Some(info) = self.known_points.get_mut(&point) else {
            return ExpectedPeerIdOutcome::Recorded;
        };
        info.expected_peer_id = Some(peer_id);
        match info.state() {
            PointState::Running { peer_id: other } if other != peer_id => {
                self.acl.greylist_addr(now, point.ip());
                ExpectedPeerIdOutcome::Disconnect {
                    point,
                    peer_id: other,
                }
            }
            PointState::Accepted { peer_id: other } if other != peer_id => {
                self.acl.greylist_addr(now, point.ip());
                ExpectedPeerIdOutcome::AddrGreylisted { peer_id: other }
            }
            _ => ExpectedPeerIdOutcome::Recorded,
        }
    }

    // ----- lookups ----------------------------------------------------------------------

    /// The info of a known point.
    pub fn point(&self, point: &Point) -> Option<&PointInfo> {
        self.known_points.get(point)
    }

    /// All known points, in no particular order.
    pub fn points(&self) -> impl Iterator<Item = &PointInfo> + '_ {
        self.known_points.values()
    }

    /// Number of known points.
    pub fn known_points_len(&self) -> usize {
        self.known_points.len()
    }

    /// The state of a known point.
    pub fn point_state(&self, point: &Point) -> Option<PointState> {
        self.known_points.get(point).map(PointInfo::state)
    }

    /// Points with a Running connection.
    pub fn connected_points(&self) -> impl Iterator<Item = &Point> + '_ {
        self.connected_points.iter()
    }

    /// The info of a known peer.
    pub fn peer(&self, peer_id: &PeerId) -> Option<&PeerInfo<M>> {
        self.known_peer_ids.get(peer_id)
    }

    /// All known peers, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo<M>> + '_ {
        self.known_peer_ids.values()
    }

    /// Number of known peer ids.
    pub fn known_peer_ids_len(&self) -> usize {
        self.known_peer_ids.len()
    }

    /// The state of a known peer.
    pub fn peer_state(&self, peer_id: &PeerId) -> Option<PeerState> {
        self.known_peer_ids.get(peer_id).map(PeerInfo::state)
    }

    /// Peers with a Running connection.
    pub fn connected_peer_ids(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.connected_peer_ids.iter()
    }

    /// Number of Running connections.
    pub fn active_connections(&self) -> usize {
        self.connected_peer_ids.len()
    }

    /// The GC score of a peer's metadata ([`PeerMeta::score`]).
    pub fn score(&self, peer_id: &PeerId) -> Option<f64> {
        self.known_peer_ids.get(peer_id).map(|p| p.metadata.score())
    }

    /// A peer's metadata.
    pub fn peer_metadata(&self, peer_id: &PeerId) -> Option<&M> {
        self.known_peer_ids.get(peer_id).map(|p| &p.metadata)
    }

    /// Replaces a peer's metadata. Errors: [`PoolError::UnknownPeer`].
    pub fn set_peer_metadata(&mut self, peer_id: &PeerId, metadata: M) -> Result<(), PoolError> {
        self.peer_mut(peer_id)?.metadata = metadata;
        Ok(())
    }

    /// Records whether a handshake showed `point`'s remote is public (not a private node).
    /// Errors: [`PoolError::UnknownPoint`].
    pub fn set_known_public(&mut self, point: &Point, public: bool) -> Result<(), PoolError> {
        self.point_mut(point)?.known_public = public;
        Ok(())
    }

    fn point_mut(&mut self, point: &Point) -> Result<&mut PointInfo, PoolError> {
        self.known_points
            .get_mut(point)
            .ok_or(PoolError::UnknownPoint(*point))
    }

    fn peer_mut(&mut self, peer_id: &PeerId) -> Result<&mut PeerInfo<M>, PoolError> {
        self.known_peer_ids
            .get_mut(peer_id)
            .ok_or(PoolError::UnknownPeer(*peer_id))
    }

    // ----- transitions ------------------------------------------------------------------

    /// Point Disconnected/Requested → Requested (we dial). Errors: unknown point, or the
    /// transition is refused.
    pub fn set_point_requested(&mut self, now: Time, point: &Point) -> Result<(), PoolError> {
        Ok(self.point_mut(point)?.set_requested(now)?)
    }

    /// Point Disconnected/Requested → Accepted(peer_id).
    pub fn set_point_accepted(
        &mut self,
        now: Time,
        point: &Point,
        peer_id: PeerId,
    ) -> Result<(), PoolError> {
        Ok(self.point_mut(point)?.set_accepted(now, peer_id)?)
    }

    /// Point → Running(peer_id); the point becomes connected.
    pub fn set_point_running(
        &mut self,
        now: Time,
        point: &Point,
        peer_id: PeerId,
    ) -> Result<(), PoolError> {
        self.point_mut(point)?.set_running(now, peer_id)?;
        self.connected_points.insert(*point);
        Ok(())
    }

    /// Point → Disconnected with backoff (see [`PointInfo::set_disconnected`]). A failed
    /// attempt logs [`P2pEvent::RequestRejected`]. Errors: unknown point.
    pub fn set_point_disconnected(
        &mut self,
        now: Time,
        point: &Point,
        requested: bool,
    ) -> Result<(), PoolError> {
        let cfg = self.config.reconnection;
        let info = self.point_mut(point)?;
        let before = info.state();
        info.set_disconnected(now, requested, &cfg);
        self.connected_points.remove(point);
        match before {
            PointState::Requested => self.push_event(P2pEvent::RequestRejected {
                point: *point,
                identity: None,
            }),
            PointState::Accepted { peer_id } => self.push_event(P2pEvent::RequestRejected {
                point: *point,
                identity: Some((IdPoint::from(*point), peer_id)),
            }),
            _ => {}
        }
        Ok(())
    }

    /// Peer Disconnected → Accepted through `point`.
    pub fn set_peer_accepted(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        point: IdPoint,
    ) -> Result<(), PoolError> {
        Ok(self.peer_mut(peer_id)?.set_accepted(now, point)?)
    }

    /// Peer → Running through `point`: logs [`P2pEvent::ConnectionEstablished`], raises
    /// [`Trigger::NewConnection`], and [`Trigger::TooManyConnections`] above
    /// `max_connections`.
    pub fn set_peer_running(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        point: IdPoint,
    ) -> Result<(), PoolError> {
        self.peer_mut(peer_id)?.set_running(now, point)?;
        self.connected_peer_ids.insert(*peer_id);
        self.push_event(P2pEvent::ConnectionEstablished {
            id_point: point,
            peer_id: *peer_id,
        });
        self.raise(Trigger::NewConnection);
        if self.active_connections() > self.config.max_connections {
            self.raise(Trigger::TooManyConnections);
        }
        Ok(())
    }

    /// Peer → Disconnected. Ending a Running connection logs `Disconnection` (if
    /// `requested`) or `ExternalDisconnection`, and raises [`Trigger::TooFewConnections`]
    /// below `min_connections`. Errors: unknown peer.
    pub fn set_peer_disconnected(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        requested: bool,
    ) -> Result<(), PoolError> {
        let info = self.peer_mut(peer_id)?;
        let was_running = matches!(info.state(), PeerState::Running { .. });
        info.set_disconnected(now, requested);
        self.connected_peer_ids.remove(peer_id);
        if was_running {
            let peer_id = *peer_id;
            self.push_event(if requested {
                P2pEvent::Disconnection { peer_id }
            } else {
                P2pEvent::ExternalDisconnection { peer_id }
            });
            if self.active_connections() < self.config.min_connections {
                self.raise(Trigger::TooFewConnections);
            }
        }
        Ok(())
    }

    // ----- GC (§4.3) ----------------------------------------------------------------------

    /// Removes Disconnected, untrusted points with the oldest `last_miss` (never missed
    /// counts as "now": last) until at most `target` remain, or none of them is left.
    /// Returns how many were removed.
    pub fn gc_points(&mut self) -> usize {
        self.gc_points_to(self.config.max_known_points.1)
    }

    fn gc_points_to(&mut self, target: usize) -> usize {
        let excess = self.known_points.len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let mut candidates: Vec<(Time, Point)> = self
            .known_points
            .values()
            .filter(|p| !p.trusted && p.state() == PointState::Disconnected)
            .map(|p| {
                (
                    p.last_miss()
                        .unwrap_or(Time::from_unix(std::time::Duration::MAX)),
                    p.point(),
                )
            })
            .collect();
        let n = excess.min(candidates.len());
        if n < candidates.len() {
            candidates.select_nth_unstable(n);
        }
        for (_, p) in &candidates[..n] {
            self.known_points.remove(p);
        }
        self.push_event(P2pEvent::GcPoints);
        n
    }

    /// Removes Disconnected, untrusted peers, lowest score first and among equal scores the
    /// most recently created (against floods), until at most `target` remain or none of
    /// them is left. Returns how many were removed.
    pub fn gc_peer_ids(&mut self) -> usize {
        self.gc_peer_ids_to(self.config.max_known_peer_ids.1)
    }

    fn gc_peer_ids_to(&mut self, target: usize) -> usize {
        let excess = self.known_peer_ids.len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let mut candidates: Vec<(f64, std::cmp::Reverse<Time>, PeerId)> = self
            .known_peer_ids
            .values()
            .filter(|p| !p.trusted && p.state() == PeerState::Disconnected)
            .map(|p| {
                (
                    p.metadata.score(),
                    std::cmp::Reverse(p.created()),
                    p.peer_id(),
                )
            })
            .collect();
        let n = excess.min(candidates.len());
        let cmp = |a: &(f64, std::cmp::Reverse<Time>, PeerId),
                   b: &(f64, std::cmp::Reverse<Time>, PeerId)| {
            a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        if n < candidates.len() {
            candidates.select_nth_unstable_by(n, cmp);
        }
        for (_, _, p) in &candidates[..n] {
            self.known_peer_ids.remove(p);
        }
        self.push_event(P2pEvent::GcPeerIds);
        n
    }

    // ----- ACL (§5) -----------------------------------------------------------------------

    /// The access lists.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// Whether `point`'s IP is blacklisted or greylisted (octez `Points.banned`).
    pub fn point_banned(&self, point: &Point) -> bool {
        self.acl.banned_addr(point.ip())
    }

    /// Whether `peer_id` is blacklisted or greylisted; a trusted peer is never banned.
    pub fn peer_banned(&self, peer_id: &PeerId) -> bool {
        !self.known_peer_ids.get(peer_id).is_some_and(|p| p.trusted)
            && self.acl.banned_peer(peer_id)
    }

    /// Greylists an IP from `now` for at least `ip_greylist_cleanup_delay`.
    pub fn greylist_addr(&mut self, now: Time, ip: IpAddr) {
        self.acl.greylist_addr(now, ip);
    }

    /// Greylists `peer_id` and the IP it is connected from, or if it is not connected, the
    /// last address it was seen at (octez does nothing once the peer has left, §13.3).
    /// Returns the IP greylisted, if any address is known.
    pub fn greylist_peer(&mut self, now: Time, peer_id: &PeerId) -> Option<IpAddr> {
        self.acl.greylist_peer(*peer_id);
        let ip = self.known_peer_ids.get(peer_id)?.last_known_addr()?;
        self.acl.greylist_addr(now, ip);
        Some(ip)
    }

    /// Applies the §5 policy for `failure` at `point` with `peer_id` (when known), and
    /// returns what was decided; the runtime closes the connection when told to.
    pub fn apply_failure(
        &mut self,
        now: Time,
        failure: Failure,
        ip: IpAddr,
        peer_id: Option<PeerId>,
    ) -> AclAction {
        let action = acl_action(failure);
        match action {
            AclAction::Ignore => {}
            AclAction::GreylistAddr | AclAction::GreylistAddrAndDisconnect => {
                self.acl.greylist_addr(now, ip);
            }
            AclAction::GreylistPeer => {
                self.acl.greylist_addr(now, ip);
                if let Some(p) = peer_id {
                    self.acl.greylist_peer(p);
                }
            }
        }
        action
    }

    /// Empties the peer and IP greylists; manual bans stay.
    pub fn clear_greylist(&mut self) {
        self.acl.clear_greylists();
    }

    /// Runs the IP-greylist countdowns due at `now` (call at [`Pool::poll_timeout`]).
    pub fn gc_greylist(&mut self, now: Time) {
        self.acl.gc_greylist(now);
    }

    /// Empties all four access lists (octez `DELETE /network/greylist`).
    pub fn acl_clear(&mut self) {
        self.acl.clear();
    }

    /// Point `ban` (RPC): untrust, blacklist the IP, and blacklist the peer of every Running
    /// connection from that IP. Returns the connections to close (`IP_manually_banned`).
    pub fn ban_point(&mut self, point: &Point) -> Vec<Disconnect> {
        if let Some(info) = self.known_points.get_mut(point) {
            info.trusted = false;
        }
        let ip = point.ip();
        self.acl.ban_addr(ip);
        let doomed: Vec<Disconnect> = self.running_from(ip);
        for d in &doomed {
            if let Some(p) = self.known_peer_ids.get_mut(&d.peer_id) {
                p.trusted = false;
            }
            self.acl.ban_peer(d.peer_id);
        }
        doomed
    }

    fn running_from(&self, ip: IpAddr) -> Vec<Disconnect> {
        let mut v: Vec<Disconnect> = self
            .connected_points
            .iter()
            .filter(|p| p.ip() == ip)
            .filter_map(|p| {
                let peer_id = self.known_points.get(p)?.current_peer_id()?;
                Some(Disconnect { point: *p, peer_id })
            })
            .collect();
        v.sort_by_key(|d| d.point);
        v
    }

    /// Unbans `point`'s IP (blacklist and greylist).
    pub fn unban_point(&mut self, point: &Point) {
        self.acl.unban_addr(point.ip());
    }

    /// Point `trust` (RPC): unban the IP and the peers of its current connections, then
    /// trust it (registering it if unknown).
    pub fn trust_point(&mut self, now: Time, point: Point) {
        self.acl.unban_addr(point.ip());
        for d in self.running_from(point.ip()) {
            self.acl.unban_peer(&d.peer_id);
        }
        self.register_point(now, point, Some(true), None);
    }

    /// Clears a point's trust.
    pub fn untrust_point(&mut self, point: &Point) {
        if let Some(info) = self.known_points.get_mut(point) {
            info.trusted = false;
        }
    }

    /// Point `open` (RPC): unban and untrust.
    pub fn open_point(&mut self, point: &Point) {
        self.unban_point(point);
        self.untrust_point(point);
    }

    /// Peer `ban` (RPC): untrust and blacklist. Returns the connection to close
    /// (`Peer_id_manually_banned`) if the peer is Running.
    pub fn ban_peer(&mut self, peer_id: &PeerId) -> Option<Disconnect> {
        self.acl.ban_peer(*peer_id);
        let info = self.known_peer_ids.get_mut(peer_id)?;
        info.trusted = false;
        match info.state() {
            PeerState::Running { point } => Some(Disconnect {
                point: point.point()?,
                peer_id: *peer_id,
            }),
            _ => None,
        }
    }

    /// Removes `peer_id` from both peer lists.
    pub fn unban_peer(&mut self, peer_id: &PeerId) {
        self.acl.unban_peer(peer_id);
    }

    /// Peer `trust` (RPC): unban, then trust (registering the peer if unknown).
    pub fn trust_peer(&mut self, now: Time, peer_id: PeerId) {
        self.acl.unban_peer(&peer_id);
        self.register_peer(now, peer_id);
        if let Some(p) = self.known_peer_ids.get_mut(&peer_id) {
            p.trusted = true;
        }
    }

    /// Clears a peer's trust.
    pub fn untrust_peer(&mut self, peer_id: &PeerId) {
        if let Some(p) = self.known_peer_ids.get_mut(peer_id) {
            p.trusted = false;
        }
    }

    /// Peer `open` (RPC): unban and untrust.
    pub fn open_peer(&mut self, peer_id: &PeerId) {
        self.unban_peer(peer_id);
        self.untrust_peer(peer_id);
    }

    // ----- acceptance and dialling ----------------------------------------------------------

    fn point_trusted(&self, point: &Point) -> bool {
        self.known_points.get(point).is_some_and(|p| p.trusted)
    }

    fn peer_trusted(&self, peer_id: &PeerId) -> bool {
        self.known_peer_ids.get(peer_id).is_some_and(|p| p.trusted)
    }

    /// May we dial `point`? Not our own, IP not banned, and trusted in private mode. The
    /// backoff is not checked (an explicit connect ignores it, BEHAVIOUR.md §2.1).
    ///
    /// Errors: [`PoolError::Myself`], [`PoolError::PointBanned`], [`PoolError::PrivateMode`].
    pub fn check_dial(&self, point: &Point) -> Result<(), PoolError> {
        if self.is_my_point(point) {
            return Err(PoolError::Myself(*point));
        }
        if self.point_banned(point) {
            return Err(PoolError::PointBanned(point.ip()));
        }
        if self.config.private_mode && !self.point_trusted(point) {
            return Err(PoolError::PrivateMode(*point));
        }
        Ok(())
    }

    /// May an incoming connection from `ip` start a handshake? (The cheap check before
    /// the handshake.) Errors: [`PoolError::PointBanned`].
    pub fn check_incoming_addr(&self, ip: IpAddr) -> Result<(), PoolError> {
        if self.acl.banned_addr(ip) {
            return Err(PoolError::PointBanned(ip));
        }
        Ok(())
    }

    /// May the authenticated connection `point` ↔ `peer_id` proceed (either direction)?
    /// In this order (BEHAVIOUR.md §1.2-1.3): not our own point; the point's expected peer
    /// id, if any, matches; the IP and the peer are not banned (unless the point or the
    /// peer is trusted, for the IP); in private mode the point or the peer is trusted; the
    /// point is not Accepted/Running (nor Requested when `incoming`: we are dialling it
    /// ourselves) and the peer is not Accepted/Running. The slot check (too many
    /// connections) is the connect handler's.
    ///
    /// Errors: [`PoolError::Myself`], [`PoolError::IdentityCheckFailure`],
    /// [`PoolError::PointBanned`], [`PoolError::PeerBanned`], [`PoolError::PrivateMode`],
    /// [`PoolError::AlreadyConnected`].
    pub fn check_connection(
        &self,
        point: &Point,
        peer_id: &PeerId,
        incoming: bool,
    ) -> Result<(), PoolError> {
        if self.is_my_point(point) {
            return Err(PoolError::Myself(*point));
        }
        let info = self.known_points.get(point);
        if let Some(expected) = info.and_then(|i| i.expected_peer_id) {
            if expected != *peer_id {
                return Err(PoolError::IdentityCheckFailure {
                    point: *point,
                    expected,
                    got: *peer_id,
                });
            }
        }
        let trusted = self.point_trusted(point) || self.peer_trusted(peer_id);
        if self.point_banned(point) && !trusted {
            return Err(PoolError::PointBanned(point.ip()));
        }
        if self.peer_banned(peer_id) {
            return Err(PoolError::PeerBanned(*peer_id));
        }
        if self.config.private_mode && !trusted {
            return Err(PoolError::PrivateMode(*point));
        }
        let point_busy = match info.map(PointInfo::state) {
            Some(PointState::Accepted { .. } | PointState::Running { .. }) => true,
            Some(PointState::Requested) => incoming,
            _ => false,
        };
        let peer_busy = self
            .peer_state(peer_id)
            .is_some_and(|s| s != PeerState::Disconnected);
        if point_busy || peer_busy {
            return Err(PoolError::AlreadyConnected(*point));
        }
        Ok(())
    }

    /// The points the maintenance may dial now: Disconnected, past their backoff
    /// (`now > greylisted_until`), IP not banned, expected peer (if any) not banned, not
    /// our own, and trusted in private mode. Trusted points first, then the most recently
    /// seen; ties by point.
    pub fn candidates(&self, now: Time) -> Vec<Point> {
        let mut v: Vec<&PointInfo> = self
            .known_points
            .values()
            .filter(|p| {
                p.state() == PointState::Disconnected
                    && !p.cannot_reconnect_yet(now)
                    && !self.point_banned(&p.point())
                    && !p.expected_peer_id.is_some_and(|e| self.peer_banned(&e))
                    && (!self.config.private_mode || p.trusted)
                    && !self.is_my_point(&p.point())
            })
            .collect();
        v.sort_by(|a, b| {
            b.trusted
                .cmp(&a.trusted)
                .then_with(|| b.last_seen().map(|s| s.1).cmp(&a.last_seen().map(|s| s.1)))
                .then_with(|| a.point().cmp(&b.point()))
        });
        v.into_iter().map(PointInfo::point).collect()
    }

    // ----- list_known_points (§4.4) ----------------------------------------------------------

    /// Up to `size` points to advertise (Bootstrap answers, Nack lists): 3/5 "good" and 2/5
    /// random (`other = size·2/5`, `best = size − other`).
    ///
    /// Eligible: IP not banned; with `ignore_private`, `known_public` only. In private mode
    /// nothing is advertised. "Good" = connected points (Requested/Accepted/Running),
    /// those never seen first then the oldest `last_seen`, then Disconnected points, the most
    /// recently seen first; ties are broken at random (a transitive order, unlike octez's
    /// coin-flip comparator). If more than `size` are eligible, returns the `best` first
    /// plus `other` distinct random ones from the rest (octez draws with replacement and
    /// may return fewer). Cost: O(n) in the known points.
    pub fn list_known_points(
        &self,
        ignore_private: bool,
        size: usize,
        rng: &mut impl RngCore,
    ) -> Vec<Point> {
        if self.config.private_mode || size == 0 {
            return Vec::new();
        }
        let mut c: Vec<((u8, u128, u64), Point)> = self
            .known_points
            .values()
            .filter(|p| (!ignore_private || p.known_public) && !self.point_banned(&p.point()))
            .map(|p| {
                let seen = p.last_seen().map(|(_, t)| t.as_unix().as_nanos());
                let key = if p.state() == PointState::Disconnected {
                    (1, u128::MAX - seen.map_or(0, |s| s.saturating_add(1)), 0)
                } else {
                    (0, seen.map_or(0, |s| s.saturating_add(1)), 0)
                };
                (key, p.point())
            })
            .collect();
        for (k, _) in &mut c {
            k.2 = rng.next_u64();
        }
        let other = size * 2 / 5;
        let best = size - other;
        if c.len() <= size {
            c.sort_unstable();
            return c.into_iter().map(|(_, p)| p).collect();
        }
        c.select_nth_unstable(best);
        let (head, rest) = c.split_at_mut(best);
        head.sort_unstable();
        let mut out: Vec<Point> = head.iter().map(|(_, p)| *p).collect();
        let picks = rand::seq::index::sample(rng, rest.len(), other);
        out.extend(picks.into_iter().map(|i| rest[i].1));
        out
    }

    // ----- peers file (§4.6) ---------------------------------------------------------------

    /// The peers file records of the whole pool, sorted by peer id. Each point is saved
    /// under the peer of its `last_seen`, else its expected peer id; points with neither
    /// are not saved.
    pub fn peer_records(&self) -> Vec<PeerRecord<M>> {
        let mut by_peer: HashMap<PeerId, Vec<PointRecord>> = HashMap::new();
        for p in self.known_points.values() {
            let Some(owner) = p.last_seen().map(|s| s.0).or(p.expected_peer_id) else {
                continue;
            };
            if !self.known_peer_ids.contains_key(&owner) {
                continue;
            }
            by_peer.entry(owner).or_default().push(PointRecord {
                point: p.point(),
                trusted: p.trusted,
                known_public: p.known_public,
                expected_peer_id: p.expected_peer_id,
                last_failed_connection: p.last_failed_connection(),
                last_rejected_connection: p.last_rejected_connection(),
                last_established_connection: p.last_established_connection(),
                last_disconnection: p.last_disconnection(),
            });
        }
        let mut out: Vec<PeerRecord<M>> = self
            .known_peer_ids
            .values()
            .map(|p| {
                let mut points = by_peer.remove(&p.peer_id()).unwrap_or_default();
                points.sort_by_key(|r| r.point);
                PeerRecord {
                    peer_id: p.peer_id(),
                    created: p.created(),
                    trusted: p.trusted,
                    peer_metadata: p.metadata.clone(),
                    events: p.events().copied().collect(),
                    last_failed_connection: p.last_failed_connection(),
                    last_rejected_connection: p.last_rejected_connection(),
                    last_established_connection: p.last_established_connection(),
                    last_disconnection: p.last_disconnection(),
                    points,
                }
            })
            .collect();
        out.sort_by_key(|r| r.peer_id);
        out
    }

    /// Loads records read from a peers file: each unknown peer is added Disconnected with
    /// its history; its `last_seen` point (if it has a port) and its saved points are
    /// registered with their flags and history. Entries already known keep their live
    /// state. Then GC runs if a table is above its max. Returns the number of peers added.
    pub fn load_peer_records(
        &mut self,
        now: Time,
        records: impl IntoIterator<Item = PeerRecord<M>>,
    ) -> usize {
        let mut added = 0;
        for r in records {
            if self.known_peer_ids.contains_key(&r.peer_id) {
                continue;
            }
            let mut info = PeerInfo::new(r.peer_id, r.created, r.peer_metadata);
            info.trusted = r.trusted;
            info.restore(
                [
                    r.last_failed_connection,
                    r.last_rejected_connection,
                    r.last_established_connection,
                    r.last_disconnection,
                ],
                r.events,
            );
            let seen_point = info.last_seen().and_then(|(p, _)| p.point());
            self.known_peer_ids.insert(r.peer_id, info);
            added += 1;
            if let Some(p) = seen_point {
                self.register_new_point(now, p);
            }
            for pr in r.points {
                if self.is_my_point(&pr.point) {
                    continue;
                }
                let reg = self.register_point(now, pr.point, None, None);
                if let Some(info) = self.known_points.get_mut(&pr.point) {
                    info.trusted |= pr.trusted;
                    info.known_public |= pr.known_public;
                    if info.expected_peer_id.is_none() {
                        info.expected_peer_id = pr.expected_peer_id;
                    }
                    if reg.new || info.last_seen().is_none() && info.last_miss().is_none() {
                        info.restore_history(
                            pr.last_failed_connection,
                            pr.last_rejected_connection,
                            pr.last_established_connection,
                            pr.last_disconnection,
                        );
                    }
                }
            }
        }
        if self.known_peer_ids.len() > self.config.max_known_peer_ids.0 {
            self.gc_peer_ids();
        }
        if self.known_points.len() > self.config.max_known_points.0 {
            self.gc_points();
        }
        added
    }
}
