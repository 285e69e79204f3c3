//! The [`Pool`] type itself: its fields, [`PeerMeta`] (what the pool needs of peer
//! metadata), the RNG-keyed hashing of its tables ([`SeededState`]), construction, and the
//! event and trigger outboxes.

use super::acl::Acl;
use super::config::{PoolConfig, PoolError};
use super::events::{P2pEvent, Trigger};
use super::peer_state::PeerInfo;
use super::point_state::PointInfo;
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;
use rand::RngCore;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};

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

/// The pool's pure state: tables, ACL, outboxes. `M` is the application's peer metadata.
#[derive(Debug)]
pub struct Pool<M> {
    pub(super) config: PoolConfig,
    pub(super) known_points: Map<Point, PointInfo>,
    pub(super) connected_points: Set<Point>,
    pub(super) known_peer_ids: Map<PeerId, PeerInfo<M>>,
    pub(super) connected_peer_ids: Set<PeerId>,
    pub(super) my_id_points: VecDeque<Point>,
    pub(super) acl: Acl,
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

    pub(super) fn raise(&mut self, t: Trigger) {
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
}
