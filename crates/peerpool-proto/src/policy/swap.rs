//! Swap (BEHAVIOUR.md §7.4): rewire the graph while keeping degrees. When the maintenance
//! is in bounds it proposes to a random public peer A one of its other peers B (its
//! point and id); A, if it has not swapped within `swap_linger`, answers with one of its
//! own peers C, dials B, and on success drops C; we, on A's ack, dial C and on success drop
//! B. Each side ends with the same number of connections.
//!
//! octez's quirks fixed: a node with swap disabled neither sends nor answers swaps (octez
//! still sends requests), and an ack is honoured only for a request we sent on that
//! connection less than `swap_linger` ago, once (octez keeps the request forever).

use super::{Action, ConnectionId, ConnectionPolicy, ControlMessage, DisconnectReason};
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{P2pEvent, PeerMeta, PointState, Time};
use rand::seq::IndexedRandom;
use std::collections::BTreeMap;

/// A swap request we sent, on the connection it was sent on.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Time,
    /// The peer we proposed: the one we drop if the swap succeeds.
    proposed: PeerId,
}

/// A swap dial in flight.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// The peer to drop when the dial succeeds.
    drop: PeerId,
    /// Who we swapped with.
    source: PeerId,
}

/// The swap state of a node.
#[derive(Debug, Default)]
pub(super) struct Swaps {
    latest_accepted: Option<Time>,
    latest_successful: Option<Time>,
    sent: BTreeMap<ConnectionId, Sent>,
    running: BTreeMap<ConnectionId, Running>,
}

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    fn swap_enabled(&self) -> bool {
        self.config.swap_linger.is_some() && !self.pool.config().private_mode
    }

    /// Live, public connections with a known listening point: `(id, peer, point)`.
    fn swappable(&self) -> Vec<(ConnectionId, PeerId, Option<Point>)> {
        self.connections
            .values()
            .filter(|c| !c.view.private && !self.closing.contains(&c.view.id))
            .map(|c| (c.view.id, c.view.peer_id, c.view.point))
            .collect()
    }

    /// In bounds: proposes one swap to a random public peer.
    pub(super) fn propose_swap(&mut self, now: Time) {
        if !self.swap_enabled() {
            return;
        }
        let peers = self.swappable();
        let Some(&(to, to_peer, _)) = peers.choose(&mut self.rng) else {
            return;
        };
        let others: Vec<_> = peers
            .iter()
            .filter(|(id, _, point)| *id != to && point.is_some())
            .collect();
        let Some(&&(_, proposed, Some(point))) = others.choose(&mut self.rng) else {
            return;
        };
        self.actions.push_back(Action::Send {
            id: to,
            message: ControlMessage::SwapRequest(point, proposed),
        });
        self.swaps.sent.insert(to, Sent { at: now, proposed });
        self.pool
            .push_event(P2pEvent::SwapRequestSent { source: to_peer });
    }

    fn within_linger(&self, now: Time, since: Option<Time>) -> bool {
        match (self.config.swap_linger, since) {
            (Some(linger), Some(t)) => now.saturating_duration_since(t) < linger,
            _ => false,
        }
    }

    /// Whether `point` may be dialled for a swap: unknown, or known and Disconnected.
    fn swap_target_free(&self, point: &Point) -> bool {
        self.pool
            .point_state(point)
            .is_none_or(|s| s == PointState::Disconnected)
            && !self.pool.is_my_point(point)
    }

    fn start_swap(
        &mut self,
        now: Time,
        point: Point,
        expected: PeerId,
        drop: PeerId,
        source: PeerId,
    ) {
        self.swaps.latest_accepted = Some(now);
        if !self.pool.is_my_point(&point) {
            self.pool.register_point(now, point, None, None);
        }
        match self.start_dial(now, point, Some(expected)) {
            Ok(id) => {
                self.swaps.running.insert(id, Running { drop, source });
            }
            Err(_) => {
                self.swaps.latest_accepted = self.swaps.latest_successful;
                self.pool.push_event(P2pEvent::SwapFailure { source });
            }
        }
    }

    /// A Swap_request from connection `id` (peer `source`): connect to `point` and drop
    /// one of our peers, proposed back in a Swap_ack.
    pub(super) fn on_swap_request(
        &mut self,
        now: Time,
        id: ConnectionId,
        source: PeerId,
        point: Point,
        peer: PeerId,
    ) {
        self.pool
            .push_event(P2pEvent::SwapRequestReceived { source });
        if !self.swap_enabled() {
            return;
        }
        let recent = self.swaps.latest_successful.max(self.swaps.latest_accepted);
        if self.within_linger(now, recent)
            || !self.swap_target_free(&point)
            || peer == self.local_peer_id
        {
            self.pool
                .push_event(P2pEvent::SwapRequestIgnored { source });
            return;
        }
        let others: Vec<_> = self
            .swappable()
            .into_iter()
            .filter(|(c, p, pt)| *c != id && *p != peer && pt.is_some())
            .collect();
        let Some(&(_, proposed, Some(proposed_point))) = others.choose(&mut self.rng) else {
            self.pool
                .push_event(P2pEvent::SwapRequestIgnored { source });
            return;
        };
        self.actions.push_back(Action::Send {
            id,
            message: ControlMessage::SwapAck(proposed_point, proposed),
        });
        self.pool.push_event(P2pEvent::SwapAckSent { source });
        self.start_swap(now, point, peer, proposed, source);
    }

    /// A Swap_ack from connection `id`: honoured only for our recent request on it.
    pub(super) fn on_swap_ack(
        &mut self,
        now: Time,
        id: ConnectionId,
        source: PeerId,
        point: Point,
        peer: PeerId,
    ) {
        self.pool.push_event(P2pEvent::SwapAckReceived { source });
        if !self.swap_enabled() {
            return;
        }
        let Some(sent) = self.swaps.sent.remove(&id) else {
            return;
        };
        if !self.within_linger(now, Some(sent.at))
            || !self.swap_target_free(&point)
            || peer == self.local_peer_id
        {
            return;
        }
        self.start_swap(now, point, peer, sent.proposed, source);
    }

    /// A swap dial ended: on success drop the peer it replaces.
    pub(super) fn swap_attempt_ended(&mut self, now: Time, id: ConnectionId, established: bool) {
        let Some(run) = self.swaps.running.remove(&id) else {
            return;
        };
        if established {
            self.swaps.latest_successful = Some(now);
            self.pool
                .push_event(P2pEvent::SwapSuccess { source: run.source });
            if let Some(drop) = self.by_peer.get(&run.drop).copied() {
                self.close(drop, DisconnectReason::Swapped);
            }
        } else {
            self.swaps.latest_accepted = self.swaps.latest_successful;
            self.pool
                .push_event(P2pEvent::SwapFailure { source: run.source });
        }
    }

    /// A connection closed: a request sent on it no longer authorizes an ack.
    pub(super) fn swap_connection_closed(&mut self, id: ConnectionId) {
        self.swaps.sent.remove(&id);
    }
}
