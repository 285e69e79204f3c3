//! The application's side of the manager: tags, decaying tags, protection, and what the
//! eviction categories read (round-trip times, useful messages, trust).

use super::{
    Bump, ConnManager, ConnManagerError, Decay, DecayingTag, DecayingValue, ProtectionRule, TagInfo,
};
use crate::identity::PeerId;
use crate::policy::ConnectionId;
use crate::pool::Time;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

impl ConnManager {
    /// Sets `tag` on `peer` to `weight` (go-libp2p `TagPeer`). A peer without a connection
    /// keeps its tags for `temporary_tag_ttl`.
    ///
    /// Errors: [`ConnManagerError::Closed`].
    pub fn tag_peer(
        &mut self,
        now: Time,
        peer: PeerId,
        tag: &str,
        weight: i64,
    ) -> Result<(), ConnManagerError> {
        self.upsert_tag(now, peer, tag, |_| weight)
    }

    /// Removes `tag` from `peer` (go-libp2p `UntagPeer`).
    pub fn untag_peer(&mut self, now: Time, peer: &PeerId, tag: &str) {
        self.gc(now);
        if let Some(s) = self.slot(peer) {
            if let Some(e) = self.entry_mut(s) {
                e.tags.remove(tag);
            }
            self.refresh(s, now);
        }
    }

    /// Sets `tag` on `peer` to `f(current)`, the current value being 0 when the tag is
    /// not set (go-libp2p `UpsertTag`).
    ///
    /// Errors: [`ConnManagerError::Closed`].
    pub fn upsert_tag(
        &mut self,
        now: Time,
        peer: PeerId,
        tag: &str,
        f: impl FnOnce(i64) -> i64,
    ) -> Result<(), ConnManagerError> {
        self.check_open()?;
        self.gc(now);
        let s = self.slot_or_insert(now, peer);
        if let Some(e) = self.entry_mut(s) {
            let v = e.tags.entry(tag.to_owned()).or_insert(0);
            *v = f(*v);
        }
        self.refresh(s, now);
        Ok(())
    }

    /// Registers a decaying tag `name` (go-libp2p `RegisterDecayingTag`): every
    /// `interval` from `now`, `decay`; on each bump, `bump`.
    ///
    /// Errors: [`ConnManagerError::DecayingTag`] if `name` is taken,
    /// [`ConnManagerError::Decay`] for rules out of range, [`ConnManagerError::Closed`].
    pub fn register_decaying_tag(
        &mut self,
        now: Time,
        name: &str,
        interval: Duration,
        decay: Decay,
        bump: Bump,
    ) -> Result<(), ConnManagerError> {
        self.check_open()?;
        if self.decaying.contains_key(name) {
            return Err(ConnManagerError::DecayingTag(
                name.to_owned(),
                "already registered",
            ));
        }
        let tag = DecayingTag::new(now, interval, decay, bump)?;
        self.decaying.insert(name.to_owned(), tag);
        Ok(())
    }

    /// Bumps the decaying tag `name` of `peer` by `delta` at `now`.
    ///
    /// Errors: [`ConnManagerError::DecayingTag`] if `name` is not registered,
    /// [`ConnManagerError::Closed`].
    pub fn bump(
        &mut self,
        now: Time,
        peer: PeerId,
        name: &str,
        delta: i64,
    ) -> Result<(), ConnManagerError> {
        self.check_open()?;
        let Some(tag) = self.decaying.get(name).cloned() else {
            return Err(ConnManagerError::DecayingTag(
                name.to_owned(),
                "not registered",
            ));
        };
        self.gc(now);
        let s = self.slot_or_insert(now, peer);
        if let Some(e) = self.entry_mut(s) {
            let v = e
                .decaying
                .entry(name.to_owned())
                .or_insert_with(|| DecayingValue::new(&tag, now));
            if !v.decay_to(&tag, now) {
                *v = DecayingValue::new(&tag, now);
            }
            v.bump(&tag, now, delta);
        }
        self.refresh(s, now);
        Ok(())
    }

    /// Removes the decaying tag `name` from `peer`.
    pub fn remove_decaying(&mut self, now: Time, peer: &PeerId, name: &str) {
        if let Some(s) = self.slot(peer) {
            if let Some(e) = self.entry_mut(s) {
                e.decaying.remove(name);
            }
            self.refresh(s, now);
        }
    }

    /// The sum of `peer`'s tags at `now` (decaying ones decayed), without the rest of
    /// [`ConnManager::tag_info`]. `None` for a peer the manager does not know. O(1) unless
    /// a decaying tag has ticks to apply.
    pub fn peer_value(&mut self, now: Time, peer: &PeerId) -> Option<i64> {
        let s = self.slot(peer)?;
        Some(self.value_of(s, now))
    }

