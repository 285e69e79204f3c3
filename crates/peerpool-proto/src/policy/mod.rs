//! The connection policy, sans-IO (BEHAVIOUR.md §1.2-1.4, §2, §5, §7.3): every decision
//! about connections a node makes, as a function of its state, its inputs and `now`.
//!
//! [`ConnectionPolicy`] owns the [`Pool`] and the table of connection attempts and
//! connections. It decides which attempts may start (the cheap checks before an incoming
//! handshake, the dial checks), admits or refuses authenticated peers (the pool's checks,
//! version selection, the tie-break between simultaneous dials, the slot check), moves
//! points and peers through their state machines, applies the ACL's reactions to every
//! failure, answers Bootstrap and registers Advertise (with per-peer rates), plans dials,
//! and schedules the peers-file saves. The runtime performs I/O and reports results; it
//! holds no policy.
//!
//! # Contract (quinn-proto style, as the handshake)
//!
//! - Inputs are `handle_*(now, …)` and the operator methods ([`ConnectionPolicy::connect`],
//!   [`ConnectionPolicy::ban_peer`], …). Decisions the caller needs at once are returned
//!   ([`Admission`], the id of a new attempt, or a [`Refusal`]).
//! - Outputs are [`Action`]s drained with [`ConnectionPolicy::poll_action`] until `None`,
//!   in order: dial, close, send a control message, set a weight, save the peers file,
//!   tell subscribers.
//! - [`ConnectionPolicy::poll_timeout`] is the next deadline; call
//!   [`ConnectionPolicy::handle_timeout`] then. There is no fixed tick.
//! - Randomness (sampling of points, victims) comes from an RNG seeded by the caller, and
//!   the pool's tables are keyed from it: the same inputs give the same outputs.
//!
//! # Layout
//!
//! - [`config`]: [`PolicyConfig`], checked once.
//! - [`types`]: ids, inputs, decisions, [`Action`], [`PolicyEvent`].
//! - [`plugins`]: where the connection manager plugs in: the [`AdmissionHook`]
//!   (evict-to-admit), the [`VictimPolicy`] ("too many"), the [`DialPlanner`] (whom the
//!   maintenance dials), each with octez's behaviour as its default.
//! - `attempts`: starting attempts (with the cheap checks of incoming ones), their
//!   outcomes, the pool transitions.
//! - `admission`: the accept/reject decision, the tie-break, the slot and incoming caps.
//! - `maintenance`: keeping the connection count between its bounds (BEHAVIOUR.md §3).
//! - `swap`: rewiring the graph (§7.4).
//! - `control`: per-peer rate limits (the `governor` crate), Bootstrap/Advertise, and the
//!   routing of swap messages.
//! - `operator`: bans, trust, greylisting, disconnections, shutdown.
//! - `audit`: the invariants every state keeps ([`ConnectionPolicy::audit`]).

pub mod config;
pub mod plugins;
pub mod types;

mod admission;
mod attempts;
mod audit;
mod control;
mod maintenance;
mod operator;
mod swap;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_connmgr;
#[cfg(test)]
mod tests_maintenance;
#[cfg(test)]
mod tests_operator;
#[cfg(test)]
mod tests_swap;

pub use attempts::weight_of_score;
pub use audit::Violation;
pub use config::{
    default_expected_connections, Bounds, MaintenanceConfig, PolicyConfig, PolicyConfigError, Rate,
    Triggers, ADVERTISE_POINTS, DEFAULT_EXPECTED_CONNECTIONS, MAX_RATE_WINDOW,
};
pub use plugins::{
    AdmissionHook, Candidate, DialPlanner, DiverseCandidates, OctezCandidates, PlanContext,
    RandomVictims, RefuseWhenFull, VictimPolicy,
};
pub use types::{
    Action, Admission, AttemptFailure, AuthenticatedPeer, ClosedBy, ConnectionId, ConnectionView,
    ControlKind, ControlMessage, DisconnectReason, PolicyEvent, Refusal,
};

use crate::connection_message::SupportedVersions;
use crate::connmgr::ConnManager;
use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{PeerMeta, PeerRecord, Pool, Time, Trigger};
use control::{ControlLimits, InputClock};
use maintenance::Maintenance;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use swap::Swaps;

/// A connection attempt in flight.
#[derive(Debug, Clone)]
struct Attempt {
    direction: Direction,
    remote_addr: SocketAddr,
    /// Outgoing: the point dialled; incoming: the announced listening point, once known.
    point: Option<Point>,
    /// Set when admitted.
    peer_id: Option<PeerId>,
    /// The peer id the caller expects (`addr:port#peer_id`).
    expected: Option<PeerId>,
    /// The remote said it is private (known once authenticated).
    private: bool,
    /// `handle_authenticated` has decided on it: a second call is refused.
    decided: bool,
}

