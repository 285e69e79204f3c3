//! Registration of points and peer ids (BEHAVIOUR.md §4.2), our own points, expected peer
//! ids (§4.5), and read access to the tables.

use super::base::{PeerMeta, Pool};
use super::config::PoolError;
use super::events::{P2pEvent, Trigger};
use super::peer_state::{PeerInfo, PeerState};
use super::point_state::{PointInfo, PointState};
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;

/// How many of our own points the pool remembers (octez `my_id_points`, LRU of 7).
pub const MY_ID_POINTS: usize = 7;

/// The result of [`Pool::register_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The point was not known before.
    pub new: bool,
    /// What recording the expected peer id required, if one was given.
    pub expected: ExpectedPeerIdOutcome,
}

/// What [`Pool::set_expected_peer_id`] did (BEHAVIOUR.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedPeerIdOutcome {
    /// Recorded; the current connection (if any) matches or there is none.
    Recorded,
    /// The point is Accepted with another peer: its IP has been greylisted. The runtime
    /// should let the pending handshake fail.
    AddrGreylisted {
        /// The peer that is there instead.
        peer_id: PeerId,
    },
    /// The point is Running with another peer: its IP has been greylisted and the runtime
    /// must close the connection (reason `Unexpected_peer_id`).
    Disconnect {
        /// The point.
        point: Point,
        /// The peer to disconnect.
        peer_id: PeerId,
    },
}

/// Where a list of points came from, for [`Pool::register_list_of_new_points`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// An Advertise message.
    Advertise,
    /// The alternative points of a Nack.
    Nack,
    /// Local discovery.
    Discovery,
    /// Configuration or RPC.
    Config,
}

/// What [`Pool::register_list_of_new_points`] did; the runtime logs it as `get_points`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPoints {
    /// Where the list came from.
    pub medium: Medium,
    /// Who sent it.
    pub source: Option<PeerId>,
    /// How many points were in the list.
    pub received: usize,
    /// How many were new.
    pub added: usize,
}

impl<M: PeerMeta> Pool<M> {
    // ----- registration (§4.2) --------------------------------------------------------

    /// Adds `point` if unknown (running the points GC first if the table is full), or
    /// updates it. `trusted = Some(b)` sets or clears trust; `expected_peer_id` runs
    /// [`Pool::set_expected_peer_id`]. A new point raises [`Trigger::NewPoint`] and logs
    /// [`P2pEvent::NewPoint`].
    pub fn register_point(
        &mut self,
        now: Time,
        point: Point,
        trusted: Option<bool>,
        expected_peer_id: Option<PeerId>,
    ) -> Registration {
        let new = !self.known_points.contains_key(&point);
        if new {
            let (max, target) = self.config.max_known_points;
            if self.known_points.len() >= max {
                // Leave room for the new point so the table ends at `target` (octez ends one
                // above it, issue 3175).
                self.gc_points_to(now, target - 1);
            }
            self.known_points
                .insert(point, PointInfo::new(point, trusted.unwrap_or(false), None));
            self.raise(Trigger::NewPoint);
            self.push_event(P2pEvent::NewPoint { point });
        } else if let (Some(t), Some(info)) = (trusted, self.known_points.get_mut(&point)) {
            info.trusted = t;
        }
        let expected = match expected_peer_id {
            Some(peer_id) => self.record_expected_peer_id(now, point, peer_id),
            None => ExpectedPeerIdOutcome::Recorded,
        };
        Registration { new, expected }
    }

    /// [`Pool::register_point`] for points learned from the network (Advertise, Nack,
    /// incoming connections, discovery): refuses our own points. Returns whether the point
    /// is new. No other validation, as in octez: filtering happens when dialling.
    ///
    /// When the table is full and its GC finds nothing to remove (every point is
    /// connected, trusted or backing off), the point is not registered: the table stays
    /// bounded and keeps the history of the points it has.
    pub fn register_new_point(&mut self, now: Time, point: Point) -> bool {
        if self.my_id_points.contains(&point) {
            return false;
        }
        let (max, target) = self.config.max_known_points;
        if !self.known_points.contains_key(&point) && self.known_points.len() >= max {
            self.gc_points_to(now, target - 1);
            if self.known_points.len() >= max {
                return false;
            }
        }
        self.register_point(now, point, None, None).new
    }

    /// Registers every point of a list received from `source` through `medium`.
    pub fn register_list_of_new_points(
        &mut self,
        now: Time,
        medium: Medium,
        source: Option<PeerId>,
        points: impl IntoIterator<Item = Point>,
    ) -> NewPoints {
        let mut received = 0;
        let mut added = 0;
        for p in points {
            received += 1;
            added += usize::from(self.register_new_point(now, p));
        }
        NewPoints {
            medium,
            source,
            received,
            added,
        }
    }

    /// Forgets `point` (used after `Rejected_no_common_protocol`). Returns whether it was
    /// known.
    pub fn unregister_point(&mut self, point: &Point) -> bool {
        self.connected_points.remove(point);
        self.known_points.remove(point).is_some()
    }

    /// Adds `peer_id` if unknown with [`PeerMeta::initial`] metadata (running the peers GC
    /// first if full). Returns whether it is new; a new peer raises [`Trigger::NewPeer`] and
    /// logs [`P2pEvent::NewPeer`].
    pub fn register_peer(&mut self, now: Time, peer_id: PeerId) -> bool {
        if self.known_peer_ids.contains_key(&peer_id) {
            return false;
        }
        let (max, target) = self.config.max_known_peer_ids;
        if self.known_peer_ids.len() >= max {
            self.gc_peer_ids_to(target - 1);
        }
        self.known_peer_ids
            .insert(peer_id, PeerInfo::new(peer_id, now, M::initial()));
        self.raise(Trigger::NewPeer);
        self.push_event(P2pEvent::NewPeer { peer_id });
        true
    }

