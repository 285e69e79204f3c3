//! The pool's ACL operations (BEHAVIOUR.md §5): ban, unban, trust, untrust and open of
//! points and peers, greylisting, and the failure policy. The lists themselves are
//! [`super::acl::Acl`].

use super::acl::{acl_action, Acl, AclAction, Failure};
use super::base::{PeerMeta, Pool};
use super::peer_state::PeerState;
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;
use std::net::IpAddr;

/// A connection the runtime must close after a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    /// Where.
    pub point: Point,
    /// Whom.
    pub peer_id: PeerId,
}

impl<M: PeerMeta> Pool<M> {
    // ----- ACL (§5) -----------------------------------------------------------------------

    /// The access lists.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// Whether `point`'s IP is blacklisted or greylisted (octez `Points.banned`).
    pub fn point_banned(&self, point: &Point) -> bool {
        self.acl.banned_addr(point.ip())
    }

    /// Whether `peer_id` is blacklisted or greylisted; a trusted peer is never banned.
    pub fn peer_banned(&self, peer_id: &PeerId) -> bool {
        !self.known_peer_ids.get(peer_id).is_some_and(|p| p.trusted)
            && self.acl.banned_peer(peer_id)
    }

    /// Greylists an IP from `now` for at least `ip_greylist_cleanup_delay`.
    pub fn greylist_addr(&mut self, now: Time, ip: IpAddr) {
        self.acl.greylist_addr(now, ip);
    }

    /// Greylists `peer_id` and the IP it is connected from, or if it is not connected, the
    /// last address it was seen at (octez does nothing once the peer has left, §13.3).
    /// Returns the IP greylisted, if any address is known.
    pub fn greylist_peer(&mut self, now: Time, peer_id: &PeerId) -> Option<IpAddr> {
        self.acl.greylist_peer(*peer_id);
        let ip = self.known_peer_ids.get(peer_id)?.last_known_addr()?;
        self.acl.greylist_addr(now, ip);
        Some(ip)
    }

    /// Applies the §5 policy for `failure` at `point` with `peer_id` (when known), and
    /// returns what was decided; the runtime closes the connection when told to.
    pub fn apply_failure(
        &mut self,
        now: Time,
        failure: Failure,
        ip: IpAddr,
        peer_id: Option<PeerId>,
    ) -> AclAction {
        let action = acl_action(failure);
        match action {
            AclAction::Ignore => {}
            AclAction::GreylistAddr | AclAction::GreylistAddrAndDisconnect => {
                self.acl.greylist_addr(now, ip);
            }
            AclAction::GreylistPeer => {
                self.acl.greylist_addr(now, ip);
                if let Some(p) = peer_id {
                    self.acl.greylist_peer(p);
                }
            }
        }
        action
    }

    /// Empties the peer and IP greylists; manual bans stay.
    pub fn clear_greylist(&mut self) {
        self.acl.clear_greylists();
    }

    /// Runs the IP-greylist countdowns due at `now` (call at [`Pool::poll_timeout`]).
    pub fn gc_greylist(&mut self, now: Time) {
        self.acl.gc_greylist(now);
    }

    /// Empties all four access lists (octez `DELETE /network/greylist`).
    pub fn acl_clear(&mut self) {
        self.acl.clear();
    }

    /// Point `ban` (RPC): untrust, blacklist the IP, and blacklist the peer of every Running
    /// connection from that IP. Returns the connections to close (`IP_manually_banned`).
    pub fn ban_point(&mut self, point: &Point) -> Vec<Disconnect> {
        if let Some(info) = self.known_points.get_mut(point) {
            info.trusted = false;
        }
        let ip = point.ip();
        self.acl.ban_addr(ip);
        let doomed: Vec<Disconnect> = self.running_from(ip);
        for d in &doomed {
            if let Some(p) = self.known_peer_ids.get_mut(&d.peer_id) {
                p.trusted = false;
            }
            self.acl.ban_peer(d.peer_id);
        }
        doomed
    }

    fn running_from(&self, ip: IpAddr) -> Vec<Disconnect> {
        let mut v: Vec<Disconnect> = self
            .connected_points
            .iter()
            .filter(|p| p.ip() == ip)
            .filter_map(|p| {
                let peer_id = self.known_points.get(p)?.current_peer_id()?;
                Some(Disconnect { point: *p, peer_id })
            })
            .collect();
        v.sort_by_key(|d| d.point);
        v
    }

    /// Unbans `point`'s IP (blacklist and greylist).
    pub fn unban_point(&mut self, point: &Point) {
        self.acl.unban_addr(point.ip());
    }

    /// Point `trust` (RPC): unban the IP and the peers of its current connections, then
    /// trust it (registering it if unknown).
    pub fn trust_point(&mut self, now: Time, point: Point) {
        self.acl.unban_addr(point.ip());
        for d in self.running_from(point.ip()) {
            self.acl.unban_peer(&d.peer_id);
        }
        self.register_point(now, point, Some(true), None);
    }

    /// Clears a point's trust.
    pub fn untrust_point(&mut self, point: &Point) {
        if let Some(info) = self.known_points.get_mut(point) {
            info.trusted = false;
        }
    }

    /// Point `open` (RPC): unban and untrust.
    pub fn open_point(&mut self, point: &Point) {
        self.unban_point(point);
        self.untrust_point(point);
    }

    /// Peer `ban` (RPC): untrust and blacklist. Returns the connection to close
    /// (`Peer_id_manually_banned`) if the peer is Running.
    pub fn ban_peer(&mut self, peer_id: &PeerId) -> Option<Disconnect> {
        self.acl.ban_peer(*peer_id);
        let info = self.known_peer_ids.get_mut(peer_id)?;
        info.trusted = false;
        match info.state() {
            PeerState::Running { point } => Some(Disconnect {
                point: point.point()?,
                peer_id: *peer_id,
            }),
            _ => None,
        }
    }

    /// Removes `peer_id` from both peer lists.
    pub fn unban_peer(&mut self, peer_id: &PeerId) {
        self.acl.unban_peer(peer_id);
    }

    /// Peer `trust` (RPC): unban, then trust (registering the peer if unknown).
    pub fn trust_peer(&mut self, now: Time, peer_id: PeerId) {
        self.acl.unban_peer(&peer_id);
        self.register_peer(now, peer_id);
        if let Some(p) = self.known_peer_ids.get_mut(&peer_id) {
            p.trusted = true;
        }
    }

    /// Clears a peer's trust.
    pub fn untrust_peer(&mut self, peer_id: &PeerId) {
        if let Some(p) = self.known_peer_ids.get_mut(peer_id) {
            p.trusted = false;
        }
    }

    /// Peer `open` (RPC): unban and untrust.
    pub fn open_peer(&mut self, peer_id: &PeerId) {
        self.unban_peer(peer_id);
        self.untrust_peer(peer_id);
    }
}
