//! The pool's tables to and from peers-file records (BEHAVIOUR.md §4.6); the text form is
//! [`super::peers_file`].

use super::base::{PeerMeta, Pool};
use super::peer_state::PeerInfo;
use super::peers_file::{PeerRecord, PointRecord};
use super::time::Time;
use crate::identity::PeerId;
use std::collections::HashMap;

impl<M: PeerMeta> Pool<M> {
    // ----- peers file (§4.6) ---------------------------------------------------------------

    /// The peers file records of the whole pool, sorted by peer id. Each point is saved
    /// under the peer of its `last_seen`, else its expected peer id; points with neither
    /// are not saved.
    pub fn peer_records(&self) -> Vec<PeerRecord<M>> {
        let mut by_peer: HashMap<PeerId, Vec<PointRecord>> = HashMap::new();
        for p in self.known_points.values() {
            let Some(owner) = p.last_seen().map(|s| s.0).or(p.expected_peer_id) else {
                continue;
            };
            if !self.known_peer_ids.contains_key(&owner) {
                continue;
            }
            by_peer.entry(owner).or_default().push(PointRecord {
                point: p.point(),
                trusted: p.trusted,
                known_public: p.known_public,
                expected_peer_id: p.expected_peer_id,
                last_failed_connection: p.last_failed_connection(),
                last_rejected_connection: p.last_rejected_connection(),
                last_established_connection: p.last_established_connection(),
                last_disconnection: p.last_disconnection(),
            });
        }
        let mut out: Vec<PeerRecord<M>> = self
            .known_peer_ids
            .values()
            .map(|p| {
                let mut points = by_peer.remove(&p.peer_id()).unwrap_or_default();
                points.sort_by_key(|r| r.point);
                PeerRecord {
                    peer_id: p.peer_id(),
                    created: p.created(),
                    trusted: p.trusted,
                    peer_metadata: p.metadata.clone(),
                    events: p.events().copied().collect(),
                    last_failed_connection: p.last_failed_connection(),
                    last_rejected_connection: p.last_rejected_connection(),
                    last_established_connection: p.last_established_connection(),
                    last_disconnection: p.last_disconnection(),
                    points,
                }
            })
            .collect();
        out.sort_by_key(|r| r.peer_id);
        out
    }

    /// Loads records read from a peers file: each unknown peer is added Disconnected with
    /// its history; its `last_seen` point (if it has a port) and its saved points are
    /// registered with their flags and history. Entries already known keep their live
    /// state. Then GC runs if a table is above its max. Returns the number of peers added.
    pub fn load_peer_records(
        &mut self,
        now: Time,
        records: impl IntoIterator<Item = PeerRecord<M>>,
    ) -> usize {
        let mut added = 0;
        for r in records {
            if self.known_peer_ids.contains_key(&r.peer_id) {
                continue;
            }
            let mut info = PeerInfo::new(r.peer_id, r.created, r.peer_metadata);
            info.trusted = r.trusted;
            info.restore(
                [
                    r.last_failed_connection,
                    r.last_rejected_connection,
                    r.last_established_connection,
                    r.last_disconnection,
                ],
                r.events,
            );
            let seen_point = info.last_seen().and_then(|(p, _)| p.point());
            self.known_peer_ids.insert(r.peer_id, info);
            added += 1;
            if let Some(p) = seen_point {
                self.register_new_point(now, p);
            }
            for pr in r.points {
                if self.is_my_point(&pr.point) {
                    continue;
                }
                let reg = self.register_point(now, pr.point, None, None);
                if let Some(info) = self.known_points.get_mut(&pr.point) {
                    info.trusted |= pr.trusted;
                    info.known_public |= pr.known_public;
                    if info.expected_peer_id.is_none() {
                        info.expected_peer_id = pr.expected_peer_id;
                    }
                    if reg.new || info.last_seen().is_none() && info.last_miss().is_none() {
                        info.restore_history(
                            pr.last_failed_connection,
                            pr.last_rejected_connection,
                            pr.last_established_connection,
                            pr.last_disconnection,
                        );
                    }
                }
            }
        }
        if self.known_peer_ids.len() > self.config.max_known_peer_ids.0 {
            self.gc_peer_ids();
        }
        if self.known_points.len() > self.config.max_known_points.0 {
            self.gc_points(now);
        }
        added
    }
}
