//! The point state machine and its history (BEHAVIOUR.md §2.1, octez `P2p_point_state`).
//!
//! ```text
//!  Disconnected ──set_requested──▶ Requested ──set_accepted(peer)──▶ Accepted(peer)
//!       │  ▲                          │                                   │
//!       │  └──── set_disconnected ────┴────────── (backoff step) ─────────┤
//!       │                                                                 ▼
//!       └──────── set_accepted / set_running ──────────────────────▶ Running(peer)
//!                                     Running ──set_disconnected──▶ Disconnected (60 s wait)
//! ```
//!
//! Every transition takes `now`; nothing here reads a clock.

use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use thiserror::Error;

/// How many events a point or a peer keeps (octez: a ring of 100).
pub const EVENT_RING_SIZE: usize = 100;

/// Reconnection backoff (BEHAVIOUR.md §2.1, octez `Point_reconnection_config`, config key
/// `p2p.greylisting_config`).
///
/// After a failed or rejected attempt the point waits the current delay (starting at
/// `initial_delay`), then the delay becomes `min(delay × factor, increase_cap)`: 1, 1.2,
/// 1.44, … s, capped at 2 days. After a running connection ends the point waits
/// `disconnection_delay` and the delay goes back to `initial_delay`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectionConfig {
    /// Multiplier applied to the delay after each failure; must be ≥ 1. Default 1.2.
    pub factor: f64,
    /// First wait after a failure. Default 1 s.
    pub initial_delay: Duration,
    /// Wait after a running connection ends. Default 60 s.
    pub disconnection_delay: Duration,
    /// Largest delay (the cap applies to the delay itself). Default 2 days (172 800 s).
    pub increase_cap: Duration,
}

impl Default for ReconnectionConfig {
    fn default() -> Self {
        ReconnectionConfig {
            factor: 1.2,
            initial_delay: Duration::from_secs(1),
            disconnection_delay: Duration::from_secs(60),
            increase_cap: Duration::from_secs(172_800),
        }
    }
}

/// Where a point stands in the backoff: the next delay and the end of the current wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnection {
    /// Wait applied at the next failure.
    pub delay: Duration,
    /// The point is not dialled by the maintenance while `now ≤ end_time` (the RPC calls
    /// this `greylisted_until`).
    pub end_time: Time,
}

/// The state of a point (BEHAVIOUR.md §2.1). The runtime keeps the cancel handle and the
/// connection; the core only keeps who is on the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointState {
    /// No connection and no attempt in progress.
    Disconnected,
    /// Outgoing TCP connect or handshake in progress.
    Requested,
    /// Handshake done with `peer_id`, waiting for the Ack.
    Accepted {
        /// The authenticated remote.
        peer_id: PeerId,
    },
    /// An established connection to `peer_id`.
    Running {
        /// The authenticated remote.
        peer_id: PeerId,
    },
}

impl PointState {
    /// The state's name in lower case, as the RPC shows it.
    pub fn name(&self) -> &'static str {
        match self {
            PointState::Disconnected => "disconnected",
            PointState::Requested => "requested",
            PointState::Accepted { .. } => "accepted",
            PointState::Running { .. } => "running",
        }
    }
}

/// What happened to a point (octez point pool events; BEHAVIOUR.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PointEventKind {
    /// We started dialling.
    OutgoingRequest,
    /// A handshake with `peer_id` succeeded and we are waiting for the Ack.
    AcceptingRequest {
        /// The remote.
        peer_id: PeerId,
    },
    /// We refused `peer_id` (kept for compatibility; octez defines but never emits it).
    RejectingRequest {
        /// The remote.
        peer_id: PeerId,
    },
    /// The attempt failed, before (`None`) or after the handshake.
    RequestRejected {
        /// The remote, if the handshake got that far.
        peer_id: Option<PeerId>,
    },
    /// The connection is running.
    ConnectionEstablished {
        /// The remote.
        peer_id: PeerId,
    },
    /// We closed a running connection.
    Disconnection {
        /// The remote.
        peer_id: PeerId,
    },
    /// The remote or the network closed a running connection.
    ExternalDisconnection {
        /// The remote.
        peer_id: PeerId,
    },
}

