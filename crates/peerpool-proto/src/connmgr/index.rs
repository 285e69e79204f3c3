//! The ranking of [`super::rank`], kept up to date as connections, tags and protections
//! change, so that choosing victims touches only the worst few connections instead of
//! every one: O((k + c) log n) for k victims and c shielded connections met on the way.
//!
//! Each netgroup keeps its candidates (connections neither protected nor trusted) ordered
//! by the in-group order (duplicates, value, inbound, youngest, id), the mature ones apart
//! from those in their grace period; one ordered set holds each netgroup's best candidate
//! with the group's size (its "head"); four ordered sets serve the eviction categories.
//! A choice merges the netgroups lazily, best head first, as Bitcoin Core's one-at-a-time
//! eviction from the largest group would. Values that decay are brought up to date when
//! their tick is due, before a choice.
//!
//! `rank::rank` over every candidate stays as the reference (property tests compare the
//! two) and as the path for the rare trim that must override shields.

use super::rank::{rule, Key};
use super::{ConnManager, ProtectionRule, Victim};
use crate::handshake::Direction;
use crate::netgroup::Netgroup;
use crate::policy::ConnectionId;
use crate::pool::Time;
use std::cmp::Reverse;
use std::collections::{btree_set, BTreeMap, BTreeSet, BinaryHeap};
use std::iter::Peekable;
use std::time::Duration;

/// A candidate's place inside its netgroup: not a duplicate, value, not inbound, youngest
/// first, id.
pub(super) type GroupKey = (bool, i64, bool, Reverse<Time>, ConnectionId);

/// What a connection put in the index (to take it out again exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Indexed {
    key: GroupKey,
    young: bool,
    rtt: Option<Duration>,
    useful: Option<Time>,
}

/// One netgroup: its counts and its candidates.
#[derive(Debug, Clone, Default)]
pub(super) struct Group {
    /// Connections in it (candidates or not).
    pub all: usize,
    /// Incoming connections in it.
    pub incoming: usize,
    /// The netgroup under the manager's key.
    pub keyed: u64,
    /// Exempt from the per-netgroup share (loopback).
    pub exempt: bool,
    mature: BTreeSet<GroupKey>,
    young: BTreeSet<GroupKey>,
    by_age: BTreeSet<(Time, ConnectionId)>,
    head: Option<Key>,
}

/// The manager-wide sets.
#[derive(Debug, Default)]
pub(super) struct Index {
    heads: BTreeSet<(Key, Netgroup)>,
    young: BTreeSet<(Time, ConnectionId)>,
    by_rtt: BTreeSet<(Duration, ConnectionId)>,
    by_useful: BTreeSet<(Reverse<Time>, ConnectionId)>,
    by_age: BTreeSet<(Time, ConnectionId)>,
    by_keyed_group: BTreeSet<(u64, Netgroup)>,
    /// Peers whose custom-decayed value changes at the given time.
    pub due: BTreeSet<(Time, usize)>,
    candidates: usize,
    /// The latest `now` seen.
    pub now: Time,
}

impl Group {
    /// An empty group for a netgroup with this keyed hash.
    pub fn new(keyed: u64, exempt: bool) -> Self {
        Group {
            keyed,
            exempt,
            ..Group::default()
        }
    }
}

fn full_key(k: &GroupKey, remaining: usize) -> Key {
    Key {
        not_dup: k.0,
        value: k.1,
        remaining: Reverse(remaining),
        not_inbound: k.2,
        opened: k.3,
        id: k.4,
    }
}

/// Walks one netgroup's candidates in the in-group order (mature ones, and young ones too
/// when the group is over its share), skipping those the filter refuses.
struct Cursor<'a> {
    mature: Peekable<btree_set::Iter<'a, GroupKey>>,
    young: Option<Peekable<btree_set::Iter<'a, GroupKey>>>,
    size: usize,
    taken: usize,
    netgroup: Netgroup,
}

