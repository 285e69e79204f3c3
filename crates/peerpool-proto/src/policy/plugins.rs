//! The places where later policies plug in beside the connection policy, each with the
//! behaviour octez has today as its default:
//!
//! - [`AdmissionHook`]: what to do when a peer passes every check but the node is full.
//!   Default [`RefuseWhenFull`]: Nack `Too_many_connections` with referral points. The
//!   connection manager can instead name a connection to evict for it (evict-to-admit).
//! - [`VictimPolicy`]: which connections to close when there are too many. Default
//!   [`RandomVictims`]: uniformly at random among those not both private and trusted
//!   (octez `P2p_maintenance`, BEHAVIOUR.md §3.3).
//! - [`DialPlanner`]: which points to dial, and when to look again. Default
//!   [`MinConnectionsPlanner`]: trusted points whenever they are not connected, others
//!   while fewer than `min_connections` run. The maintenance worker replaces it.

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
    /// Running connections.
    pub active: usize,
    /// Outgoing attempts in flight.
    pub dialing: usize,
}

/// What a [`DialPlanner`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialPlan {
    /// Points to dial now, in order. The policy skips any it cannot dial (state changed).
    pub dial: Vec<Point>,
    /// When to plan again even if nothing happens (a backoff ends); `None`: only on events.
    pub next_check: Option<Time>,
}

/// Decides whom to dial.
pub trait DialPlanner<M>: fmt::Debug + Send {
    /// The plan at `now`.
    fn plan(&mut self, now: Time, ctx: &PlanContext<'_, M>) -> DialPlan;
}

/// Trusted points whenever they are not connected; other candidates (known points past
/// their backoff, not banned, as [`Pool::candidates`] orders them) while fewer than
/// `min_connections` connections run or are being dialled.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinConnectionsPlanner;

impl<M: PeerMeta> DialPlanner<M> for MinConnectionsPlanner {
    fn plan(&mut self, now: Time, ctx: &PlanContext<'_, M>) -> DialPlan {
        let pool = ctx.pool;
        let mut wanted = pool
            .config()
            .min_connections
            .saturating_sub(ctx.active + ctx.dialing);
        let mut dial = Vec::new();
        for point in pool.candidates(now) {
            let trusted = pool.point(&point).is_some_and(|p| p.trusted);
            if trusted {
                dial.push(point);
            } else if wanted > 0 {
                wanted -= 1;
                dial.push(point);
            } else {
                break;
            }
        }
        // Wake up when the first backoff we care about ends: a trusted point's always, any
        // other point's while we still want more.
        let still_short = wanted > 0;
        let next_check = pool
            .points()
            .filter(|p| p.state() == PointState::Disconnected && (p.trusted || still_short))
            .filter(|p| p.cannot_reconnect_yet(now) && !pool.point_banned(&p.point()))
            .filter_map(|p| p.greylisted_until())
            .min()
            // `cannot_reconnect_yet` holds while `now <= end`: look just after the end.
            .map(|t| t.saturating_add(std::time::Duration::from_nanos(1)));
        DialPlan { dial, next_check }
    }
}