/// One entry of a point's event ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointEvent {
    /// When it happened.
    pub timestamp: Time,
    /// What happened.
    #[serde(flatten)]
    pub kind: PointEventKind,
}

/// A transition that the point state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("point {point}: cannot go from {from} to {to}")]
pub struct PointTransitionError {
    /// The point.
    pub point: Point,
    /// The state it was in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// Everything the pool knows about one point (BEHAVIOUR.md §2.1 "Info kept per point").
#[derive(Debug, Clone, PartialEq)]
pub struct PointInfo {
    point: Point,
    /// Trusted points are never collected, always acceptable in private mode, and dialled
    /// by the maintenance first.
    pub trusted: bool,
    /// Set after a handshake shows the remote is not a private node; only such points are
    /// advertised (`list_known_points` with `ignore_private`). Persisted by peerpool (octez
    /// forgets it at restart, BEHAVIOUR.md §13.2).
    pub known_public: bool,
    /// The peer id a handshake with this point must present (BEHAVIOUR.md §4.5).
    pub expected_peer_id: Option<PeerId>,
    state: PointState,
    last_failed_connection: Option<Time>,
    last_rejected_connection: Option<(PeerId, Time)>,
    last_established_connection: Option<(PeerId, Time)>,
    last_disconnection: Option<(PeerId, Time)>,
    reconnection: Option<Reconnection>,
    events: VecDeque<PointEvent>,
}

impl PointInfo {
    /// A new, disconnected point with no history.
    pub fn new(point: Point, trusted: bool, expected_peer_id: Option<PeerId>) -> Self {
        PointInfo {
            point,
            trusted,
            known_public: false,
            expected_peer_id,
            state: PointState::Disconnected,
            last_failed_connection: None,
            last_rejected_connection: None,
            last_established_connection: None,
            last_disconnection: None,
            reconnection: None,
            events: VecDeque::new(),
        }
    }

    /// The point.
    pub fn point(&self) -> Point {
        self.point
    }

    /// The current state.
    pub fn state(&self) -> PointState {
        self.state
    }

    /// The peer on the other side when Accepted or Running.
    pub fn current_peer_id(&self) -> Option<PeerId> {
        match self.state {
            PointState::Accepted { peer_id } | PointState::Running { peer_id } => Some(peer_id),
            _ => None,
        }
    }

    /// When an outgoing attempt last failed before the handshake.
    pub fn last_failed_connection(&self) -> Option<Time> {
        self.last_failed_connection
    }

    /// Who last got to Accepted and then failed, and when.
    pub fn last_rejected_connection(&self) -> Option<(PeerId, Time)> {
        self.last_rejected_connection
    }

    /// Who was last Running on this point, and since when.
    pub fn last_established_connection(&self) -> Option<(PeerId, Time)> {
        self.last_established_connection
    }

    /// Who was last disconnected from Running, and when.
    pub fn last_disconnection(&self) -> Option<(PeerId, Time)> {
        self.last_disconnection
    }

    /// The backoff state, if any failure or disconnection happened.
    pub fn reconnection(&self) -> Option<Reconnection> {
        self.reconnection
    }

    /// The end of the current backoff wait (RPC field `greylisted_until`).
    pub fn greylisted_until(&self) -> Option<Time> {
        self.reconnection.map(|r| r.end_time)
    }

    /// True while the backoff forbids the maintenance to dial: `now ≤ end_time`.
    pub fn cannot_reconnect_yet(&self, now: Time) -> bool {
        self.reconnection.is_some_and(|r| now <= r.end_time)
    }

    /// The most recent of rejected / established / disconnection, with the peer.
    pub fn last_seen(&self) -> Option<(PeerId, Time)> {
        [
            self.last_rejected_connection,
            self.last_established_connection,
            self.last_disconnection,
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(_, t)| *t)
    }

