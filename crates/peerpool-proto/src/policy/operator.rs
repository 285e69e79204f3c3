//! What the application or an operator asks of the pool (BEHAVIOUR.md §4.5, §5 "Manual
//! actions"): bans, trust, greylisting, expected peer ids, disconnections, shutdown. Each
//! keeps the connections consistent: a ban closes what it bans.

use super::{ConnectionPolicy, DisconnectReason};
use crate::identity::PeerId;
use crate::point::Point;
use crate::pool::{PeerMeta, PoolError, Time};
use std::net::IpAddr;

impl<M: PeerMeta + Send + 'static> ConnectionPolicy<M> {
    fn close_peer(&mut self, peer_id: &PeerId, reason: DisconnectReason) {
        if let Some(id) = self.by_peer.get(peer_id).copied() {
            self.close(id, reason);
        }
    }

    fn close_addr(&mut self, ip: IpAddr, reason: DisconnectReason) {
        let doomed: Vec<_> = self
            .connections
            .values()
            .filter(|c| c.view.remote_addr.ip() == ip)
            .map(|c| c.view.id)
            .collect();
        for id in doomed {
            self.close(id, reason);
        }
    }

    /// Closes the connection with `peer_id`, if there is one (a Disconnect is sent).
    pub fn disconnect(&mut self, now: Time, peer_id: &PeerId) {
        self.clock.set(now);
        self.close_peer(peer_id, DisconnectReason::Requested);
        self.finish(now);
    }

    /// Closes every connection (octez `tear_down_connections`); the node keeps running.
    pub fn tear_down(&mut self, now: Time) {
        self.clock.set(now);
        let all: Vec<_> = self.connections.keys().copied().collect();
        for id in all {
            self.close(id, DisconnectReason::TearDown);
        }
        self.finish(now);
    }

    /// Stops for good: no new attempt starts, no more dials are planned, every connection
    /// is closed (reason `Shutdown`). The runtime then drains and saves the peers file.
    pub fn shutdown(&mut self, now: Time) {
        self.clock.set(now);
        self.stopping = true;
        self.active = false;
        self.maintenance.next_idle = None;
        self.next_save = None;
        let all: Vec<_> = self.connections.keys().copied().collect();
        for id in all {
            self.close(id, DisconnectReason::Shutdown);
        }
        self.finish(now);
    }

    /// Greylists a peer: its id, and the address it is connected from or was last seen at
    /// (octez does nothing once the peer has left, BEHAVIOUR.md §13.3); closes its
    /// connection.
    pub fn greylist_peer(&mut self, now: Time, peer_id: &PeerId) {
        self.clock.set(now);
        self.pool.greylist_peer(now, peer_id);
        self.close_peer(peer_id, DisconnectReason::Greylisted);
        self.finish(now);
    }

    /// Greylists an address (for `ip_greylist_cleanup_delay`); connections from it stay.
    pub fn greylist_addr(&mut self, now: Time, ip: IpAddr) {
        self.clock.set(now);
        self.pool.greylist_addr(now, ip);
        self.finish(now);
    }

    /// Peer `ban`: untrust, blacklist, close its connection.
    pub fn ban_peer(&mut self, now: Time, peer_id: &PeerId) {
        self.clock.set(now);
        let _ = self.pool.ban_peer(peer_id);
        self.close_peer(peer_id, DisconnectReason::PeerBanned);
        self.finish(now);
    }

    /// Point `ban`: untrust the point, blacklist its IP and the peers connected from it,
    /// close every connection from that IP.
    pub fn ban_point(&mut self, now: Time, point: &Point) {
        self.clock.set(now);
        for d in self.pool.ban_point(point) {
            self.close_peer(&d.peer_id, DisconnectReason::AddrBanned);
        }
        self.close_addr(point.ip(), DisconnectReason::AddrBanned);
        self.finish(now);
    }

    /// Point `trust`: unban its IP and the peers connected from it, then trust it.
    pub fn trust_point(&mut self, now: Time, point: Point) {
        self.clock.set(now);
        self.pool.trust_point(now, point);
        self.new_candidate();
        self.sync_trust();
        self.finish(now);
    }

    /// Point `open`: unban and untrust.
    pub fn open_point(&mut self, now: Time, point: &Point) {
        self.clock.set(now);
        self.pool.open_point(point);
        self.sync_trust();
        self.finish(now);
    }

    /// Peer `trust`: unban, then trust.
    pub fn trust_peer(&mut self, now: Time, peer_id: PeerId) {
        self.clock.set(now);
        self.pool.trust_peer(now, peer_id);
        self.sync_trust();
        self.finish(now);
    }

    /// Peer `open`: unban and untrust.
    pub fn open_peer(&mut self, now: Time, peer_id: &PeerId) {
        self.clock.set(now);
        self.pool.open_peer(peer_id);
        self.sync_trust();
        self.finish(now);
    }

    /// Records that `point` must present `peer_id` (BEHAVIOUR.md §4.5); a running
    /// connection there with another peer is closed and its address greylisted.
    pub fn set_expected_peer_id(&mut self, now: Time, point: Point, peer_id: PeerId) {
        self.clock.set(now);
        let outcome = self.pool.set_expected_peer_id(now, point, peer_id);
        self.expected_outcome(outcome);
        self.finish(now);
    }

    /// A point heard of through local discovery (BEHAVIOUR.md §8): registered, unless it
    /// is ours; a maintenance waiting for points looks again.
    pub fn handle_discovered(&mut self, now: Time, point: Point) {
        self.clock.set(now);
        if !self.pool.is_my_point(&point) {
            self.pool.register_list_of_new_points(
                now,
                crate::pool::Medium::Discovery,
                None,
                [point],
            );
        }
        self.finish(now);
    }

    /// Replaces a peer's metadata. Errors: [`PoolError::UnknownPeer`].
    pub fn set_peer_metadata(&mut self, peer_id: &PeerId, metadata: M) -> Result<(), PoolError> {
        self.pool.set_peer_metadata(peer_id, metadata)
    }

    /// Empties the peer and IP greylists; manual bans stay.
    pub fn clear_greylist(&mut self) {
        self.pool.clear_greylist();
    }

    /// Empties all four access lists (octez `DELETE /network/greylist`).
    pub fn acl_clear(&mut self) {
        self.pool.acl_clear();
    }
}