impl Cursor<'_> {
    fn next(&mut self, keep: &impl Fn(&GroupKey) -> bool) -> Option<GroupKey> {
        loop {
            let from_young = match (
                self.mature.peek(),
                self.young.as_mut().and_then(|y| y.peek()),
            ) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(m), Some(y)) => y < m,
            };
            let k = if from_young {
                self.young.as_mut().and_then(Iterator::next)
            } else {
                self.mature.next()
            }?;
            if keep(k) {
                return Some(*k);
            }
        }
    }
}

impl ConnManager {
    /// Whether a netgroup holds more than its share (its young connections lose grace).
    fn over_share(&self, g: &Group) -> bool {
        !g.exempt && g.all > self.limits.per_netgroup
    }

    /// The key connection `i` has in its netgroup now, if it is a candidate.
    fn group_key(&self, i: usize) -> Option<GroupKey> {
        let c = &self.conns[i];
        let e = self.entry(c.peer)?;
        if e.trusted || !e.protections.is_empty() {
            return None;
        }
        let dup = e.conns.iter().any(|other| {
            *other != c.id
                && self
                    .conn_index
                    .get(other)
                    .is_some_and(|&j| (self.conns[j].opened, *other) < (c.opened, c.id))
        });
        Some((
            !dup,
            e.floor,
            c.direction != Direction::Incoming,
            Reverse(c.opened),
            c.id,
        ))
    }

    /// Takes connection `i` out of the index.
    pub(super) fn unindex(&mut self, i: usize) {
        let c = self.conns[i];
        let Some(ix) = c.indexed else { return };
        self.conns[i].indexed = None;
        let idx = &mut self.index;
        idx.candidates -= 1;
        idx.by_age.remove(&(c.opened, c.id));
        if let Some(r) = ix.rtt {
            idx.by_rtt.remove(&(r, c.id));
        }
        if let Some(u) = ix.useful {
            idx.by_useful.remove(&(Reverse(u), c.id));
        }
        if ix.young {
            idx.young.remove(&(c.opened, c.id));
        }
        if let Some(g) = self.groups.get_mut(&c.netgroup) {
            if ix.young {
                g.young.remove(&ix.key);
            } else {
                g.mature.remove(&ix.key);
            }
            g.by_age.remove(&(c.opened, c.id));
            if g.by_age.is_empty() {
                self.index.by_keyed_group.remove(&(g.keyed, c.netgroup));
            }
        }
    }

    /// Puts connection `i` in the index if it is a candidate.
    pub(super) fn index(&mut self, i: usize) {
        let Some(key) = self.group_key(i) else { return };
        let c = self.conns[i];
        let (rtt, useful) = self
            .entry(c.peer)
            .map_or((None, None), |e| (e.rtt, e.last_useful));
        let young = self.index.now.saturating_duration_since(c.opened) < self.limits.grace;
        let idx = &mut self.index;
        idx.candidates += 1;
        idx.by_age.insert((c.opened, c.id));
        if let Some(r) = rtt {
            idx.by_rtt.insert((r, c.id));
        }
        if let Some(u) = useful {
            idx.by_useful.insert((Reverse(u), c.id));
        }
        if young {
            idx.young.insert((c.opened, c.id));
        }
        if let Some(g) = self.groups.get_mut(&c.netgroup) {
            if young {
                g.young.insert(key);
            } else {
                g.mature.insert(key);
            }
            g.by_age.insert((c.opened, c.id));
            self.index.by_keyed_group.insert((g.keyed, c.netgroup));
        }
        self.conns[i].indexed = Some(Indexed {
            key,
            young,
            rtt,
            useful,
        });
    }

    /// Recomputes netgroup `ng`'s head (its best candidate, with its size); drops the
    /// group when it holds no connection.
    pub(super) fn refresh_head(&mut self, ng: Netgroup) {
        let Some(g) = self.groups.get(&ng) else {
            return;
        };
        let old = g.head;
        let mut best = g.mature.first().copied();
        if self.over_share(g) {
            if let Some(y) = g.young.first() {
                best = Some(best.map_or(*y, |m| m.min(*y)));
            }
        }
        let new = best.map(|k| full_key(&k, g.all));
        let empty = g.all == 0;
        if let Some(o) = old {
            self.index.heads.remove(&(o, ng));
        }
        if empty {
            self.groups.remove(&ng);
            return;
        }
        if let Some(n) = new {
            self.index.heads.insert((n, ng));
        }
        if let Some(g) = self.groups.get_mut(&ng) {
            g.head = new;
        }
    }