    /// `max(last_failed_connection, time of the most recent of rejected / disconnection)`.
    pub fn last_miss(&self) -> Option<Time> {
        let seen_miss = [self.last_rejected_connection, self.last_disconnection]
            .into_iter()
            .flatten()
            .map(|(_, t)| t)
            .max();
        self.last_failed_connection.max(seen_miss)
    }

    /// The event ring, oldest first, at most [`EVENT_RING_SIZE`] entries.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &PointEvent> + '_ {
        self.events.iter()
    }

    fn log(&mut self, timestamp: Time, kind: PointEventKind) {
        if self.events.len() == EVENT_RING_SIZE {
            self.events.pop_front();
        }
        self.events.push_back(PointEvent { timestamp, kind });
    }

    fn refuse(&self, to: &'static str) -> PointTransitionError {
        PointTransitionError {
            point: self.point,
            from: self.state.name(),
            to,
        }
    }

    /// Disconnected/Requested → Requested (we start dialling). Logs `OutgoingRequest`.
    ///
    /// Errors: from Accepted or Running.
    pub fn set_requested(&mut self, now: Time) -> Result<(), PointTransitionError> {
        match self.state {
            PointState::Disconnected | PointState::Requested => {
                self.state = PointState::Requested;
                self.log(now, PointEventKind::OutgoingRequest);
                Ok(())
            }
            _ => Err(self.refuse("requested")),
        }
    }

    /// Disconnected/Requested → Accepted (handshake done with `peer_id`; an incoming point
    /// starts from Disconnected). Logs `AcceptingRequest`.
    ///
    /// Errors: from Accepted or Running.
    pub fn set_accepted(&mut self, now: Time, peer_id: PeerId) -> Result<(), PointTransitionError> {
        match self.state {
            PointState::Disconnected | PointState::Requested => {
                self.state = PointState::Accepted { peer_id };
                self.log(now, PointEventKind::AcceptingRequest { peer_id });
                Ok(())
            }
            _ => Err(self.refuse("accepted")),
        }
    }

    /// Disconnected/Requested/Accepted(same peer) → Running; sets
    /// `last_established_connection = (peer_id, now)`. Logs `ConnectionEstablished`.
    ///
    /// Errors: from Running, or from Accepted with another peer.
    pub fn set_running(&mut self, now: Time, peer_id: PeerId) -> Result<(), PointTransitionError> {
        match self.state {
            PointState::Disconnected | PointState::Requested => {}
            PointState::Accepted { peer_id: p } if p == peer_id => {}
            _ => return Err(self.refuse("running")),
        }
        self.state = PointState::Running { peer_id };
        self.last_established_connection = Some((peer_id, now));
        self.log(now, PointEventKind::ConnectionEstablished { peer_id });
        Ok(())
    }

    /// Any state → Disconnected, with the history and backoff of BEHAVIOUR.md §2.1:
    ///
    /// - from Requested: `last_failed_connection = now`, backoff step, `RequestRejected(None)`;
    /// - from Accepted(peer): `last_rejected_connection = (peer, now)`, backoff step,
    ///   `RequestRejected(Some peer)`;
    /// - from Running(peer): `last_disconnection = (peer, now)`, wait
    ///   `disconnection_delay` with the delay reset to `initial_delay`; `Disconnection` if
    ///   `requested` (we closed it) else `ExternalDisconnection` (octez always logs the latter).
    /// - from Disconnected: nothing (so the runtime may call it on every failure path,
    ///   BEHAVIOUR.md §13.4).
    pub fn set_disconnected(&mut self, now: Time, requested: bool, config: &ReconnectionConfig) {
        match self.state {
            PointState::Disconnected => return,
            PointState::Requested => {
                self.last_failed_connection = Some(now);
                self.backoff_step(now, config);
                self.log(now, PointEventKind::RequestRejected { peer_id: None });
            }
            PointState::Accepted { peer_id } => {
                self.last_rejected_connection = Some((peer_id, now));
                self.backoff_step(now, config);
                self.log(
                    now,
                    PointEventKind::RequestRejected {
                        peer_id: Some(peer_id),
                    },
                );
            }
            PointState::Running { peer_id } => {
                self.last_disconnection = Some((peer_id, now));
                self.reconnection = Some(Reconnection {
                    delay: config.initial_delay,
                    end_time: now.saturating_add(config.disconnection_delay),
                });
                let kind = if requested {
                    PointEventKind::Disconnection { peer_id }
                } else {
                    PointEventKind::ExternalDisconnection { peer_id }
                };
                self.log(now, kind);
            }
        }
        self.state = PointState::Disconnected;
    }

