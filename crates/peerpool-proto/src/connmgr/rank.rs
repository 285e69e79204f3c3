//! Which connections go first (the module doc of [`super`] gives the rules).

use super::{ConnManager, ProtectionRule, Victim, VictimRule};
use crate::handshake::Direction;
use crate::netgroup::Netgroup;
use crate::policy::ConnectionId;
use crate::pool::Time;
use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

/// A candidate with everything its rank needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cand {
    pub idx: usize,
    pub id: ConnectionId,
    pub dup: bool,
    pub value: i64,
    pub netgroup: Netgroup,
    pub group_size: usize,
    pub inbound: bool,
    pub opened: Time,
}

/// Order inside a netgroup: duplicates, lowest value, inbound, youngest, id.
fn group_order(a: &Cand, b: &Cand) -> Ordering {
    (!a.dup, a.value, !a.inbound, Reverse(a.opened), a.id).cmp(&(
        !b.dup,
        b.value,
        !b.inbound,
        Reverse(b.opened),
        b.id,
    ))
}

/// The full ranking key: `remaining` is the netgroup's size when this candidate's turn
/// comes (its size minus the candidates of the group ranked before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) not_dup: bool,
    pub(super) value: i64,
    pub(super) remaining: Reverse<usize>,
    pub(super) not_inbound: bool,
    pub(super) opened: Reverse<Time>,
    pub(super) id: ConnectionId,
}

fn key(c: &Cand, position_in_group: usize) -> Key {
    Key {
        not_dup: !c.dup,
        value: c.value,
        remaining: Reverse(c.group_size.saturating_sub(position_in_group)),
        not_inbound: !c.inbound,
        opened: Reverse(c.opened),
        id: c.id,
    }
}

/// The rule that puts `a` before `b` (`b` none: nobody stays).
pub(super) fn rule(a: &Key, b: Option<&Key>, netgroup: Netgroup) -> VictimRule {
    let Some(b) = b else {
        return VictimRule::Last;
    };
    if a.not_dup != b.not_dup {
        VictimRule::Duplicate
    } else if a.value != b.value {
        VictimRule::LowestValue
    } else if a.remaining != b.remaining {
        VictimRule::CrowdedNetgroup(netgroup)
    } else if a.not_inbound != b.not_inbound {
        VictimRule::Inbound
    } else {
        VictimRule::Youngest
    }
}

/// The `take` worst of `cands`, worst first, each with its rule. O(n log n).
pub(super) fn rank(mut cands: Vec<Cand>, take: usize) -> Vec<(Cand, VictimRule)> {
    if take == 0 || cands.is_empty() {
        return Vec::new();
    }
    if take == 1 {
        return top1(&cands).into_iter().collect();
    }
    cands.sort_by(|a, b| a.netgroup.cmp(&b.netgroup).then_with(|| group_order(a, b)));
    let mut keyed: Vec<(Key, Cand)> = Vec::with_capacity(cands.len());
    let mut position = 0;
    for (i, c) in cands.iter().enumerate() {
        if i > 0 && cands[i - 1].netgroup != c.netgroup {
            position = 0;
        }
        keyed.push((key(c, position), *c));
        position += 1;
    }
    let take = take.min(keyed.len());
    if take < keyed.len() {
        keyed.select_nth_unstable_by(take, |a, b| a.0.cmp(&b.0));
    }
    let runner_up = keyed.get(take).map(|(k, _)| *k);
    let head = &mut keyed[..take];
    head.sort_by_key(|a| a.0);
    head.iter()
        .map(|(k, c)| (*c, rule(k, runner_up.as_ref(), c.netgroup)))
        .collect()
}

/// The worst candidate and its rule in O(n): the best two of each netgroup in group order
/// are the only ones that can rank first or second.
fn top1(cands: &[Cand]) -> Option<(Cand, VictimRule)> {
    let mut heads: HashMap<Netgroup, (Cand, Option<Cand>)> = HashMap::new();
    for c in cands {
        match heads.get_mut(&c.netgroup) {
            None => {
                heads.insert(c.netgroup, (*c, None));
            }
            Some((best, second)) => {
                if group_order(c, best) == Ordering::Less {
                    *second = Some(*best);
                    *best = *c;
                } else if second.is_none_or(|s| group_order(c, &s) == Ordering::Less) {
                    *second = Some(*c);
                }
            }
        }
    }
    let mut firsts: Vec<(Key, Cand)> = Vec::with_capacity(heads.len() + 1);
    let mut seconds: HashMap<Netgroup, Cand> = HashMap::new();
    for (g, (best, second)) in heads {
        firsts.push((key(&best, 0), best));
        if let Some(s) = second {
            seconds.insert(g, s);
        }
    }
    let (vi, (vk, victim)) = firsts
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1).0.cmp(&(b.1).0))
        .map(|(i, kc)| (i, *kc))?;
    let mut runner: Option<Key> = seconds.get(&victim.netgroup).map(|s| key(s, 1));
    for (i, (k, _)) in firsts.iter().enumerate() {
        if i != vi && runner.is_none_or(|r| *k < r) {
            runner = Some(*k);
        }
    }
    Some((victim, rule(&vk, runner.as_ref(), victim.netgroup)))
}