/// An established connection.
#[derive(Debug)]
struct Connection {
    view: ConnectionView,
    limits: ControlLimits,
}

/// The connection policy of one node (see the module doc). `M` is the peer metadata.
pub struct ConnectionPolicy<M> {
    config: PolicyConfig,
    versions: SupportedVersions,
    pool: Pool<M>,
    rng: StdRng,
    clock: InputClock,
    local_peer_id: PeerId,
    /// Automatic dialing runs (after `activate`).
    active: bool,
    /// Shutting down: no new attempt starts.
    stopping: bool,
    next_id: u64,
    attempts: BTreeMap<ConnectionId, Attempt>,
    connections: BTreeMap<ConnectionId, Connection>,
    by_peer: BTreeMap<PeerId, ConnectionId>,
    /// Connections we asked the runtime to close, not yet reported closed.
    closing: BTreeSet<ConnectionId>,
    /// The admitted attempt that owns each peer's Accepted state.
    pending: BTreeMap<PeerId, ConnectionId>,
    /// The attempt that owns each point's Requested/Accepted state.
    point_owner: BTreeMap<Point, ConnectionId>,
    incoming_in_flight: usize,
    dialing: usize,
    /// Incoming connections established and not closing: what `incoming_count` would
    /// otherwise count over every connection at each admission (checked by `audit`).
    incoming_open: usize,
    actions: VecDeque<Action<M>>,
    next_save: Option<Time>,
    maintenance: Maintenance,
    swaps: Swaps,
    /// Connections (running and admitted) above which a peer is refused:
    /// `max_connections`. Between the maintenance's `max_threshold` and this, connections
    /// are admitted and the maintenance trims back to `max_target` (the connection
    /// manager's high and low watermarks).
    slot_limit: usize,
    /// Established incoming connections at most.
    max_incoming: usize,
    admission_hook: Box<dyn AdmissionHook>,
    victims: Box<dyn VictimPolicy>,
    planner: Box<dyn DialPlanner<M>>,
    /// The connection manager: when active, it chooses every trim and eviction (the
    /// victim policy and admission hook above serve the no-op manager).
    manager: ConnManager,
    /// Dials handed out towards an address banned or greylisted at that moment (an
    /// invariant: stays 0; see [`ConnectionPolicy::audit`]).
    banned_dials: u64,
}

