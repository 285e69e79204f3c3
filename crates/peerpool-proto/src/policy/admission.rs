//! The accept/reject decision on an authenticated peer (BEHAVIOUR.md §1.2
//! "Acceptability") and the tie-break between simultaneous dials.

use super::plugins::Candidate;
use super::{Admission, AuthenticatedPeer, ConnectionId, ConnectionPolicy, DisconnectReason};
use crate::connection_message::NackMotive;
use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{IdPoint, P2pEvent, PeerMeta, PeerState, PointState, PoolError, Time};
use std::net::Ipv4Addr;

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    /// Decides on the authenticated peer of attempt `id`. In this order:
    ///
    /// 1. the peer is registered, and so is the listening point it announced (incoming);
    /// 2. the expected peer id, if any, must match: else [`Admission::Close`]
    ///    (`IdentityCheckFailure`, nothing greylisted);
    /// 3. version selection: a different chain or no common version gets a Nack with
    ///    its motive;
    /// 4. duplicates: a running connection with the peer, or another admitted attempt
    ///    that wins the tie-break, gets Nack `Already_connected`;
    /// 5. the pool's checks (banned address or peer, private mode, point or peer busy):
    ///    [`Admission::Close`], or Nack `Already_connected`;
    /// 6. the caps: an incoming peer beyond `max_incoming_connections` established incoming
    ///    connections is Nacked `Too_many_connections`; then the slot limit
    ///    (`max_connections`): a full node asks its [`AdmissionHook`](super::AdmissionHook)
    ///    for a connection to evict, else Nacks `Too_many_connections`;
    /// 7. accepted: the point and the peer go Accepted.
    ///
    /// Every Nack carries up to `advertise_points` known public points (none without peer
    /// discovery). Tie-break: of two connections between the same two nodes, the one
    /// dialled by the smaller peer id wins on both sides.
    ///
    /// Called once per attempt: a second call answers `Close` and changes nothing.
    pub fn handle_authenticated(
        &mut self,
        now: Time,
        id: ConnectionId,
        peer: &AuthenticatedPeer,
    ) -> Admission {
        self.clock.set(now);
        let decision = self.admit(now, id, peer);
        if let Some(a) = self.attempts.get_mut(&id) {
            a.private = peer.metadata.private_node;
            let point = Point::from(a.remote_addr);
            let id_point = IdPoint {
                addr: a.remote_addr.ip(),
                port: peer.announced_port,
            };
            let peer_id = peer.peer_id;
            self.pool.push_event(match decision {
                Admission::Accept(_) => P2pEvent::AcceptingRequest {
                    point,
                    id_point,
                    peer_id,
                },
                _ => P2pEvent::RejectingRequest {
                    point,
                    id_point,
                    peer_id,
                },
            });
        }
        self.finish(now);
        decision
    }

    fn wins_tie(&self, peer_id: PeerId, direction: Direction) -> bool {
        let ours = self.local_peer_id;
        let dialer = match direction {
            Direction::Outgoing => ours,
            Direction::Incoming => peer_id,
        };
        dialer == ours.min(peer_id)
    }

    /// Up to `advertise_points` public points to share, never `except` (the asking
    /// peer's own point).
    pub(super) fn shareable_points(&mut self, except: Option<Point>) -> Vec<Point> {
        if !self.config.peer_discovery {
            return Vec::new();
        }
        let size = self.config.advertise_points;
        let mut points = self.pool.list_known_points(true, size + 1, &mut self.rng);
        points.retain(|p| Some(*p) != except);
        points.truncate(size);
        points
    }

    fn nack(&mut self, motive: NackMotive, except: Option<Point>) -> Admission {
        Admission::Nack(motive, self.shareable_points(except))
    }

    fn admit(&mut self, now: Time, id: ConnectionId, peer: &AuthenticatedPeer) -> Admission {
        let peer_id = peer.peer_id;
        let Some(attempt) = self.attempts.get(&id).cloned() else {
            return Admission::Close(PoolError::UnknownPeer(peer_id));
        };
        if attempt.decided {
            // A second decision on one attempt (a runtime's bug): refused, and the first
            // one stands, so no point or peer changes hands.
            return Admission::Close(PoolError::AlreadyConnected(Point::from(
                attempt.remote_addr,
            )));
        }
        if let Some(a) = self.attempts.get_mut(&id) {
            a.decided = true;
        }
        if self.stopping {
            return Admission::Nack(NackMotive::NoMotive, Vec::new());
        }
        let incoming = attempt.direction == Direction::Incoming;
        let point = match attempt.direction {
            Direction::Outgoing => attempt.point,
            Direction::Incoming => peer
                .announced_port
                .map(|port| Point::new(attempt.remote_addr.ip(), port)),
        };
        // 1. Registration.
        self.pool.register_peer(now, peer_id);
        if let (true, Some(p)) = (incoming, point) {
            if !self.pool.is_my_point(&p) {
                self.pool.register_new_point(now, p);
            }
            // The attempt's outcome concerns this point from now on (a refusal for another
            // network forgets it); owning its state comes only with acceptance.
            if let Some(a) = self.attempts.get_mut(&id) {
                a.point = Some(p);
            }
        }
        // 2. The expected peer id of the dial.
        if let (Some(p), Some(e)) = (point, attempt.expected) {
            if e != peer_id {
                return Admission::Close(PoolError::IdentityCheckFailure {
                    point: p,
                    expected: e,
                    got: peer_id,
                });
            }
        }
        // 3. Versions.
        let version = match self.versions.select(&peer.announced_version) {
            Ok(v) => v,
            Err(motive) => return self.nack(motive, point),
        };
        // 4. Duplicates: established, or another admitted attempt (tie-break).
        if self.by_peer.contains_key(&peer_id) {
            return self.nack(NackMotive::AlreadyConnected, point);
        }
        let takeover = match self.pending.get(&peer_id) {
            Some(_) if !self.wins_tie(peer_id, attempt.direction) => {
                return self.nack(NackMotive::AlreadyConnected, point)
            }
            Some(_) => true,
            None => false,
        };
        // A takeover replaces the peer's admitted attempt, not another peer's hold on the
        // point: that point must be free or held by the attempt taken over.
        if takeover {
            let replaced = self.pending.get(&peer_id).copied();
            if let Some(p) = point {
                let busy = match self.point_owner.get(&p) {
                    Some(owner) => *owner != id && Some(*owner) != replaced,
                    None => matches!(self.pool.point_state(&p), Some(PointState::Running { .. })),
                };
                if busy {
                    return self.nack(NackMotive::AlreadyConnected, point);
                }
            }
        }
        // Our own attempt on the same point in flight: the tie-break decides, as above.
        let point_taken = point
            .and_then(|p| self.point_owner.get(&p))
            .is_some_and(|owner| *owner != id);
        if point_taken && !takeover && !self.wins_tie(peer_id, attempt.direction) {
            return self.nack(NackMotive::AlreadyConnected, point);
        }
        // 5. The pool's checks.
        if !takeover {
            let check = match point {
                Some(p) => self
                    .pool
                    .check_connection(&p, &peer_id, incoming && !point_taken),
                None => self.check_peer_only(&peer_id),
            };
            match check {
                Ok(()) => {}
                Err(PoolError::AlreadyConnected(_)) => {
                    return self.nack(NackMotive::AlreadyConnected, point)
                }
                Err(e) => return Admission::Close(e),
            }
        }
        // 6. Slots: the connection manager's share per netgroup (issue 9 §5: a netgroup
        // that holds its share of incoming connections takes no more), the cap on
        // established incoming connections (so strangers cannot take the slots the node
        // needs for its own dials), then the slot limit.
        if !takeover && incoming {
            let ip = attempt.remote_addr.ip();
            let pending = self.pending_incoming_in_netgroup(ip);
            if self.manager.netgroup_full(ip, pending) {
                return self.nack(NackMotive::TooManyConnections, point);
            }
        }
        let incoming_full = !takeover && incoming && self.incoming_count() >= self.max_incoming;
        let slots_full = !takeover && self.live() + self.pending.len() >= self.slot_limit;
        if (incoming_full || slots_full) && self.manager.is_active() {
            // Evict-to-admit (issue 9 §6): an incoming newcomer from a netgroup we have no
            // connection in takes the slot of the worst evictable incoming connection.
            let victim = if incoming {
                self.manager.evict_for(now, attempt.remote_addr.ip())
            } else {
                None
            };
            match victim {
                Some(v) => self.close(v.id, DisconnectReason::Evicted),
                None => return self.nack(NackMotive::TooManyConnections, point),
            }
        } else if incoming_full {
            return self.nack(NackMotive::TooManyConnections, point);
        } else if slots_full {
            let candidate = Candidate {
                peer_id,
                remote_addr: attempt.remote_addr,
                point,
                direction: attempt.direction,
            };
            let views = self.live_views();
            match self.admission_hook.when_full(now, &candidate, &views) {
                Some(victim) if views.iter().any(|v| v.id == victim) => {
                    self.close(victim, DisconnectReason::Evicted);
                }
                _ => return self.nack(NackMotive::TooManyConnections, point),
            }
        }
        // 7. Accepted: take ownership of the point's and the peer's states.
        if let Some(p) = point {
            let _ = self.pool.set_known_public(&p, !peer.metadata.private_node);
            if self.pool.point_state(&p) != Some(PointState::Accepted { peer_id }) {
                let _ = self.pool.set_point_accepted(now, &p, peer_id);
            }
            self.point_owner.insert(p, id);
        }
        let id_point = IdPoint {
            addr: attempt.remote_addr.ip(),
            port: point.map(|p| p.port()),
        };
        if self.pool.peer_state(&peer_id) == Some(PeerState::Disconnected) {
            let _ = self.pool.set_peer_accepted(now, &peer_id, id_point);
        }
        self.pending.insert(peer_id, id);
        if let Some(a) = self.attempts.get_mut(&id) {
            a.point = point;
            a.peer_id = Some(peer_id);
        }
        Admission::Accept(version)
    }

    /// Incoming attempts admitted (not yet running) from `ip`'s netgroup.
    fn pending_incoming_in_netgroup(&self, ip: std::net::IpAddr) -> usize {
        let group = crate::netgroup::Netgroup::of(ip);
        self.pending
            .values()
            .filter(|id| {
                self.attempts.get(id).is_some_and(|a| {
                    a.direction == Direction::Incoming
                        && crate::netgroup::Netgroup::of(a.remote_addr.ip()) == group
                })
            })
            .count()
    }

    /// Incoming connections running or admitted (the closing ones excepted). O(admitted
    /// attempts): the running ones are counted as they open and close.
    fn incoming_count(&self) -> usize {
        let admitted = self
            .pending
            .values()
            .filter(|id| {
                self.attempts
                    .get(id)
                    .is_some_and(|a| a.direction == Direction::Incoming)
            })
            .count();
        self.incoming_open + admitted
    }

    /// Incoming connections established and not closing, counted over the table (what
    /// `incoming_open` must equal).
    pub(super) fn incoming_open_recounted(&self) -> usize {
        self.connections
            .values()
            .filter(|c| {
                c.view.direction == Direction::Incoming && !self.closing.contains(&c.view.id)
            })
            .count()
    }

    /// The checks for a peer that announced no listening port (there is no point to check).
    fn check_peer_only(&self, peer_id: &PeerId) -> Result<(), PoolError> {
        let nowhere = Point::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        if self.pool.peer_banned(peer_id) {
            return Err(PoolError::PeerBanned(*peer_id));
        }
        let trusted = self.pool.peer(peer_id).is_some_and(|p| p.trusted);
        if self.pool.config().private_mode && !trusted {
            return Err(PoolError::PrivateMode(nowhere));
        }
        match self.pool.peer_state(peer_id) {
            Some(PeerState::Disconnected) | None => Ok(()),
            Some(_) => Err(PoolError::AlreadyConnected(nowhere)),
        }
    }
}
