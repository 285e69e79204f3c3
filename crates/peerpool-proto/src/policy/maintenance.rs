//! The maintenance (octez `P2p_maintenance`, BEHAVIOUR.md §3), as part of the policy: keep
//! the connection count between the bounds.
//!
//! A cycle runs on activation, every `idle_time`, on an explicit `maintain`, and on the
//! too-few / too-many triggers (each can be turned off). Below `min_threshold` it opens a
//! round: it dials candidates chosen by the [`DialPlanner`](super::DialPlanner) until
//! `min_target` connections run, with at most `max_dials_in_flight` dials at once (octez
//! dials every candidate at once); a point that fails is not retried in the same round.
//! When no candidate is left it asks for more: Bootstrap to every public peer, a wake-up of
//! local discovery, then it waits for a new point or peer, or a delay that doubles after
//! each round that found nothing to dial, up to a cap (octez retries every 5 s forever). Above `max_threshold`
//! it closes connections down to `max_target`, chosen by the
//! [`VictimPolicy`](super::VictimPolicy). In bounds, it proposes one swap (§7.4). In
//! private mode only trusted points are dialled, and nothing is asked of peers.
//!
//! Trusted points (octez `--peer`, bootstrap peers) are candidates like any other, as in
//! octez; they are never forgotten, and in private mode they are the only candidates.

use super::config::Bounds;
use super::plugins::PlanContext;
use super::{Action, ConnectionId, ConnectionPolicy, ControlMessage, DisconnectReason};
use crate::pool::{P2pEvent, PeerMeta, Time};
use std::collections::BTreeSet;

/// Where the maintenance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// In bounds (or not started).
    Idle,
    /// Too few: dialling.
    Contacting(Round),
    /// Too few and nothing to dial: waiting for points until `until`.
    Asking { until: Time },
}

/// One round of dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Round {
    pub start: Time,
    pub in_flight: BTreeSet<ConnectionId>,
    pub established: usize,
    pub dialled: usize,
}

/// The maintenance's state.
#[derive(Debug)]
pub(super) struct Maintenance {
    pub bounds: Bounds,
    pub phase: Phase,
    /// Run a cycle at the end of the current input.
    pub wake: bool,
    pub next_idle: Option<Time>,
    /// Rounds in a row that found nothing to dial.
    pub empty_rounds: u32,
    /// `maintain` calls waiting for the end of a cycle.
    pub waiters: usize,
    /// Dials made by the maintenance and not ended, any round.
    pub dials: usize,
    /// A new point or peer arrived while waiting for points (ends the wait).
    pub points_arrived: bool,
}

impl Maintenance {
    pub(super) fn new(bounds: Bounds) -> Self {
        Maintenance {
            bounds,
            phase: Phase::Idle,
            wake: false,
            next_idle: None,
            empty_rounds: 0,
            waiters: 0,
            dials: 0,
            points_arrived: false,
        }
    }

    pub(super) fn deadline(&self) -> Option<Time> {
        let asking = match self.phase {
            Phase::Asking { until } => Some(until),
            _ => None,
        };
        [asking, self.next_idle].into_iter().flatten().min()
    }
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    /// Asks for a maintenance cycle now (octez `P2p.maintain`); the policy emits
    /// [`Action::Maintained`] once the cycle has run (in bounds, or nothing more to dial).
    pub fn maintain(&mut self, now: Time) {
        self.clock.set(now);
        if self.config.maintenance.enabled && !self.stopping {
            self.maintenance.waiters += 1;
            self.maintenance.wake = true;
        } else {
            // Nothing will run: say so at once rather than leave the caller waiting.
            self.actions.push_back(Action::Maintained);
        }
        self.finish(now);
    }

    /// The maintenance bounds in use.
    pub fn bounds(&self) -> Bounds {
        self.maintenance.bounds
    }

    /// Connections that are running and not being closed.
    pub(super) fn live(&self) -> usize {
        self.connections.len() - self.closing.len()
    }

    /// Deadlines of the maintenance that are due: the idle timer, the end of a wait for
    /// points.
    pub(super) fn maintenance_timeouts(&mut self, now: Time) {
        let m = &mut self.maintenance;
        if m.next_idle.is_some_and(|t| t <= now) {
            m.next_idle = None;
            m.wake = true;
        }
        if matches!(m.phase, Phase::Asking { until } if until <= now) {
            m.wake = true;
        }
    }

    /// An attempt of the maintenance ended.
    pub(super) fn maintenance_attempt_ended(&mut self, id: ConnectionId, established: bool) {
        let m = &mut self.maintenance;
        if let Phase::Contacting(round) = &mut m.phase {
            if round.in_flight.remove(&id) {
                m.dials = m.dials.saturating_sub(1);
                if established {
                    round.established += 1;
                    m.empty_rounds = 0;
                }
                m.wake = true;
            }
        }
    }