impl<M> std::fmt::Debug for ConnectionPolicy<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPolicy")
            .field("local_peer_id", &self.local_peer_id)
            .field("active", &self.active)
            .field("attempts", &self.attempts.len())
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    /// A policy for the node `local_peer_id`, which speaks `versions` (a peer with another
    /// chain or no common version is answered with a Nack, BEHAVIOUR.md §7.2), around
    /// `pool`, at `now`. `seed` seeds the RNG
    /// (point sampling, victims). Starts inactive: no automatic dialing until
    /// [`ConnectionPolicy::activate`]; explicit connects and incoming connections are
    /// served at once.
    ///
    /// Errors: [`PolicyConfigError`] from [`PolicyConfig::validate`].
    pub fn new(
        now: Time,
        config: PolicyConfig,
        versions: SupportedVersions,
        pool: Pool<M>,
        local_peer_id: PeerId,
        seed: u64,
    ) -> Result<Self, PolicyConfigError> {
        config.validate()?;
        let (min, max) = (pool.config().min_connections, pool.config().max_connections);
        let expected = config
            .maintenance
            .expected_connections
            .unwrap_or_else(|| default_expected_connections(min, max));
        let bounds = Bounds::new(min, expected, max)?;
        let limits = config.conn_manager.limits(&bounds, max).map_err(|_| {
            PolicyConfigError::new(
                "conn_manager.low_water / high_water / protection_budget",
                "needs 1 <= low <= high <= max_connections and protection_budget <= low",
            )
        })?;
        let slot_limit = max;
        let max_incoming = config
            .max_incoming_connections
            .unwrap_or(max.saturating_sub(min))
            .max(1);
        let clock = InputClock::default();
        clock.set(now);
        let next_save = config.peers_file_interval.map(|d| now.saturating_add(d));
        let mut rng = StdRng::seed_from_u64(seed);
        let manager = ConnManager::new(limits, rand::RngCore::next_u64(&mut rng));
        Ok(ConnectionPolicy {
            config,
            versions,
            pool,
            rng,
            clock,
            local_peer_id,
            active: false,
            stopping: false,
            next_id: 1,
            attempts: BTreeMap::new(),
            connections: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            closing: BTreeSet::new(),
            pending: BTreeMap::new(),
            point_owner: BTreeMap::new(),
            incoming_in_flight: 0,
            incoming_open: 0,
            dialing: 0,
            actions: VecDeque::new(),
            next_save,
            maintenance: Maintenance::new(bounds),
            swaps: Swaps::default(),
            slot_limit,
            max_incoming,
            admission_hook: Box::new(RefuseWhenFull),
            victims: Box::new(RandomVictims),
            planner: if limits.enabled {
                Box::new(DiverseCandidates)
            } else {
                Box::new(OctezCandidates)
            },
            manager,
            banned_dials: 0,
        })
    }

    /// The connection manager, read-only.
    pub fn conn_manager(&self) -> &ConnManager {
        &self.manager
    }

    /// Runs `f` on the connection manager (tags, protection, decaying tags), then acts on
    /// what changed like any other input (a trim if the count is above high).
    pub fn with_conn_manager<T>(
        &mut self,
        now: Time,
        f: impl FnOnce(&mut ConnManager, Time) -> T,
    ) -> T {
        self.clock.set(now);
        let out = f(&mut self.manager, now);
        self.finish(now);
        out
    }

    /// Closes connections down to the low watermark now (go-libp2p `TrimOpenConns`),
    /// chosen by the connection manager; returns how many. Nothing with the no-op
    /// manager.
    pub fn trim_open_conns(&mut self, now: Time) -> usize {
        self.clock.set(now);
        let victims = self.manager.trim(now, self.live());
        let n = victims.len();
        for v in victims {
            self.close(v.id, DisconnectReason::TooManyConnections);
        }
        self.finish(now);
        n
    }

    /// Up to `count` victims for a "too many" step: the manager's ranking when it is
    /// active, else the victim policy.
    fn choose_victims(&mut self, now: Time, count: usize) -> Vec<ConnectionId> {
        if self.manager.is_active() {
            // The manager explains each victim in its own events.
            let victims = self.manager.victims(now, count);
            victims.into_iter().map(|v| v.id).collect()
        } else {
            let views = self.live_views();
            self.victims.choose(now, &views, count, &mut self.rng)
        }
    }

    /// Tells the manager which connections are trusted now (after a trust change).
    fn sync_trust(&mut self) {
        for v in self.live_views() {
            self.manager.set_trusted(&v.peer_id, v.trusted);
        }
    }

    /// Replaces the admission hook (what a full node does with one more good peer).
    pub fn set_admission_hook(&mut self, hook: Box<dyn AdmissionHook>) {
        self.admission_hook = hook;
    }

    /// Replaces the victim policy ("too many connections").
    pub fn set_victim_policy(&mut self, victims: Box<dyn VictimPolicy>) {
        self.victims = victims;
    }

    /// Replaces the dial planner (whom the maintenance dials).
    pub fn set_dial_planner(&mut self, planner: Box<dyn DialPlanner<M>>) {
        self.planner = planner;
    }

    /// Connections (running and admitted) above which a peer is refused.
    pub fn slot_limit(&self) -> usize {
        self.slot_limit
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The pool, read-only (queries: points, peers, ACL, events history). Changes go
    /// through the policy's methods, which keep connections consistent with the pool.
    pub fn pool(&self) -> &Pool<M> {
        &self.pool
    }

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Whether automatic dialing runs.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Running connections, by id.
    pub fn connections(&self) -> impl Iterator<Item = &ConnectionView> + '_ {
        self.connections.values().map(|c| &c.view)
    }

    /// The running connection with `peer_id`, if any.
    pub fn connection_of(&self, peer_id: &PeerId) -> Option<&ConnectionView> {
        let id = self.by_peer.get(peer_id)?;
        self.connections.get(id).map(|c| &c.view)
    }

    /// Running connections (closing ones included until reported closed).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Outgoing attempts in flight.
    pub fn dialing(&self) -> usize {
        self.dialing
    }

    /// Incoming handshakes in flight.
    pub fn incoming_in_flight(&self) -> usize {
        self.incoming_in_flight
    }

    /// Attempts in flight, both directions.
    pub fn attempts_in_flight(&self) -> usize {
        self.attempts.len()
    }

    /// The next action to carry out, oldest first; `None` when drained.
    pub fn poll_action(&mut self) -> Option<Action<M>> {
        let action = self.actions.pop_front();
        if let Some(Action::Dial { point, .. }) = &action {
            if self.pool.point_banned(point) {
                self.banned_dials += 1;
            }
        }
        action
    }

    /// When [`ConnectionPolicy::handle_timeout`] must be called next: the IP-greylist
    /// countdown, the maintenance's timers (idle, the end of a wait for points), the
    /// periodic peers-file save.
    pub fn poll_timeout(&self) -> Option<Time> {
        let maintenance = if self.active && !self.stopping {
            self.maintenance.deadline()
        } else {
            None
        };
        [self.pool.poll_timeout(), maintenance, self.next_save]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.clock.set(now);
        if self.pool.poll_timeout().is_some_and(|t| t <= now) {
            self.pool.gc_greylist(now);
        }
        self.maintenance_timeouts(now);
        if let Some(t) = self.next_save.filter(|t| *t <= now) {
            let interval = self.config.peers_file_interval.unwrap_or_default();
            // The next save is one interval after this one was due, or after now if the
            // runtime was late by more than an interval.
            let next = t.saturating_add(interval);
            self.next_save = Some(if next > now {
                next
            } else {
                now.saturating_add(interval)
            });
            self.actions
                .push_back(Action::SavePeers(self.pool.peer_records()));
        }
        self.finish(now);
    }

    /// Starts automatic dialing (octez `activate`: the maintenance's first run).
    pub fn activate(&mut self, now: Time) {
        self.clock.set(now);
        if !self.stopping {
            self.active = true;
            self.maintenance.wake = true;
        }
        self.finish(now);
    }

    /// Records `point` as one of our own addresses (it is never dialled, and a peer that
    /// announces it is not registered).
    pub fn add_my_point(&mut self, point: Point) {
        self.pool.add_to_id_points(point);
    }

    /// Adds records read from the peers file; returns the number of peers added.
    pub fn load_peer_records(
        &mut self,
        now: Time,
        records: impl IntoIterator<Item = PeerRecord<M>>,
    ) -> usize {
        self.clock.set(now);
        let n = self.pool.load_peer_records(now, records);
        self.finish(now);
        n
    }

    /// The records to save in the peers file now.
    pub fn peer_records(&self) -> Vec<PeerRecord<M>> {
        self.pool.peer_records()
    }

    fn new_id(&mut self) -> ConnectionId {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Views of the running connections that are not being closed, with trust refreshed.
    fn live_views(&self) -> Vec<ConnectionView> {
        self.connections
            .values()
            .filter(|c| !self.closing.contains(&c.view.id))
            .map(|c| {
                let mut v = c.view.clone();
                v.trusted = v
                    .point
                    .is_some_and(|p| self.pool.point(&p).is_some_and(|i| i.trusted))
                    || self.pool.peer(&v.peer_id).is_some_and(|p| p.trusted);
                v
            })
            .collect()
    }

    fn close(&mut self, id: ConnectionId, reason: DisconnectReason) {
        if self.connections.contains_key(&id) && self.closing.insert(id) {
            if self.connections[&id].view.direction == Direction::Incoming {
                self.incoming_open -= 1;
            }
            // A closing connection no longer counts for the manager.
            self.manager.connection_closed(self.clock.time(), id);
            self.actions.push_back(Action::Close { id, reason });
        }
    }

    /// Ends every input: acts on the pool's triggers, trims, runs the maintenance when
    /// woken, and moves the pool's events to the action queue (in the order they happened).
    fn finish(&mut self, now: Time) {
        let triggers = self.config.maintenance.triggers;
        while let Some(trigger) = self.pool.poll_trigger() {
            match trigger {
                Trigger::TooFewConnections if triggers.too_few => self.maintenance.wake = true,
                Trigger::TooManyConnections if triggers.too_many => self.maintenance.wake = true,
                Trigger::NewPoint | Trigger::NewPeer => self.new_candidate(),
                _ => {}
            }
        }
        // A node that fell below min_threshold since its last cycle acts now, not at the
        // next idle tick (octez waits for it unless below min_connections).
        let mc = &self.config.maintenance;
        if triggers.too_few
            && mc.wake_below_min_threshold
            && matches!(self.maintenance.phase, maintenance::Phase::Idle)
            && self.live() < self.maintenance.bounds.min_threshold
        {
            self.maintenance.wake = true;
        }
        self.trim(now);
        let live = self.live();
        if self.manager.excess(live) > 0 {
            for v in self.manager.trim(now, live) {
                self.close(v.id, DisconnectReason::TooManyConnections);
            }
        }
        if self.active && !self.stopping && self.maintenance.wake && self.config.maintenance.enabled
        {
            self.run_maintenance(now);
        }
        self.maintenance.wake = false;
        while let Some(event) = self.pool.poll_event() {
            self.actions
                .push_back(Action::Event(PolicyEvent::Pool(event)));
        }
        while let Some(event) = self.manager.poll_event() {
            self.actions
                .push_back(Action::Event(PolicyEvent::ConnManager(event)));
        }
    }

    /// Closes connections above `max_connections`, chosen by the victim policy.
    fn trim(&mut self, now: Time) {
        let live = self.connections.len() - self.closing.len();
        let max = self.pool.config().max_connections;
        if live <= max {
            return;
        }
        let victims = self.choose_victims(now, live - max);
        for id in victims.into_iter().take(live - max) {
            self.close(id, DisconnectReason::TooManyConnections);
        }
    }
}