    /// Re-indexes every connection of the peer in `slot` (its value, protection, trust,
    /// round-trip time or usefulness changed).
    pub(super) fn reindex_peer(&mut self, slot: usize) {
        let ids = self
            .entry(slot)
            .map(|e| e.conns.clone())
            .unwrap_or_default();
        let mut touched = BTreeSet::new();
        for id in ids {
            if let Some(&i) = self.conn_index.get(&id) {
                self.unindex(i);
                self.index(i);
                touched.insert(self.conns[i].netgroup);
            }
        }
        for ng in touched {
            self.refresh_head(ng);
        }
    }

    /// Brings the index to `now`: connections whose grace has ended become mature, values
    /// whose decay tick is due are recomputed.
    pub(super) fn catch_up(&mut self, now: Time) {
        if now > self.index.now {
            self.index.now = now;
        }
        let grace = self.limits.grace;
        while let Some(&(opened, id)) = self.index.young.first() {
            if opened.saturating_add(grace) > now {
                break;
            }
            self.index.young.pop_first();
            let Some(&i) = self.conn_index.get(&id) else {
                continue;
            };
            let c = self.conns[i];
            let Some(mut ix) = c.indexed else { continue };
            if let Some(g) = self.groups.get_mut(&c.netgroup) {
                g.young.remove(&ix.key);
                g.mature.insert(ix.key);
            }
            ix.young = false;
            self.conns[i].indexed = Some(ix);
            self.refresh_head(c.netgroup);
        }
        while let Some(&(at, slot)) = self.index.due.first() {
            if at > now {
                break;
            }
            self.refresh(slot, now);
            // `refresh` moved the peer to its next custom tick (or out of the set).
            self.index.due.remove(&(at, slot));
        }
    }

    /// The eviction categories (per category, `min(protect_per_category, candidates / 8)`
    /// connections): one per netgroup for the lowest keyed netgroups (its oldest), the
    /// lowest round-trip times, the most recently useful, the oldest.
    fn category_shields(&self) -> BTreeMap<ConnectionId, ProtectionRule> {
        let mut out = BTreeMap::new();
        let k = self.limits.per_category.min(self.index.candidates / 8);
        if k == 0 {
            return out;
        }
        for (_, ng) in self.index.by_keyed_group.iter().take(k) {
            if let Some(&(_, id)) = self.groups.get(ng).and_then(|g| g.by_age.first()) {
                out.insert(id, ProtectionRule::Netgroup);
            }
        }
        let mut take = |ids: &mut dyn Iterator<Item = ConnectionId>, rule: ProtectionRule| {
            let mut n = 0;
            for id in ids {
                if n == k {
                    break;
                }
                if let std::collections::btree_map::Entry::Vacant(v) = out.entry(id) {
                    v.insert(rule.clone());
                    n += 1;
                }
            }
        };
        take(
            &mut self.index.by_rtt.iter().map(|x| x.1),
            ProtectionRule::LowRoundTrip,
        );
        take(
            &mut self.index.by_useful.iter().map(|x| x.1),
            ProtectionRule::RecentlyUseful,
        );
        take(
            &mut self.index.by_age.iter().map(|x| x.1),
            ProtectionRule::LongestUptime,
        );
        out
    }