    fn backoff_step(&mut self, now: Time, config: &ReconnectionConfig) {
        let delay = self.reconnection.map_or(config.initial_delay, |r| r.delay);
        let next = next_backoff_delay(delay, config);
        self.reconnection = Some(Reconnection {
            delay: next,
            end_time: now.saturating_add(delay),
        });
    }

    /// Restores history loaded from `peers.json` (peerpool's extra fields).
    pub(crate) fn restore_history(
        &mut self,
        last_failed: Option<Time>,
        last_rejected: Option<(PeerId, Time)>,
        last_established: Option<(PeerId, Time)>,
        last_disconnection: Option<(PeerId, Time)>,
    ) {
        self.last_failed_connection = last_failed;
        self.last_rejected_connection = last_rejected;
        self.last_established_connection = last_established;
        self.last_disconnection = last_disconnection;
    }
}

/// `min(delay × factor, increase_cap)`, saturating: a product past what a [`Duration`]
/// holds (a huge factor, or no real cap after many failures) is the cap. A factor below 1
/// (or NaN), which validation refuses, counts as 1.
fn next_backoff_delay(delay: Duration, config: &ReconnectionConfig) -> Duration {
    let factor = config.factor.max(1.0);
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor)
        .unwrap_or(Duration::MAX)
        .min(config.increase_cap)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 16])
    }

    fn info() -> PointInfo {
        PointInfo::new("10.0.0.1:9732".parse().unwrap(), false, None)
    }

    const T0: Time = Time::from_secs(1_000_000);

    fn at(secs: u64) -> Time {
        T0.saturating_add(Duration::from_secs(secs))
    }

    #[test]
    fn outgoing_success_path() {
        let mut p = info();
        p.set_requested(at(0)).unwrap();
        assert_eq!(p.state(), PointState::Requested);
        p.set_requested(at(1)).unwrap();
        p.set_accepted(at(2), peer(1)).unwrap();
        assert_eq!(p.state(), PointState::Accepted { peer_id: peer(1) });
        assert_eq!(p.current_peer_id(), Some(peer(1)));
        p.set_running(at(3), peer(1)).unwrap();
        assert_eq!(p.state(), PointState::Running { peer_id: peer(1) });
        assert_eq!(p.last_established_connection(), Some((peer(1), at(3))));
        assert_eq!(p.last_seen(), Some((peer(1), at(3))));
        assert_eq!(p.last_miss(), None);
        let kinds: Vec<_> = p.events().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                PointEventKind::OutgoingRequest,
                PointEventKind::OutgoingRequest,
                PointEventKind::AcceptingRequest { peer_id: peer(1) },
                PointEventKind::ConnectionEstablished { peer_id: peer(1) },
            ]
        );
    }

    #[test]
    fn incoming_starts_from_disconnected_and_running_direct() {
        let mut p = info();
        p.set_accepted(at(0), peer(1)).unwrap();
        let mut q = info();
        q.set_running(at(0), peer(2)).unwrap();
        let mut r = info();
        r.set_requested(at(0)).unwrap();
        r.set_running(at(1), peer(2)).unwrap();
        assert_eq!(r.state(), PointState::Running { peer_id: peer(2) });
    }

    #[test]
    fn refused_transitions() {
        let mut p = info();
        p.set_accepted(at(0), peer(1)).unwrap();
        assert!(p.set_requested(at(1)).is_err());
        assert!(p.set_accepted(at(1), peer(1)).is_err());
        let e = p.set_running(at(1), peer(2)).unwrap_err();
        assert_eq!((e.from, e.to), ("accepted", "running"));
        p.set_running(at(1), peer(1)).unwrap();
        assert!(p.set_requested(at(2)).is_err());
        assert!(p.set_accepted(at(2), peer(1)).is_err());
        assert!(p.set_running(at(2), peer(1)).is_err());
    }

    #[test]
    fn failed_requests_back_off_geometrically_to_the_cap() {
        let cfg = ReconnectionConfig::default();
        let mut p = info();
        let mut now = at(0);
        let mut expected = 1.0f64;
        for _ in 0..5 {
            p.set_requested(now).unwrap();
            p.set_disconnected(now, false, &cfg);
            assert_eq!(p.state(), PointState::Disconnected);
            assert_eq!(p.last_failed_connection(), Some(now));
            let end = p.greylisted_until().unwrap();
            let wait = end.saturating_duration_since(now).as_secs_f64();
            assert!((wait - expected).abs() < 1e-6, "{wait} vs {expected}");
            assert!(p.cannot_reconnect_yet(end));
            assert!(!p.cannot_reconnect_yet(end.saturating_add(Duration::from_nanos(1))));
            expected *= 1.2;
            now = end.saturating_add(Duration::from_secs(1));
        }
        assert_eq!(
            p.events().last().unwrap().kind,
            PointEventKind::RequestRejected { peer_id: None }
        );
        for _ in 0..100 {
            p.set_requested(now).unwrap();
            p.set_disconnected(now, false, &cfg);
        }
        assert_eq!(p.reconnection().unwrap().delay, cfg.increase_cap);
        assert_eq!(
            p.greylisted_until(),
            Some(now.saturating_add(cfg.increase_cap))
        );
        assert_eq!(p.events().len(), EVENT_RING_SIZE);
    }

    #[test]
    fn rejected_after_handshake_records_the_peer() {
        let cfg = ReconnectionConfig::default();
        let mut p = info();
        p.set_accepted(at(5), peer(3)).unwrap();
        p.set_disconnected(at(6), false, &cfg);
        assert_eq!(p.last_rejected_connection(), Some((peer(3), at(6))));
        assert_eq!(p.last_miss(), Some(at(6)));
        assert_eq!(p.last_seen(), Some((peer(3), at(6))));
        assert_eq!(p.greylisted_until(), Some(at(7)));
        assert_eq!(
            p.events().last().unwrap().kind,
            PointEventKind::RequestRejected {
                peer_id: Some(peer(3))
            }
        );
    }

    #[test]
    fn end_of_running_waits_disconnection_delay_and_resets_delay() {
        let cfg = ReconnectionConfig::default();
        let mut p = info();
        for i in 0..3 {
            p.set_requested(at(i)).unwrap();
            p.set_disconnected(at(i), false, &cfg);
        }
        p.set_running(at(10), peer(4)).unwrap();
        p.set_disconnected(at(20), true, &cfg);
        assert_eq!(p.last_disconnection(), Some((peer(4), at(20))));
        assert_eq!(
            p.reconnection(),
            Some(Reconnection {
                delay: cfg.initial_delay,
                end_time: at(80)
            })
        );
        assert_eq!(
            p.events().last().unwrap().kind,
            PointEventKind::Disconnection { peer_id: peer(4) }
        );
        p.set_running(at(100), peer(4)).unwrap();
        p.set_disconnected(at(101), false, &cfg);
        assert_eq!(
            p.events().last().unwrap().kind,
            PointEventKind::ExternalDisconnection { peer_id: peer(4) }
        );
        assert_eq!(p.last_miss(), Some(at(101)));
    }

    #[test]
    fn disconnecting_a_disconnected_point_changes_nothing() {
        let mut p = info();
        p.set_disconnected(at(1), false, &ReconnectionConfig::default());
        assert_eq!(p, info());
    }
}