    /// One maintenance cycle (see the module doc).
    pub(super) fn run_maintenance(&mut self, now: Time) {
        self.maintenance.wake = false;
        let cfg = self.config.maintenance.clone();
        let b = self.maintenance.bounds;
        let n = self.live();
        let contacting = matches!(self.maintenance.phase, Phase::Contacting(_));
        if n < b.min_threshold || (contacting && n < b.min_target) {
            if let Phase::Asking { until } = self.maintenance.phase {
                // Still waiting for points, unless woken by one or the wait is over.
                if until > now && !self.maintenance.points_arrived {
                    return;
                }
            }
            if !contacting {
                self.pool.push_event(P2pEvent::TooFewConnections);
                self.pool.push_event(P2pEvent::MaintenanceStarted);
                self.maintenance.phase = Phase::Contacting(Round {
                    start: now,
                    in_flight: BTreeSet::new(),
                    established: 0,
                    dialled: 0,
                });
            }
            self.fill_round(now, n);
            let idle =
                matches!(&self.maintenance.phase, Phase::Contacting(r) if r.in_flight.is_empty());
            if idle {
                self.ask_for_more(now);
                self.maintained();
            }
            return;
        }
        if contacting || matches!(self.maintenance.phase, Phase::Asking { .. }) {
            self.pool.push_event(P2pEvent::MaintenanceEnded);
        }
        self.maintenance.phase = Phase::Idle;
        self.maintenance.empty_rounds = 0;
        if n > b.max_threshold {
            self.pool.push_event(P2pEvent::TooManyConnections);
            let excess = n - b.max_target;
            let victims = self.choose_victims(now, excess);
            for id in victims.into_iter().take(excess) {
                self.close(id, DisconnectReason::TooManyConnections);
            }
        }
        self.maintained();
        self.propose_swap(now);
        if cfg.triggers.idle {
            self.maintenance.next_idle = Some(now.saturating_add(cfg.idle_time));
        }
    }

    fn maintained(&mut self) {
        if self.maintenance.waiters > 0 {
            self.maintenance.waiters = 0;
            self.actions.push_back(Action::Maintained);
        }
    }

    /// Dials candidates within the round's budget and the cap on dials in flight.
    fn fill_round(&mut self, now: Time, n: usize) {
        let b = self.maintenance.bounds;
        let cap = self
            .config
            .maintenance
            .max_dials_in_flight
            .unwrap_or(usize::MAX);
        let Phase::Contacting(round) = &self.maintenance.phase else {
            return;
        };
        let in_flight = round.in_flight.len();
        // Up to max_target overall (octez's max_to_contact), min_target is the goal.
        let room_total = b.max_target.saturating_sub(n + in_flight);
        let wanted = cap.saturating_sub(in_flight).min(room_total);
        if wanted == 0 {
            return;
        }
        let start = round.start;
        let views = self.live_views();
        let ctx = PlanContext {
            pool: &self.pool,
            round_start: start,
            wanted,
            connections: &views,
        };
        let candidates = self.planner.candidates(now, &ctx);
        for point in candidates.into_iter().take(wanted) {
            if let Ok(id) = self.start_dial(now, point, None) {
                self.maintenance.dials += 1;
                if let Phase::Contacting(round) = &mut self.maintenance.phase {
                    round.in_flight.insert(id);
                    round.dialled += 1;
                }
            }
        }
    }

    /// Nothing left to dial: ask peers and discovery for points, then wait. The wait
    /// doubles after each round that found nothing at all to dial (up to the cap); after a
    /// round whose dials failed it is the base wait (the failed points have their own
    /// backoff).
    fn ask_for_more(&mut self, now: Time) {
        let dialled = matches!(&self.maintenance.phase, Phase::Contacting(r) if r.dialled > 0);
        if dialled {
            self.maintenance.empty_rounds = 0;
        }
        let cfg = &self.config.maintenance;
        let wait = cfg
            .looking_for_peers
            .saturating_mul(1u32 << self.maintenance.empty_rounds.min(16))
            .min(cfg.looking_for_peers_max);
        if !dialled {
            self.maintenance.empty_rounds = self.maintenance.empty_rounds.saturating_add(1);
        }
        if !self.pool.config().private_mode && self.config.peer_discovery {
            let public: Vec<_> = self
                .connections
                .values()
                .filter(|c| !c.view.private && !self.closing.contains(&c.view.id))
                .map(|c| (c.view.id, c.view.peer_id))
                .collect();
            for (id, peer_id) in public {
                self.actions.push_back(Action::Send {
                    id,
                    message: ControlMessage::Bootstrap,
                });
                self.pool
                    .push_event(P2pEvent::BootstrapSent { source: peer_id });
            }
            self.actions.push_back(Action::WakeDiscovery);
        }
        // Points waiting out their backoff become candidates when it ends: look again
        // then if that comes first (octez only looks again after its 5 s).
        let backoff_end = if self.config.maintenance.wake_at_backoff_end {
            self.earliest_backoff_end(now)
        } else {
            None
        };
        let until = now.saturating_add(wait);
        self.maintenance.points_arrived = false;
        self.maintenance.phase = Phase::Asking {
            until: backoff_end.map_or(until, |t| t.min(until)),
        };
    }

    /// The first moment a known point that is only waiting out its backoff can be dialled.
    fn earliest_backoff_end(&self, now: Time) -> Option<Time> {
        let private = self.pool.config().private_mode;
        self.pool
            .points()
            .filter(|p| p.state() == crate::pool::PointState::Disconnected)
            .filter(|p| p.cannot_reconnect_yet(now))
            .filter(|p| (!private || p.trusted) && !self.pool.point_banned(&p.point()))
            .filter(|p| !self.pool.is_my_point(&p.point()))
            .filter_map(|p| p.greylisted_until())
            .min()
            // `cannot_reconnect_yet` holds while `now <= end`: look just after the end.
            .map(|t| t.saturating_add(std::time::Duration::from_nanos(1)))
    }
}