    /// The `take` worst candidates that `keep` accepts, worst first, each with its full
    /// key, by a lazy merge of the netgroups. Every key in the merge is a lower bound of
    /// the candidate's true key (its value may be above the indexed floor, its group may
    /// have lost members since it was keyed); a candidate is taken only when its key,
    /// recomputed at `now`, is still the smallest. A group joins the merge when its head
    /// (the lower bound of all its candidates) comes up; its next candidate joins when the
    /// previous one is resolved.
    fn walk(
        &self,
        now: Time,
        take: usize,
        keep: impl Fn(&GroupKey) -> bool,
    ) -> Vec<(Key, Netgroup)> {
        let mut out = Vec::with_capacity(take.min(self.index.candidates));
        let mut heads = self.index.heads.iter().peekable();
        let mut cursors: Vec<Cursor<'_>> = Vec::new();
        // (lower bound, cursor, resolved, group key with the value used)
        let mut merge: BinaryHeap<Reverse<(Key, usize, bool, GroupKey)>> = BinaryHeap::new();
        while out.len() < take {
            let head = heads.peek().map(|(k, _)| *k);
            let top = merge.peek().map(|Reverse((k, ..))| *k);
            match (head, top) {
                (None, None) => break,
                (Some(h), t) if t.is_none_or(|t| h <= t) => {
                    let Some(&(_, ng)) = heads.next() else { break };
                    let Some(g) = self.groups.get(&ng) else {
                        continue;
                    };
                    let mut cursor = Cursor {
                        mature: g.mature.iter().peekable(),
                        young: self.over_share(g).then(|| g.young.iter().peekable()),
                        size: g.all,
                        taken: 0,
                        netgroup: ng,
                    };
                    if let Some(k) = cursor.next(&keep) {
                        merge.push(Reverse((
                            full_key(&k, cursor.size),
                            cursors.len(),
                            false,
                            k,
                        )));
                    }
                    cursors.push(cursor);
                }
                _ => {
                    let Some(Reverse((k, ci, resolved, gk))) = merge.pop() else {
                        break;
                    };
                    let cursor = &mut cursors[ci];
                    let remaining = cursor.size.saturating_sub(cursor.taken);
                    if !resolved {
                        // Its true value, and the group's next candidate behind it.
                        let real = (gk.0, self.true_value(&gk, now), gk.2, gk.3, gk.4);
                        merge.push(Reverse((full_key(&real, remaining), ci, true, real)));
                        if let Some(next) = cursor.next(&keep) {
                            merge.push(Reverse((full_key(&next, remaining), ci, false, next)));
                        }
                        continue;
                    }
                    let exact = full_key(&gk, remaining);
                    if exact != k {
                        merge.push(Reverse((exact, ci, true, gk)));
                        continue;
                    }
                    out.push((exact, cursor.netgroup));
                    cursor.taken += 1;
                }
            }
        }
        out
    }

    /// The value of the candidate `k` (a group key with its floor) at `now`.
    fn true_value(&self, k: &GroupKey, now: Time) -> i64 {
        let Some(&i) = self.conn_index.get(&k.4) else {
            return k.1;
        };
        let slot = self.conns[i].peer;
        match self.entry(slot) {
            Some(e) if e.lazy => self.value_at(slot, now),
            _ => k.1,
        }
    }

    fn victims_of(&self, walked: &[(Key, Netgroup)], wanted: usize) -> Vec<Victim> {
        let runner = walked.get(wanted).map(|(k, _)| *k);
        walked
            .iter()
            .take(wanted)
            .filter_map(|(k, ng)| {
                let &i = self.conn_index.get(&k.id)?;
                Some(Victim {
                    id: k.id,
                    peer_id: self.conns[i].peer_id,
                    rule: rule(k, runner.as_ref(), *ng),
                    overrode: None,
                })
            })
            .collect()
    }

    /// Up to `wanted` victims among the unshielded candidates, and shielded ones as far as
    /// needed to reach `must` (that rare case goes through the full ranking).
    pub(super) fn choose(&mut self, now: Time, wanted: usize, must: usize) -> Vec<Victim> {
        self.catch_up(now);
        let shields = self.category_shields();
        let walked = self.walk(now, wanted.saturating_add(1), |k| {
            !shields.contains_key(&k.4)
        });
        if walked.len().min(wanted) < must {
            return self.choose_by_full_ranking(now, wanted, must);
        }
        self.victims_of(&walked, wanted)
    }

    /// The worst unshielded incoming connection.
    pub(super) fn choose_evictable(&mut self, now: Time) -> Option<Victim> {
        self.catch_up(now);
        let shields = self.category_shields();
        let walked = self.walk(now, 2, |k| !k.2 && !shields.contains_key(&k.4));
        self.victims_of(&walked, 1).into_iter().next()
    }
}
