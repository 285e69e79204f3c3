//! Whether a connection may be made or accepted (BEHAVIOUR.md §1.2-1.3, §5) and which
//! points the maintenance may dial.

use super::base::{PeerMeta, Pool};
use super::config::PoolError;
use super::peer_state::PeerState;
use super::point_state::{PointInfo, PointState};
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;
use std::net::IpAddr;

impl<M: PeerMeta> Pool<M> {
    // ----- acceptance and dialling ----------------------------------------------------------

    fn point_trusted(&self, point: &Point) -> bool {
        self.known_points.get(point).is_some_and(|p| p.trusted)
    }

    fn peer_trusted(&self, peer_id: &PeerId) -> bool {
        self.known_peer_ids.get(peer_id).is_some_and(|p| p.trusted)
    }

    /// May we dial `point`? Not our own, IP not banned, and trusted in private mode. The
    /// backoff is not checked (an explicit connect ignores it, BEHAVIOUR.md §2.1).
    ///
    /// Errors: [`PoolError::Myself`], [`PoolError::PointBanned`], [`PoolError::PrivateMode`].
    pub fn check_dial(&self, point: &Point) -> Result<(), PoolError> {
        if self.is_my_point(point) {
            return Err(PoolError::Myself(*point));
        }
        if self.point_banned(point) {
            return Err(PoolError::PointBanned(point.ip()));
        }
        if self.config.private_mode && !self.point_trusted(point) {
            return Err(PoolError::PrivateMode(*point));
        }
        Ok(())
    }

    /// May an incoming connection from `ip` start a handshake? (The cheap check before
    /// the handshake.) Errors: [`PoolError::PointBanned`].
    pub fn check_incoming_addr(&self, ip: IpAddr) -> Result<(), PoolError> {
        if self.acl.banned_addr(ip) {
            return Err(PoolError::PointBanned(ip));
        }
        Ok(())
    }

    /// May the authenticated connection `point` ↔ `peer_id` proceed (either direction)?
    /// In this order (BEHAVIOUR.md §1.2-1.3): not our own point; the point's expected peer
    /// id, if any, matches; the IP and the peer are not banned (unless the point or the
    /// peer is trusted, for the IP); in private mode the point or the peer is trusted; the
    /// point is not Accepted/Running (nor Requested when `incoming`: we are dialling it
    /// ourselves) and the peer is not Accepted/Running. The slot check (too many
    /// connections) is the connect handler's.
    ///
    /// Errors: [`PoolError::Myself`], [`PoolError::IdentityCheckFailure`],
    /// [`PoolError::PointBanned`], [`PoolError::PeerBanned`], [`PoolError::PrivateMode`],
    /// [`PoolError::AlreadyConnected`].
    pub fn check_connection(
        &self,
        point: &Point,
        peer_id: &PeerId,
        incoming: bool,
    ) -> Result<(), PoolError> {
        if self.is_my_point(point) {
            return Err(PoolError::Myself(*point));
        }
        let info = self.known_points.get(point);
        if let Some(expected) = info.and_then(|i| i.expected_peer_id) {
            if expected != *peer_id {
                return Err(PoolError::IdentityCheckFailure {
                    point: *point,
                    expected,
                    got: *peer_id,
                });
            }
        }
        let trusted = self.point_trusted(point) || self.peer_trusted(peer_id);
        if self.point_banned(point) && !trusted {
            return Err(PoolError::PointBanned(point.ip()));
        }
        if self.peer_banned(peer_id) {
            return Err(PoolError::PeerBanned(*peer_id));
        }
        if self.config.private_mode && !trusted {
            return Err(PoolError::PrivateMode(*point));
        }
        let point_busy = match info.map(PointInfo::state) {
            Some(PointState::Accepted { .. } | PointState::Running { .. }) => true,
            Some(PointState::Requested) => incoming,
            _ => false,
        };
        let peer_busy = self
            .peer_state(peer_id)
            .is_some_and(|s| s != PeerState::Disconnected);
        if point_busy || peer_busy {
            return Err(PoolError::AlreadyConnected(*point));
        }
        Ok(())
    }

    /// The points the maintenance may dial now: Disconnected, past their backoff
    /// (`now > greylisted_until`), IP not banned, expected peer (if any) not banned, not
    /// our own, and trusted in private mode. Trusted points first, then the most recently
    /// seen; ties by point.
    pub fn candidates(&self, now: Time) -> Vec<Point> {
        let mut v: Vec<&PointInfo> = self
            .known_points
            .values()
            .filter(|p| {
                p.state() == PointState::Disconnected
                    && !p.cannot_reconnect_yet(now)
                    && !self.point_banned(&p.point())
                    && !p.expected_peer_id.is_some_and(|e| self.peer_banned(&e))
                    && (!self.config.private_mode || p.trusted)
                    && !self.is_my_point(&p.point())
            })
            .collect();
        v.sort_by(|a, b| {
            b.trusted
                .cmp(&a.trusted)
                .then_with(|| b.last_seen().map(|s| s.1).cmp(&a.last_seen().map(|s| s.1)))
                .then_with(|| a.point().cmp(&b.point()))
        });
        v.into_iter().map(PointInfo::point).collect()
    }
}