/// The `k` smallest of `items` by key, in any order. O(n).
fn smallest_k<K: Ord + Copy>(mut items: Vec<(K, usize)>, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    if k < items.len() {
        items.select_nth_unstable_by(k - 1, |a, b| a.0.cmp(&b.0));
        items.truncate(k);
    }
    items.into_iter().map(|(_, i)| i).collect()
}

impl ConnManager {
    /// The candidates (connections neither protected nor trusted), with their values at
    /// `now`.
    pub(super) fn candidates(&mut self, now: Time) -> Vec<Cand> {
        let mut out = Vec::with_capacity(self.conns.len());
        for i in 0..self.conns.len() {
            let c = self.conns[i];
            let value = self.value_of(c.peer, now);
            let Some(e) = self.entry(c.peer) else {
                continue;
            };
            if e.trusted || !e.protections.is_empty() {
                continue;
            }
            // A duplicate: the peer has an older connection.
            let dup = e.conns.len() > 1
                && e.conns.iter().any(|other| {
                    *other != c.id
                        && self
                            .conn_index
                            .get(other)
                            .is_some_and(|&j| (self.conns[j].opened, *other) < (c.opened, c.id))
                });
            out.push(Cand {
                idx: i,
                id: c.id,
                dup,
                value,
                netgroup: c.netgroup,
                group_size: self.groups.get(&c.netgroup).map_or(1, |g| g.all),
                inbound: c.direction == Direction::Incoming,
                opened: c.opened,
            });
        }
        out
    }

    /// The shields of `cands` at `now`: by eviction category, then grace (indexed like
    /// `self.conns`; `None`: unshielded).
    fn shield_map(&self, now: Time, cands: &[Cand]) -> Vec<Option<ProtectionRule>> {
        let mut shields: Vec<Option<ProtectionRule>> = vec![None; self.conns.len()];
        let k = self.limits.per_category.min(cands.len() / 8);
        if k > 0 {
            // One per netgroup, for the k netgroups with the lowest keyed hash: the oldest
            // connection of each.
            let mut oldest: HashMap<Netgroup, (u64, Time, ConnectionId, usize)> = HashMap::new();
            for c in cands {
                let kn = self.conns[c.idx].keyed_netgroup;
                let e = oldest
                    .entry(c.netgroup)
                    .or_insert((kn, c.opened, c.id, c.idx));
                if (c.opened, c.id) < (e.1, e.2) {
                    *e = (kn, c.opened, c.id, c.idx);
                }
            }
            let groups: Vec<((u64, Netgroup), usize)> =
                oldest.iter().map(|(g, e)| ((e.0, *g), e.3)).collect();
            for i in smallest_k(groups, k) {
                shields[i] = Some(ProtectionRule::Netgroup);
            }
            let free = |shields: &[Option<ProtectionRule>], c: &Cand| shields[c.idx].is_none();
            let rtt: Vec<((std::time::Duration, ConnectionId), usize)> = cands
                .iter()
                .filter(|c| free(&shields, c))
                .filter_map(|c| {
                    let e = self.entry(self.conns[c.idx].peer)?;
                    e.rtt.map(|r| ((r, c.id), c.idx))
                })
                .collect();
            for i in smallest_k(rtt, k) {
                shields[i] = Some(ProtectionRule::LowRoundTrip);
            }
            let useful: Vec<((Reverse<Time>, ConnectionId), usize)> = cands
                .iter()
                .filter(|c| free(&shields, c))
                .filter_map(|c| {
                    let e = self.entry(self.conns[c.idx].peer)?;
                    e.last_useful.map(|t| ((Reverse(t), c.id), c.idx))
                })
                .collect();
            for i in smallest_k(useful, k) {
                shields[i] = Some(ProtectionRule::RecentlyUseful);
            }
            let uptime: Vec<((Time, ConnectionId), usize)> = cands
                .iter()
                .filter(|c| free(&shields, c))
                .map(|c| ((c.opened, c.id), c.idx))
                .collect();
            for i in smallest_k(uptime, k) {
                shields[i] = Some(ProtectionRule::LongestUptime);
            }
        }
        for c in cands {
            let young = now.saturating_duration_since(c.opened) < self.limits.grace;
            let over_share = !self.conns[c.idx].exempt && c.group_size > self.limits.per_netgroup;
            if young && !over_share {
                shields[c.idx].get_or_insert(ProtectionRule::Grace);
            }
        }
        shields
    }