    /// What the manager knows of `peer` at `now` (go-libp2p `GetTagInfo`), with what
    /// protects it. `None` for a peer it does not know.
    pub fn tag_info(&mut self, now: Time, peer: &PeerId) -> Option<TagInfo> {
        self.gc(now);
        let s = self.slot(peer)?;
        self.refresh(s, now);
        let shields = if self.is_active() {
            self.shields(now)
        } else {
            HashMap::new()
        };
        let e = self.entry(s)?;
        let mut tags = e.tags.clone();
        for (name, v) in &e.decaying {
            tags.insert(name.clone(), v.value);
        }
        let conns: Vec<(ConnectionId, Time)> = e
            .conns
            .iter()
            .filter_map(|id| {
                self.conn_index
                    .get(id)
                    .map(|&i| (*id, self.conns[i].opened))
            })
            .collect();
        let mut protected_by: BTreeSet<ProtectionRule> = e
            .protections
            .iter()
            .map(|t| ProtectionRule::Tag(t.clone()))
            .collect();
        if e.trusted {
            protected_by.insert(ProtectionRule::Trusted);
        }
        for (id, _) in &conns {
            if let Some(rule) = shields.get(id) {
                protected_by.insert(rule.clone());
            }
        }
        Some(TagInfo {
            first_seen: e.first_seen,
            value: e.value,
            tags,
            conns,
            protected_by: protected_by.into_iter().collect(),
        })
    }

    /// Protects `peer` under `tag` (go-libp2p `Protect`): its connections are never
    /// trimmed or evicted.
    ///
    /// Errors: [`ConnManagerError::ProtectionBudget`] when the peer is not yet protected
    /// and `protection_budget` peers already are (the peer stays unprotected);
    /// [`ConnManagerError::Closed`].
    pub fn protect(&mut self, now: Time, peer: PeerId, tag: &str) -> Result<(), ConnManagerError> {
        self.check_open()?;
        self.gc(now);
        let already = self
            .slot(&peer)
            .and_then(|s| self.entry(s))
            .is_some_and(|e| !e.protections.is_empty());
        if !already && self.protected_peers >= self.limits.budget {
            return Err(ConnManagerError::ProtectionBudget {
                budget: self.limits.budget,
            });
        }
        let s = self.slot_or_insert(now, peer);
        if let Some(e) = self.entry_mut(s) {
            e.protections.insert(tag.to_owned());
        }
        if !already {
            self.protected_peers += 1;
            self.reindex_peer(s);
        }
        Ok(())
    }

    /// Removes the protection `tag` from `peer`; returns whether the peer is still
    /// protected by another tag (go-libp2p `Unprotect`).
    pub fn unprotect(&mut self, now: Time, peer: &PeerId, tag: &str) -> bool {
        let Some(s) = self.slot(peer) else {
            return false;
        };
        let (removed, still) = match self.entry_mut(s) {
            Some(e) => {
                let removed = e.protections.remove(tag);
                (removed, !e.protections.is_empty())
            }
            None => (false, false),
        };
        if removed && !still {
            self.protected_peers = self.protected_peers.saturating_sub(1);
            self.reindex_peer(s);
            // An unconnected peer's entry is dropped as a temporary entry would be.
            self.make_temporary(s, now);
        }
        still
    }

    /// Whether `peer` is protected under `tag`, or under any tag when `tag` is `None`
    /// (go-libp2p `IsProtected`).
    pub fn is_protected(&self, peer: &PeerId, tag: Option<&str>) -> bool {
        self.slot(peer)
            .and_then(|s| self.entry(s))
            .is_some_and(|e| match tag {
                Some(t) => e.protections.contains(t),
                None => !e.protections.is_empty(),
            })
    }

    /// Peers protected by `protect` now.
    pub fn protected_peers(&self) -> usize {
        self.protected_peers
    }

    /// Records a round-trip time measured with `peer` (used by the eviction's
    /// low-round-trip category).
    pub fn record_rtt(&mut self, peer: &PeerId, rtt: Duration) {
        let Some(s) = self.slot(peer) else { return };
        if let Some(e) = self.entry_mut(s) {
            e.rtt = Some(rtt);
        }
        self.reindex_peer(s);
    }

    /// Records that `peer` just sent something useful (a new block or operation; used by
    /// the eviction's recently-useful category).
    pub fn record_useful(&mut self, now: Time, peer: &PeerId) {
        let Some(s) = self.slot(peer) else { return };
        if let Some(e) = self.entry_mut(s) {
            e.last_useful = Some(now);
        }
        self.reindex_peer(s);
    }

    /// Marks `peer`'s connections as trusted (never trimmed or evicted) or not.
    pub fn set_trusted(&mut self, peer: &PeerId, trusted: bool) {
        let Some(s) = self.slot(peer) else { return };
        let changed = self.entry_mut(s).is_some_and(|e| {
            let changed = e.trusted != trusted;
            e.trusted = trusted;
            changed
        });
        if changed {
            self.reindex_peer(s);
        }
    }
}
