//! State transitions of points and peers through the pool (BEHAVIOUR.md §2): each keeps
//! the connected sets in step and logs the events and raises the triggers it implies.

use super::base::{PeerMeta, Pool};
use super::config::PoolError;
use super::events::{P2pEvent, Trigger};
use super::peer_state::{IdPoint, PeerState};
use super::point_state::PointState;
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;

impl<M: PeerMeta> Pool<M> {
    // ----- transitions ------------------------------------------------------------------

    /// Point Disconnected/Requested → Requested (we dial). Errors: unknown point, or the
    /// transition is refused.
    pub fn set_point_requested(&mut self, now: Time, point: &Point) -> Result<(), PoolError> {
        Ok(self.point_mut(point)?.set_requested(now)?)
    }

    /// Point Disconnected/Requested → Accepted(peer_id).
    pub fn set_point_accepted(
        &mut self,
        now: Time,
        point: &Point,
        peer_id: PeerId,
    ) -> Result<(), PoolError> {
        Ok(self.point_mut(point)?.set_accepted(now, peer_id)?)
    }

    /// Point → Running(peer_id); the point becomes connected.
    pub fn set_point_running(
        &mut self,
        now: Time,
        point: &Point,
        peer_id: PeerId,
    ) -> Result<(), PoolError> {
        self.point_mut(point)?.set_running(now, peer_id)?;
        self.connected_points.insert(*point);
        Ok(())
    }

    /// Point → Disconnected with backoff (see [`PointInfo::set_disconnected`]). A failed
    /// attempt logs [`P2pEvent::RequestRejected`]. Errors: unknown point.
    ///
    /// [`PointInfo::set_disconnected`]: super::PointInfo::set_disconnected
    pub fn set_point_disconnected(
        &mut self,
        now: Time,
        point: &Point,
        requested: bool,
    ) -> Result<(), PoolError> {
        let cfg = self.config.reconnection;
        let info = self.point_mut(point)?;
        let before = info.state();
        info.set_disconnected(now, requested, &cfg);
        self.connected_points.remove(point);
        match before {
            PointState::Requested => self.push_event(P2pEvent::RequestRejected {
                point: *point,
                identity: None,
            }),
            PointState::Accepted { peer_id } => self.push_event(P2pEvent::RequestRejected {
                point: *point,
                identity: Some((IdPoint::from(*point), peer_id)),
            }),
            _ => {}
        }
        Ok(())
    }

    /// Peer Disconnected → Accepted through `point`.
    pub fn set_peer_accepted(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        point: IdPoint,
    ) -> Result<(), PoolError> {
        Ok(self.peer_mut(peer_id)?.set_accepted(now, point)?)
    }

    /// Peer → Running through `point`: logs [`P2pEvent::ConnectionEstablished`], raises
    /// [`Trigger::NewConnection`], and [`Trigger::TooManyConnections`] above
    /// `max_connections`.
    pub fn set_peer_running(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        point: IdPoint,
    ) -> Result<(), PoolError> {
        self.peer_mut(peer_id)?.set_running(now, point)?;
        self.connected_peer_ids.insert(*peer_id);
        self.push_event(P2pEvent::ConnectionEstablished {
            id_point: point,
            peer_id: *peer_id,
        });
        self.raise(Trigger::NewConnection);
        if self.active_connections() > self.config.max_connections {
            self.raise(Trigger::TooManyConnections);
        }
        Ok(())
    }

    /// Peer → Disconnected. Ending a Running connection logs `Disconnection` (if
    /// `requested`) or `ExternalDisconnection`, and raises [`Trigger::TooFewConnections`]
    /// below `min_connections`. Errors: unknown peer.
    pub fn set_peer_disconnected(
        &mut self,
        now: Time,
        peer_id: &PeerId,
        requested: bool,
    ) -> Result<(), PoolError> {
        let info = self.peer_mut(peer_id)?;
        let was_running = matches!(info.state(), PeerState::Running { .. });
        info.set_disconnected(now, requested);
        self.connected_peer_ids.remove(peer_id);
        if was_running {
            let peer_id = *peer_id;
            self.push_event(if requested {
                P2pEvent::Disconnection { peer_id }
            } else {
                P2pEvent::ExternalDisconnection { peer_id }
            });
            if self.active_connections() < self.config.min_connections {
                self.raise(Trigger::TooFewConnections);
            }
        }
        Ok(())
    }
}
