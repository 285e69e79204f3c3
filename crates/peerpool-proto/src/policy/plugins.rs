//! The places where later policies plug in beside the connection policy, each with the
//! behaviour octez has today as its default:
//!
//! - [`AdmissionHook`]: what to do when a peer passes every check but the node is full.
//!   Default [`RefuseWhenFull`]: Nack `Too_many_connections` with referral points. The
//!   connection manager can instead name a connection to evict for it (evict-to-admit).
//! - [`VictimPolicy`]: which connections to close when there are too many. Default
//!   [`RandomVictims`]: uniformly at random among those not both private and trusted
//!   (octez `P2p_maintenance`, BEHAVIOUR.md §3.3).
//! - [`DialPlanner`]: which known points the maintenance dials, best first. Default
//!   [`OctezCandidates`]: never failed first, then the oldest failure (BEHAVIOUR.md §3.3).

use super::types::{ConnectionId, ConnectionView};
use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{PeerMeta, PointState, Pool, Time};
use rand::seq::SliceRandom;
use rand::RngCore;
use std::fmt;
use std::net::SocketAddr;

/// A peer that passed every admission check but found the node full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The peer.
    pub peer_id: PeerId,
    /// Its socket address.
    pub remote_addr: SocketAddr,
    /// Its listening point, if known.
    pub point: Option<Point>,
    /// Who dialled.
    pub direction: Direction,
}

/// Decides what happens when the node is full (see the module doc).
pub trait AdmissionHook: fmt::Debug + Send {
    /// The connection to close so that `candidate` can take its slot, or `None` to refuse
    /// the candidate (Nack `Too_many_connections`). `connections` are the running ones.
    fn when_full(
        &mut self,
        now: Time,
        candidate: &Candidate,
        connections: &[ConnectionView],
    ) -> Option<ConnectionId>;
}

/// octez's rule: a full node refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseWhenFull;

impl AdmissionHook for RefuseWhenFull {
    fn when_full(&mut self, _: Time, _: &Candidate, _: &[ConnectionView]) -> Option<ConnectionId> {
        None
    }
}

/// Chooses which connections to close when there are too many.
pub trait VictimPolicy: fmt::Debug + Send {
    /// Up to `count` connections to close among `connections` (the running ones), in
    /// order. `rng` is the policy's seeded RNG.
    fn choose(
        &mut self,
        now: Time,
        connections: &[ConnectionView],
        count: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<ConnectionId>;
}

/// octez's rule: uniformly at random among the connections whose peer is not both
/// private and trusted.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomVictims;

impl VictimPolicy for RandomVictims {
    fn choose(
        &mut self,
        _: Time,
        connections: &[ConnectionView],
        count: usize,
        rng: &mut dyn RngCore,
    ) -> Vec<ConnectionId> {
        let mut pool: Vec<ConnectionId> = connections
            .iter()
            .filter(|c| !(c.private && c.trusted))
            .map(|c| c.id)
            .collect();
        pool.shuffle(rng);
        pool.truncate(count);
        pool
    }
}

/// What a [`DialPlanner`] sees.
#[derive(Debug)]
pub struct PlanContext<'a, M> {
    /// The pool (points, peers, ACL, backoff).
    pub pool: &'a Pool<M>,
    /// When the maintenance round started: a point that failed since is not retried in
    /// this round.
    pub round_start: Time,
    /// How many points are wanted, at most.
    pub wanted: usize,
    /// The running connections.
    pub connections: &'a [ConnectionView],
}

/// Chooses whom the maintenance dials.
pub trait DialPlanner<M>: fmt::Debug + Send {
    /// Up to `ctx.wanted` points to dial now, best first. The policy skips any it cannot
    /// dial after all.
    fn candidates(&mut self, now: Time, ctx: &PlanContext<'_, M>) -> Vec<Point>;
}

/// [`OctezCandidates`]' choice, but points from netgroups the node has no connection in
/// come first (issue 9 §5: outbound dials toward new networks, so an attacker who owns a
/// few netgroups cannot take every outgoing slot). The default with the connection
/// manager.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiverseCandidates;

impl<M: PeerMeta> DialPlanner<M> for DiverseCandidates {
    fn candidates(&mut self, now: Time, ctx: &PlanContext<'_, M>) -> Vec<Point> {
        let connected: std::collections::BTreeSet<crate::netgroup::Netgroup> = ctx
            .connections
            .iter()
            .map(|c| crate::netgroup::Netgroup::of(c.remote_addr.ip()))
            .collect();
        let all = PlanContext {
            wanted: usize::MAX,
            ..*ctx
        };
        let mut v = OctezCandidates.candidates(now, &all);
        // Stable: within each half, octez's order.
        v.sort_by_key(|p| connected.contains(&crate::netgroup::Netgroup::of(p.ip())));
        v.truncate(ctx.wanted);
        v
    }
}

/// octez's candidates (BEHAVIOUR.md §3.3 `connectable`): known points that are
/// Disconnected, past their backoff, not failed in this round, not banned (nor their
/// expected peer), not ours, trusted in private mode; those that never failed first, then
/// the oldest failure. Ties by point, so the choice is deterministic.
#[derive(Debug, Clone, Copy, Default)]
pub struct OctezCandidates;

impl<M: PeerMeta> DialPlanner<M> for OctezCandidates {
    fn candidates(&mut self, now: Time, ctx: &PlanContext<'_, M>) -> Vec<Point> {
        let pool = ctx.pool;
        let private = pool.config().private_mode;
        let mut v: Vec<(Option<Time>, Point)> = pool
            .points()
            .filter(|p| {
                p.state() == PointState::Disconnected
                    && !p.cannot_reconnect_yet(now)
                    && p.last_miss().is_none_or(|t| t < ctx.round_start)
                    && !pool.point_banned(&p.point())
                    && !p.expected_peer_id.is_some_and(|e| pool.peer_banned(&e))
                    && (!private || p.trusted)
                    && !pool.is_my_point(&p.point())
            })
            .map(|p| (p.last_miss(), p.point()))
            .collect();
        // `None` (never missed) sorts first, then the oldest miss.
        v.sort();
        v.truncate(ctx.wanted);
        v.into_iter().map(|(_, p)| p).collect()
    }
}
