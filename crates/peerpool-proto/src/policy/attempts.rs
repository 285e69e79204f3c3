//! Starting attempts (both directions), their outcomes, and the point and peer
//! transitions that follow (BEHAVIOUR.md §1.2-1.4, §2).

use super::control::ControlLimits;
use super::{
    Action, Attempt, AttemptFailure, ClosedBy, Connection, ConnectionId, ConnectionPolicy,
    ConnectionView, ControlMessage, PolicyEvent, Refusal,
};
use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::netgroup::Netgroup;
use crate::point::Point;
use crate::pool::{
    ExpectedPeerIdOutcome, Failure, IdPoint, Medium, P2pEvent, PeerMeta, PeerState, PointState,
    PoolError, Time,
};
use std::net::SocketAddr;

/// The I/O scheduler weight for a peer's score: the score rounded, within 1..=1000
/// (octez's constant score 1.0 gives the default weight 1). None of the anchors weighs
/// bandwidth by peer quality (ANCHORS.md).
pub fn weight_of_score(score: f64) -> u32 {
    if score.is_finite() {
        score.round().clamp(1.0, 1000.0) as u32
    } else {
        1
    }
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    /// An explicit dial of `point` (the application, an operator, a swap): registers the
    /// point (trusted if `trusted`; with `expected` as its expected peer id), checks it may
    /// be dialled (not ours, not banned, trusted in private mode, a free slot, no
    /// connection or attempt to it), sets it Requested and emits [`Action::Dial`]. The
    /// point's backoff is ignored (BEHAVIOUR.md §2.1). Works before activation.
    ///
    /// Errors: [`Refusal::Pool`] (`Myself`, `PointBanned`, `PrivateMode`,
    /// `AlreadyConnected`, `IdentityCheckFailure`), [`Refusal::TooManyConnections`],
    /// [`Refusal::NotActive`] while shutting down.
    pub fn connect(
        &mut self,
        now: Time,
        point: Point,
        expected: Option<PeerId>,
        trusted: bool,
    ) -> Result<ConnectionId, Refusal> {
        self.clock.set(now);
        let result = if self.stopping {
            Err(Refusal::NotActive)
        } else {
            if !self.pool.is_my_point(&point) {
                let reg = self
                    .pool
                    .register_point(now, point, trusted.then_some(true), expected);
                self.expected_outcome(reg.expected);
            }
            self.start_dial(now, point, expected)
        };
        self.finish(now);
        result
    }

    /// Adds a trusted point (octez `--peer`, bootstrap peers): a candidate of the
    /// maintenance (the only kind in private mode) that is never forgotten.
    pub fn add_trusted_point(&mut self, now: Time, point: Point, expected: Option<PeerId>) {
        self.clock.set(now);
        if !self.pool.is_my_point(&point) {
            let reg = self.pool.register_point(now, point, Some(true), expected);
            self.expected_outcome(reg.expected);
        }
        // A new candidate, even if the point was known: a waiting maintenance looks again.
        self.new_candidate();
        self.finish(now);
    }

    /// A point became a candidate (learned, or trusted): a maintenance waiting for points
    /// stops waiting.
    pub(super) fn new_candidate(&mut self) {
        if matches!(
            self.maintenance.phase,
            super::maintenance::Phase::Asking { .. }
        ) {
            self.maintenance.points_arrived = true;
            self.maintenance.wake = true;
        }
    }

    pub(super) fn expected_outcome(&mut self, outcome: ExpectedPeerIdOutcome) {
        if let ExpectedPeerIdOutcome::Disconnect { peer_id, .. } = outcome {
            if let Some(id) = self.by_peer.get(&peer_id).copied() {
                self.close(id, super::DisconnectReason::UnexpectedPeerId);
            }
        }
    }

    /// The dial itself, after registration: checks, Requested, [`Action::Dial`].
    pub(super) fn start_dial(
        &mut self,
        now: Time,
        point: Point,
        expected: Option<PeerId>,
    ) -> Result<ConnectionId, Refusal> {
        self.pool.check_dial(&point)?;
        if self.connections.len() >= self.pool.config().max_connections {
            return Err(Refusal::TooManyConnections);
        }
        match self.pool.point_state(&point) {
            Some(PointState::Disconnected) => {}
            Some(_) => return Err(PoolError::AlreadyConnected(point).into()),
            None => return Err(PoolError::UnknownPoint(point).into()),
        }
        self.pool.set_point_requested(now, &point)?;
        let expected = expected.or_else(|| self.pool.point(&point)?.expected_peer_id);
        let id = self.new_id();
        self.attempts.insert(
            id,
            Attempt {
                direction: Direction::Outgoing,
                remote_addr: point.socket_addr(),
                point: Some(point),
                peer_id: None,
                expected,
                private: false,
                decided: false,
            },
        );
        self.point_owner.insert(point, id);
        self.dialing += 1;
        self.pool.push_event(P2pEvent::OutgoingConnection { point });
        self.actions.push_back(Action::Dial { id, point });
        Ok(id)
    }

    /// An incoming TCP connection from `remote_addr`: the cheap checks before any byte is
    /// read (BEHAVIOUR.md §1.2): handshakes in flight below `max_incoming_handshakes`, and
    /// below the caps per address and per netgroup, the address neither banned nor
    /// greylisted. On success the runtime runs the handshake
    /// under `authentication_timeout` and reports its outcome with the returned id.
    ///
    /// Errors: [`Refusal::TooManyIncomingHandshakes`],
    /// [`Refusal::TooManyHandshakesFromAddr`], [`Refusal::TooManyHandshakesFromNetgroup`],
    /// [`Refusal::Pool`] (`PointBanned`), [`Refusal::NotActive`] while shutting down.
    pub fn handle_incoming(
        &mut self,
        now: Time,
        remote_addr: SocketAddr,
    ) -> Result<ConnectionId, Refusal> {
        self.clock.set(now);
        if self.stopping {
            return Err(Refusal::NotActive);
        }
        if self.incoming_in_flight >= self.config.max_incoming_handshakes {
            return Err(Refusal::TooManyIncomingHandshakes);
        }
        // Per address and per netgroup, so one network cannot hold every handshake slot.
        let ip = remote_addr.ip();
        let group = Netgroup::of(ip);
        let (mut same_ip, mut same_group) = (0, 0);
        for a in self.attempts.values() {
            if a.direction == Direction::Incoming {
                let theirs = a.remote_addr.ip();
                same_ip += usize::from(theirs == ip);
                same_group += usize::from(Netgroup::of(theirs) == group);
            }
        }
        if same_ip >= self.config.max_incoming_handshakes_per_ip {
            return Err(Refusal::TooManyHandshakesFromAddr);
        }
        if same_group >= self.config.handshakes_per_netgroup() {
            return Err(Refusal::TooManyHandshakesFromNetgroup(group));
        }
        self.pool.check_incoming_addr(ip)?;
        let id = self.new_id();
        self.attempts.insert(
            id,
            Attempt {
                direction: Direction::Incoming,
                remote_addr,
                point: None,
                peer_id: None,
                expected: None,
                private: false,
                decided: false,
            },
        );
        self.incoming_in_flight += 1;
        self.pool.push_event(P2pEvent::IncomingConnection {
            point: Point::from(remote_addr),
        });
        self.finish(now);
        Ok(id)
    }

    fn end_attempt(&mut self, id: ConnectionId) -> Option<Attempt> {
        let attempt = self.attempts.remove(&id)?;
        match attempt.direction {
            Direction::Incoming => self.incoming_in_flight -= 1,
            Direction::Outgoing => self.dialing -= 1,
        }
        Some(attempt)
    }

    /// The Ack exchange of attempt `id` succeeded: the connection is running. Returns
    /// `false` if it is a duplicate (another connection with the same peer won), or if
    /// the peer or its address was banned since its admission: the runtime closes it and
    /// reports nothing more about it.
    pub fn handle_established(&mut self, now: Time, id: ConnectionId) -> bool {
        self.clock.set(now);
        let Some(attempt) = self.end_attempt(id) else {
            self.finish(now);
            return false;
        };
        let Some(peer_id) = attempt.peer_id else {
            // Established without admission: a driver bug; refuse it, and give the point
            // back as any failed attempt does, so that it is not left Requested.
            self.release_states(now, id, &attempt);
            self.maintenance_attempt_ended(id, false);
            self.swap_attempt_ended(now, id, false);
            self.finish(now);
            return false;
        };
        let owns = self.pending.get(&peer_id) == Some(&id);
        // A ban that came during the Ack exchange refuses the connection, as it would
        // have refused the admission (the pool's rule: a trusted point or peer keeps a
        // banned address, never a banned peer).
        let trusted = attempt
            .point
            .is_some_and(|p| self.pool.point(&p).is_some_and(|i| i.trusted))
            || self.pool.peer(&peer_id).is_some_and(|p| p.trusted);
        let banned = self.pool.peer_banned(&peer_id)
            || (self.pool.acl().banned_addr(attempt.remote_addr.ip()) && !trusted);
        if !owns || self.by_peer.contains_key(&peer_id) || self.stopping || banned {
            self.release_states(now, id, &attempt);
            self.maintenance_attempt_ended(id, false);
            self.swap_attempt_ended(now, id, false);
            self.finish(now);
            return false;
        }
        self.pending.remove(&peer_id);
        if let Some(p) = attempt.point {
            let _ = self.pool.set_point_running(now, &p, peer_id);
            self.point_owner.remove(&p);
        }
        let id_point = IdPoint {
            addr: attempt.remote_addr.ip(),
            port: attempt.point.map(|p| p.port()),
        };
        let _ = self.pool.set_peer_running(now, &peer_id, id_point);
        let view = ConnectionView {
            id,
            peer_id,
            remote_addr: attempt.remote_addr,
            point: attempt.point,
            direction: attempt.direction,
            private: attempt.private,
            trusted: false,
            since: now,
        };
        let limits = ControlLimits::new(
            &self.clock,
            self.config.bootstrap_rate,
            self.config.advertise_rate,
            self.config.swap_rate,
        );
        self.manager.connection_opened(
            now,
            id,
            peer_id,
            attempt.remote_addr.ip(),
            attempt.direction,
            trusted,
        );
        self.incoming_open += usize::from(view.direction == Direction::Incoming);
        self.connections.insert(id, Connection { view, limits });
        self.by_peer.insert(peer_id, id);
        if let Some(score) = self.pool.score(&peer_id) {
            self.actions.push_back(Action::SetWeight {
                id,
                weight: weight_of_score(score),
            });
        }
        if self.config.bootstrap_on_connect && self.config.peer_discovery && !attempt.private {
            self.actions.push_back(Action::Send {
                id,
                message: ControlMessage::Bootstrap,
            });
            self.pool
                .push_event(P2pEvent::BootstrapSent { source: peer_id });
        }
        self.maintenance_attempt_ended(id, true);
        self.swap_attempt_ended(now, id, true);
        // Crossing max_threshold wakes the maintenance at once (octez waits until
        // max_connections is exceeded).
        if self.config.maintenance.triggers.too_many
            && self.live() > self.maintenance.bounds.max_threshold
        {
            self.maintenance.wake = true;
        }
        self.finish(now);
        true
    }

    /// Attempt `id` failed before it was established.
    pub fn handle_attempt_failed(&mut self, now: Time, id: ConnectionId, failure: AttemptFailure) {
        self.clock.set(now);
        let Some(attempt) = self.end_attempt(id) else {
            self.finish(now);
            return;
        };
        self.release_states(now, id, &attempt);
        self.maintenance_attempt_ended(id, false);
        self.swap_attempt_ended(now, id, false);
        let handshake_failed = matches!(
            failure,
            AttemptFailure::Garbage
                | AttemptFailure::Myself
                | AttemptFailure::Nacked { .. }
                | AttemptFailure::Closed
        );
        if handshake_failed {
            self.pool.push_event(P2pEvent::AuthenticationFailed {
                point: Point::from(attempt.remote_addr),
            });
        }
        match failure {
            AttemptFailure::Garbage => {
                let _ = self.pool.apply_failure(
                    now,
                    Failure::HandshakeMisbehaviour,
                    attempt.remote_addr.ip(),
                    attempt.peer_id,
                );
            }
            AttemptFailure::Myself => {
                if let Some(p) = attempt.point {
                    self.pool.add_to_id_points(p);
                }
            }
            AttemptFailure::NoCommonProtocol => {
                // Another network's point is useless and must not be advertised; it is
                // not greylisted: nodes of ours may share its address (BEHAVIOUR.md §1.2).
                if let Some(p) = attempt.point {
                    self.pool.unregister_point(&p);
                }
            }
            AttemptFailure::Nacked { points, .. } if self.config.peer_discovery => {
                // A Nack's referral points are worth knowing (BEHAVIOUR.md §1.2).
                self.pool.register_list_of_new_points(
                    now,
                    Medium::Nack,
                    attempt.peer_id,
                    points
                        .into_iter()
                        .take(crate::message::MAX_ADVERTISE_POINTS),
                );
            }
            _ => {}
        }
        self.finish(now);
    }

    /// Sets a failed attempt's point and peer back to Disconnected (the point with its
    /// backoff), if it owned their states. Every failure path goes through here, so no
    /// point stays Requested or Accepted (octez's quirk, BEHAVIOUR.md §1.3).
    pub(super) fn release_states(&mut self, now: Time, id: ConnectionId, attempt: &Attempt) {
        if let Some(peer_id) = attempt.peer_id {
            if self.pending.get(&peer_id) == Some(&id) {
                self.pending.remove(&peer_id);
            }
            let free = !self.by_peer.contains_key(&peer_id) && !self.pending.contains_key(&peer_id);
            if free
                && matches!(
                    self.pool.peer_state(&peer_id),
                    Some(PeerState::Accepted { .. })
                )
            {
                let _ = self.pool.set_peer_disconnected(now, &peer_id, false);
            }
        }
        if let Some(p) = attempt.point {
            if self.point_owner.get(&p) == Some(&id) {
                self.point_owner.remove(&p);
                let _ = self.pool.set_point_disconnected(now, &p, false);
            }
        }
    }

    /// Connection `id` has closed (both its tasks have ended or are ending).
    pub fn handle_closed(&mut self, now: Time, id: ConnectionId, by: ClosedBy) {
        self.clock.set(now);
        let was_closing = self.closing.remove(&id);
        let requested = was_closing || by == ClosedBy::Us;
        self.manager.connection_closed(now, id);
        let Some(conn) = self.connections.remove(&id) else {
            self.finish(now);
            return;
        };
        if conn.view.direction == Direction::Incoming && !was_closing {
            self.incoming_open -= 1;
        }
        self.swap_connection_closed(id);
        let peer_id = conn.view.peer_id;
        if self.by_peer.get(&peer_id) == Some(&id) {
            self.by_peer.remove(&peer_id);
        }
        if let Some(p) = conn.view.point {
            if matches!(self.pool.point_state(&p), Some(PointState::Running { peer_id: q }) if q == peer_id)
            {
                let _ = self.pool.set_point_disconnected(now, &p, requested);
            }
        }
        let _ = self.pool.set_peer_disconnected(now, &peer_id, requested);
        if by == ClosedBy::PeerFault {
            // A decoding error greylists the peer: its id and its address (§5).
            self.pool.greylist_peer(now, &peer_id);
        }
        self.finish(now);
    }

    /// A control message arrived on connection `id` (see the `control` module).
    pub fn handle_control(&mut self, now: Time, id: ConnectionId, message: ControlMessage) {
        self.clock.set(now);
        self.on_control(now, id, message);
        self.finish(now);
    }

    pub(super) fn emit(&mut self, event: PolicyEvent) {
        // Pool events queued so far go first, so subscribers see one order.
        while let Some(e) = self.pool.poll_event() {
            self.actions.push_back(Action::Event(PolicyEvent::Pool(e)));
        }
        self.actions.push_back(Action::Event(event));
    }
}
