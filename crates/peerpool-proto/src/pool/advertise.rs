//! `list_known_points` (BEHAVIOUR.md §4.4): which points the pool advertises.

use super::base::{PeerMeta, Pool};
use super::point_state::PointState;
use crate::point::Point;
use rand::RngCore;

impl<M: PeerMeta> Pool<M> {
    // ----- list_known_points (§4.4) ----------------------------------------------------------

    /// Up to `size` points to advertise (Bootstrap answers, Nack lists): 3/5 "good" and 2/5
    /// random (`other = size·2/5`, `best = size − other`).
    ///
    /// Eligible: IP not banned; with `ignore_private`, `known_public` only. In private mode
    /// nothing is advertised. "Good" = connected points (Requested/Accepted/Running),
    /// those never seen first then the oldest `last_seen`, then Disconnected points, the most
    /// recently seen first; ties are broken at random (a transitive order, unlike octez's
    /// coin-flip comparator). If more than `size` are eligible, returns the `best` first
    /// plus `other` distinct random ones from the rest (octez draws with replacement and
    /// may return fewer). Cost: O(n) in the known points.
    pub fn list_known_points(
        &self,
        ignore_private: bool,
        size: usize,
        rng: &mut impl RngCore,
    ) -> Vec<Point> {
        if self.config.private_mode || size == 0 {
            return Vec::new();
        }
        let mut c: Vec<((u8, u128, u64), Point)> = self
            .known_points
            .values()
            .filter(|p| (!ignore_private || p.known_public) && !self.point_banned(&p.point()))
            .map(|p| {
                let seen = p.last_seen().map(|(_, t)| t.as_unix().as_nanos());
                let key = if p.state() == PointState::Disconnected {
                    (1, u128::MAX - seen.map_or(0, |s| s.saturating_add(1)), 0)
                } else {
                    (0, seen.map_or(0, |s| s.saturating_add(1)), 0)
                };
                (key, p.point())
            })
            .collect();
        for (k, _) in &mut c {
            k.2 = rng.next_u64();
        }
        let other = size * 2 / 5;
        let best = size - other;
        if c.len() <= size {
            c.sort_unstable();
            return c.into_iter().map(|(_, p)| p).collect();
        }
        c.select_nth_unstable(best);
        let (head, rest) = c.split_at_mut(best);
        head.sort_unstable();
        let mut out: Vec<Point> = head.iter().map(|(_, p)| *p).collect();
        let picks = rand::seq::index::sample(rng, rest.len(), other);
        out.extend(picks.into_iter().map(|i| rest[i].1));
        out
    }
}