    /// The shields at `now` by connection id (for `tag_info`).
    pub(super) fn shields(&mut self, now: Time) -> HashMap<ConnectionId, ProtectionRule> {
        let cands = self.candidates(now);
        self.shield_map(now, &cands)
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| Some((self.conns[i].id, r?)))
            .collect()
    }

    fn victim(&self, c: &Cand, rule: VictimRule, overrode: Option<ProtectionRule>) -> Victim {
        Victim {
            id: c.id,
            peer_id: self.conns[c.idx].peer_id,
            rule,
            overrode,
        }
    }

    /// Up to `wanted` victims among the unshielded candidates, and shielded ones as far as
    /// needed to reach `must`, ranking every candidate (the reference for the index, and
    /// its path when shields must be overridden).
    pub(super) fn choose_by_full_ranking(
        &mut self,
        now: Time,
        wanted: usize,
        must: usize,
    ) -> Vec<Victim> {
        let cands = self.candidates(now);
        let shields = self.shield_map(now, &cands);
        let (shielded, open): (Vec<Cand>, Vec<Cand>) =
            cands.into_iter().partition(|c| shields[c.idx].is_some());
        let mut out: Vec<Victim> = rank(open, wanted)
            .iter()
            .map(|(c, r)| self.victim(c, *r, None))
            .collect();
        if out.len() < must {
            for (c, r) in rank(shielded, must - out.len()) {
                let overrode = shields[c.idx].clone();
                out.push(self.victim(&c, r, overrode));
            }
        }
        out
    }

    /// The worst unshielded incoming connection, ranking every candidate (the reference
    /// for the index).
    #[cfg(test)]
    pub(super) fn choose_evictable_by_full_ranking(&mut self, now: Time) -> Option<Victim> {
        let cands = self.candidates(now);
        let shields = self.shield_map(now, &cands);
        let open: Vec<Cand> = cands
            .into_iter()
            .filter(|c| c.inbound && shields[c.idx].is_none())
            .collect();
        let (c, r) = rank(open, 1).into_iter().next()?;
        Some(self.victim(&c, r, None))
    }
}

#[cfg(test)]
pub(super) mod reference {
    //! The same ranking, done the slow and obvious way: sort everything by the group order,
    //! then repeatedly take the best head with its group's current size.
    use super::*;

    pub fn rank_slow(cands: &[Cand], take: usize) -> Vec<ConnectionId> {
        let mut groups: HashMap<Netgroup, Vec<Cand>> = HashMap::new();
        for c in cands {
            groups.entry(c.netgroup).or_default().push(*c);
        }
        for g in groups.values_mut() {
            g.sort_by(group_order);
            g.reverse();
        }
        let mut taken: HashMap<Netgroup, usize> = HashMap::new();
        let mut out = Vec::new();
        while out.len() < take {
            let best = groups
                .iter()
                .filter_map(|(g, v)| {
                    v.last()
                        .map(|c| (key(c, taken.get(g).copied().unwrap_or(0)), *g))
                })
                .min();
            let Some((k, g)) = best else { break };
            out.push(k.id);
            groups.get_mut(&g).map(Vec::pop);
            *taken.entry(g).or_insert(0) += 1;
        }
        out
    }

    pub fn rank_ids(cands: Vec<Cand>, take: usize) -> Vec<(ConnectionId, VictimRule)> {
        rank(cands, take)
            .into_iter()
            .map(|(c, r)| (c.id, r))
            .collect()
    }

    pub fn rank_general(cands: Vec<Cand>, take: usize) -> Vec<(ConnectionId, VictimRule)> {
        // Force the sorting path even for one victim, by asking for two and keeping one
        // (the rule of the first is computed against the third then, so only ids compare).
        rank(cands, take.max(2))
            .into_iter()
            .take(take)
            .map(|(c, r)| (c.id, r))
            .collect()
    }
}