    /// Records `point` as one of our own addresses (LRU of [`MY_ID_POINTS`]) and removes it
    /// from the known points.
    pub fn add_to_id_points(&mut self, point: Point) {
        self.my_id_points.retain(|p| *p != point);
        if self.my_id_points.len() >= MY_ID_POINTS {
            self.my_id_points.pop_front();
        }
        self.my_id_points.push_back(point);
        self.unregister_point(&point);
    }

    /// Whether `point` is one of our own addresses.
    pub fn is_my_point(&self, point: &Point) -> bool {
        self.my_id_points.contains(point)
    }

    /// Records that `point` must present `peer_id` (registering the point if unknown).
    /// If the point is Running with another peer, greylists its IP and tells the runtime to
    /// disconnect; if Accepted with another peer, greylists its IP (BEHAVIOUR.md §4.5).
    pub fn set_expected_peer_id(
        &mut self,
        now: Time,
        point: Point,
        peer_id: PeerId,
    ) -> ExpectedPeerIdOutcome {
        self.register_point(now, point, None, Some(peer_id))
            .expected
    }

    fn record_expected_peer_id(
        &mut self,
        now: Time,
        point: Point,
        peer_id: PeerId,
    ) -> ExpectedPeerIdOutcome {
        let Some(info) = self.known_points.get_mut(&point) else {
            return ExpectedPeerIdOutcome::Recorded;
        };
        info.expected_peer_id = Some(peer_id);
        match info.state() {
            PointState::Running { peer_id: other } if other != peer_id => {
                self.acl.greylist_addr(now, point.ip());
                ExpectedPeerIdOutcome::Disconnect {
                    point,
                    peer_id: other,
                }
            }
            PointState::Accepted { peer_id: other } if other != peer_id => {
                self.acl.greylist_addr(now, point.ip());
                ExpectedPeerIdOutcome::AddrGreylisted { peer_id: other }
            }
            _ => ExpectedPeerIdOutcome::Recorded,
        }
    }

    // ----- lookups ----------------------------------------------------------------------

    /// The info of a known point.
    pub fn point(&self, point: &Point) -> Option<&PointInfo> {
        self.known_points.get(point)
    }

    /// All known points, in no particular order.
    pub fn points(&self) -> impl Iterator<Item = &PointInfo> + '_ {
        self.known_points.values()
    }

    /// Number of known points.
    pub fn known_points_len(&self) -> usize {
        self.known_points.len()
    }

    /// The state of a known point.
    pub fn point_state(&self, point: &Point) -> Option<PointState> {
        self.known_points.get(point).map(PointInfo::state)
    }

    /// Points with a Running connection.
    pub fn connected_points(&self) -> impl Iterator<Item = &Point> + '_ {
        self.connected_points.iter()
    }

    /// The info of a known peer.
    pub fn peer(&self, peer_id: &PeerId) -> Option<&PeerInfo<M>> {
        self.known_peer_ids.get(peer_id)
    }

    /// All known peers, in no particular order.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo<M>> + '_ {
        self.known_peer_ids.values()
    }

    /// Number of known peer ids.
    pub fn known_peer_ids_len(&self) -> usize {
        self.known_peer_ids.len()
    }

    /// The state of a known peer.
    pub fn peer_state(&self, peer_id: &PeerId) -> Option<PeerState> {
        self.known_peer_ids.get(peer_id).map(PeerInfo::state)
    }

    /// Peers with a Running connection.
    pub fn connected_peer_ids(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.connected_peer_ids.iter()
    }

    /// Number of Running connections.
    pub fn active_connections(&self) -> usize {
        self.connected_peer_ids.len()
    }

    /// The GC score of a peer's metadata ([`PeerMeta::score`]).
    pub fn score(&self, peer_id: &PeerId) -> Option<f64> {
        self.known_peer_ids.get(peer_id).map(|p| p.metadata.score())
    }

    /// A peer's metadata.
    pub fn peer_metadata(&self, peer_id: &PeerId) -> Option<&M> {
        self.known_peer_ids.get(peer_id).map(|p| &p.metadata)
    }

    /// Replaces a peer's metadata. Errors: [`PoolError::UnknownPeer`].
    pub fn set_peer_metadata(&mut self, peer_id: &PeerId, metadata: M) -> Result<(), PoolError> {
        self.peer_mut(peer_id)?.metadata = metadata;
        Ok(())
    }

    /// Records whether a handshake showed `point`'s remote is public (not a private node).
    /// Errors: [`PoolError::UnknownPoint`].
    pub fn set_known_public(&mut self, point: &Point, public: bool) -> Result<(), PoolError> {
        self.point_mut(point)?.known_public = public;
        Ok(())
    }

    pub(super) fn point_mut(&mut self, point: &Point) -> Result<&mut PointInfo, PoolError> {
        self.known_points
            .get_mut(point)
            .ok_or(PoolError::UnknownPoint(*point))
    }

    pub(super) fn peer_mut(&mut self, peer_id: &PeerId) -> Result<&mut PeerInfo<M>, PoolError> {
        self.known_peer_ids
            .get_mut(peer_id)
            .ok_or(PoolError::UnknownPeer(*peer_id))
    }
}
