//! Garbage collection of the known points and peer ids (BEHAVIOUR.md §4.3).

use super::base::{PeerMeta, Pool};
use super::events::P2pEvent;
use super::peer_state::PeerState;
use super::point_state::PointState;
use super::time::Time;
use crate::identity::PeerId;
use crate::point::Point;

impl<M: PeerMeta> Pool<M> {
    // ----- GC (§4.3) ----------------------------------------------------------------------

    /// Removes Disconnected, untrusted points with the oldest `last_miss` (never missed
    /// counts as "now": last) until at most `target` remain, or none of them is left.
    /// Returns how many were removed.
    ///
    /// A point still waiting out its backoff at `now` is kept: octez may drop it and learn
    /// it again, fresh, from the next Advertise or Nack, and then dial it at once, so a full
    /// table turns every refusal into a redial (found by the convergence benchmark).
    pub fn gc_points(&mut self, now: Time) -> usize {
        self.gc_points_to(now, self.config.max_known_points.1)
    }

    pub(super) fn gc_points_to(&mut self, now: Time, target: usize) -> usize {
        let excess = self.known_points.len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let mut candidates: Vec<(Time, Point)> = self
            .known_points
            .values()
            .filter(|p| {
                !p.trusted && p.state() == PointState::Disconnected && !p.cannot_reconnect_yet(now)
            })
            .map(|p| {
                (
                    p.last_miss()
                        .unwrap_or(Time::from_unix(std::time::Duration::MAX)),
                    p.point(),
                )
            })
            .collect();
        let n = excess.min(candidates.len());
        if n < candidates.len() {
            candidates.select_nth_unstable(n);
        }
        for (_, p) in &candidates[..n] {
            self.known_points.remove(p);
        }
        self.push_event(P2pEvent::GcPoints);
        n
    }

    /// Removes Disconnected, untrusted peers, lowest score first and among equal scores the
    /// most recently created (against floods), until at most `target` remain or none of
    /// them is left. Returns how many were removed.
    pub fn gc_peer_ids(&mut self) -> usize {
        self.gc_peer_ids_to(self.config.max_known_peer_ids.1)
    }

    pub(super) fn gc_peer_ids_to(&mut self, target: usize) -> usize {
        let excess = self.known_peer_ids.len().saturating_sub(target);
        if excess == 0 {
            return 0;
        }
        let mut candidates: Vec<(f64, std::cmp::Reverse<Time>, PeerId)> = self
            .known_peer_ids
            .values()
            .filter(|p| !p.trusted && p.state() == PeerState::Disconnected)
            .map(|p| {
                (
                    p.metadata.score(),
                    std::cmp::Reverse(p.created()),
                    p.peer_id(),
                )
            })
            .collect();
        let n = excess.min(candidates.len());
        let cmp = |a: &(f64, std::cmp::Reverse<Time>, PeerId),
                   b: &(f64, std::cmp::Reverse<Time>, PeerId)| {
            a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        if n < candidates.len() {
            candidates.select_nth_unstable_by(n, cmp);
        }
        for (_, _, p) in &candidates[..n] {
            self.known_peer_ids.remove(p);
        }
        self.push_event(P2pEvent::GcPeerIds);
        n
    }
}
