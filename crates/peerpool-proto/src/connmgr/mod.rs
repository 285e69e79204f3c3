//! The connection manager, sans-IO: tags, decaying tags, protection, watermarks and the
//! choice of which connections to trim or evict (ANCHORS.md: go-libp2p `connmgr`'s API
//! and semantics, Bitcoin Core's eclipse defences).
//!
//! The [`ConnectionPolicy`](crate::policy::ConnectionPolicy) owns one and tells it of
//! every connection opened and closed; the application reaches it through the policy (and
//! the runtime's facade). Decisions take `now`; nothing here sweeps on a timer:
//!
//! - a decaying tag's value is brought up to date when read ([`decay`]);
//! - a trim is asked for when the count goes above the high watermark
//!   ([`ConnManager::excess`]), not on a 10 s tick as in go-libp2p;
//! - a peer's tags outlive its last connection by `temporary_tag_ttl`, then are dropped
//!   the next time the manager is used.
//!
//! Fixes of go-libp2p's faults (ANCHORS.md): after a trim the count is at most the high
//! watermark even when connections are in grace or in an eviction category; `protect` is
//! refused beyond a budget instead of silently disabling trimming; victims are
//! connections, a peer's duplicate connection first.
//!
//! # Ranking (issue 9, §4-5)
//!
//! 1. Never: connections of peers protected by `protect`, or trusted.
//! 2. Shielded (a trim overrides them only to get down to the high watermark; an eviction
//!    never): per category, a few connections an attacker cannot cheaply fake — one per
//!    netgroup for the netgroups with the lowest keyed hash, the lowest round-trip times,
//!    the most recent useful messages, the longest uptimes — and connections in their
//!    grace period, unless their netgroup holds more than its share.
//! 3. The rest, worst first: duplicate connections, lowest tag value, the netgroup with
//!    the most connections (each pick counts as leaving it, as Bitcoin Core evicts from
//!    the largest group one at a time), inbound before outbound, youngest, then by id.

pub mod decay;
mod index;
mod rank;
mod tags;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use decay::{Bump, Decay, DecayError, DecayingTag, DecayingValue};
pub use types::{
    ConnManagerConfig, ConnManagerError, ConnManagerEvent, Limits, ProtectionRule, TagInfo, Victim,
    VictimRule,
};

use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::netgroup::Netgroup;
use crate::policy::ConnectionId;
use crate::pool::Time;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

/// One peer the manager knows.
#[derive(Debug, Clone)]
struct PeerEntry {
    peer_id: PeerId,
    first_seen: Time,
    tags: BTreeMap<String, i64>,
    decaying: BTreeMap<String, DecayingValue>,
    protections: BTreeSet<String>,
    conns: Vec<ConnectionId>,
    trusted: bool,
    rtt: Option<Duration>,
    last_useful: Option<Time>,
    /// With no connection: dropped at this time unless protected or reconnected.
    expires: Option<Time>,
    /// Sum of the plain tags and the decaying values, valid until `valid_until`.
    value: i64,
    valid_until: Time,
    /// A lower bound of `value` that time alone does not change (the ranking index's
    /// value): a fixed, linear or expiring value only falls, to its removal, so it counts
    /// as `min(v, 0)`; plain tags, `None` and custom decays count as they are.
    floor: i64,
    /// Whether `value` may be above `floor` (a fixed, linear or expiring decaying tag).
    lazy: bool,
    /// The next tick of a custom decay (which may go anywhere, so it is applied when due).
    custom_due: Time,
}

/// One connection.
#[derive(Debug, Clone, Copy)]
struct ConnEntry {
    id: ConnectionId,
    peer: usize,
    peer_id: PeerId,
    netgroup: Netgroup,
    /// The netgroup under the manager's secret key.
    keyed_netgroup: u64,
    /// Exempt from the per-netgroup share (loopback, with `exempt_loopback`).
    exempt: bool,
    direction: Direction,
    opened: Time,
    /// Its place in the ranking index, while it is a candidate.
    indexed: Option<index::Indexed>,
}

/// The connection manager (see the module doc).
#[derive(Debug)]
pub struct ConnManager {
    limits: Limits,
    closed: bool,
    salt: u64,
    peers: Vec<Option<PeerEntry>>,
    free: Vec<usize>,
    by_peer: HashMap<PeerId, usize>,
    conns: Vec<ConnEntry>,
    conn_index: HashMap<ConnectionId, usize>,
    groups: HashMap<Netgroup, index::Group>,
    index: index::Index,
    decaying: BTreeMap<String, DecayingTag>,
    /// Peers without connections, by expiry (the TTL is constant, so FIFO order).
    temporary: VecDeque<(Time, PeerId)>,
    protected_peers: usize,
    events: VecDeque<ConnManagerEvent>,
}

impl ConnManager {
    /// A manager with these checked `limits`; `salt` keys the netgroup hash (draw it from
    /// a secret or seeded RNG).
    pub fn new(limits: Limits, salt: u64) -> Self {
        ConnManager {
            limits,
            closed: false,
            salt,
            peers: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::new(),
            conns: Vec::new(),
            conn_index: HashMap::new(),
            groups: HashMap::new(),
            index: index::Index::default(),
            decaying: BTreeMap::new(),
            temporary: VecDeque::new(),
            protected_peers: 0,
            events: VecDeque::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether trims and evictions are the manager's (not the no-op manager, not closed).
    pub fn is_active(&self) -> bool {
        self.limits.enabled && !self.closed
    }

    /// Stops the manager: no more trims, evictions or netgroup refusals; the tag API
    /// answers [`ConnManagerError::Closed`] to changes (go-libp2p `Close`).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Connections the manager tracks.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<ConnManagerEvent> {
        self.events.pop_front()
    }

    // ---- peers -------------------------------------------------------------------------

    fn slot(&self, peer: &PeerId) -> Option<usize> {
        self.by_peer.get(peer).copied()
    }

    fn entry(&self, slot: usize) -> Option<&PeerEntry> {
        self.peers.get(slot).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: usize) -> Option<&mut PeerEntry> {
        self.peers.get_mut(slot).and_then(Option::as_mut)
    }

    /// The peer's slot, created (as a temporary entry) if unknown.
    fn slot_or_insert(&mut self, now: Time, peer: PeerId) -> usize {
        if let Some(s) = self.slot(&peer) {
            return s;
        }
        let entry = PeerEntry {
            peer_id: peer,
            first_seen: now,
            tags: BTreeMap::new(),
            decaying: BTreeMap::new(),
            protections: BTreeSet::new(),
            conns: Vec::new(),
            trusted: false,
            rtt: None,
            last_useful: None,
            expires: None,
            value: 0,
            valid_until: Time::MAX_RFC3339,
            floor: 0,
            lazy: false,
            custom_due: Time::MAX_RFC3339,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.peers[s] = Some(entry);
                s
            }
            None => {
                self.peers.push(Some(entry));
                self.peers.len() - 1
            }
        };
        self.by_peer.insert(peer, s);
        self.make_temporary(s, now);
        s
    }

    /// Starts the countdown of a peer with no connection: its entry is dropped
    /// `temporary_tag_ttl` from `now` unless it connects or is protected by then.
    fn make_temporary(&mut self, slot: usize, now: Time) {
        let expires = now.saturating_add(self.limits.temporary_ttl);
        if let Some(e) = self.entry_mut(slot) {
            if e.conns.is_empty() {
                e.expires = Some(expires);
                let peer = e.peer_id;
                self.temporary.push_back((expires, peer));
            }
        }
    }

    /// Drops the temporary entries whose time is up.
    fn gc(&mut self, now: Time) {
        while let Some(&(at, peer)) = self.temporary.front() {
            if at > now {
                break;
            }
            self.temporary.pop_front();
            let Some(s) = self.slot(&peer) else { continue };
            let drop = self.entry(s).is_some_and(|e| {
                e.conns.is_empty()
                    && e.protections.is_empty()
                    && e.expires.is_some_and(|x| x <= now)
            });
            if drop {
                if let Some(e) = self.entry(s) {
                    self.index.due.remove(&(e.custom_due, s));
                }
                self.peers[s] = None;
                self.free.push(s);
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Recomputes a peer's cached value at `now` (decays its decaying tags, drops those
    /// that fell to 0).
    fn refresh(&mut self, slot: usize, now: Time) {
        let decaying = &self.decaying;
        let Some(e) = self.peers.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let (old_floor, old_due) = (e.floor, e.custom_due);
        let plain: i64 = e.tags.values().fold(0, |a, v| a.saturating_add(*v));
        let (mut value, mut floor, mut lazy) = (plain, plain, false);
        let mut valid_until = Time::MAX_RFC3339;
        let mut custom_due = Time::MAX_RFC3339;
        e.decaying.retain(|name, v| {
            let Some(tag) = decaying.get(name) else {
                return false;
            };
            if !v.decay_to(tag, now) {
                return false;
            }
            value = value.saturating_add(v.value);
            let next = tag.tick_time(v.as_of.saturating_add(1));
            match tag.decay {
                Decay::None => floor = floor.saturating_add(v.value),
                Decay::Custom(_) => {
                    floor = floor.saturating_add(v.value);
                    custom_due = custom_due.min(next);
                }
                _ => {
                    floor = floor.saturating_add(v.value.min(0));
                    lazy = true;
                }
            }
            if !matches!(tag.decay, Decay::None) {
                valid_until = valid_until.min(next);
            }
            true
        });
        e.value = value;
        e.valid_until = valid_until;
        e.floor = floor;
        e.lazy = lazy;
        e.custom_due = custom_due;
        // The index follows: the next custom tick, and the connections' places when the
        // floor moved.
        if old_due != custom_due {
            self.index.due.remove(&(old_due, slot));
            if custom_due < Time::MAX_RFC3339 {
                self.index.due.insert((custom_due, slot));
            }
        }
        if old_floor != floor {
            self.reindex_peer(slot);
        }
    }

    /// The peer's value at `now` without changing anything (decaying values computed on
    /// copies).
    fn value_at(&self, slot: usize, now: Time) -> i64 {
        let Some(e) = self.entry(slot) else { return 0 };
        if now < e.valid_until {
            return e.value;
        }
        let plain: i64 = e.tags.values().fold(0, |a, v| a.saturating_add(*v));
        e.decaying.iter().fold(plain, |acc, (name, v)| {
            let mut v = *v;
            match self.decaying.get(name) {
                Some(tag) if v.decay_to(tag, now) => acc.saturating_add(v.value),
                _ => acc,
            }
        })
    }

    /// The peer's value at `now`.
    fn value_of(&mut self, slot: usize, now: Time) -> i64 {
        let stale = self.entry(slot).is_some_and(|e| now >= e.valid_until);
        if stale {
            self.refresh(slot, now);
        }
        self.entry(slot).map_or(0, |e| e.value)
    }

    fn check_open(&self) -> Result<(), ConnManagerError> {
        if self.closed {
            Err(ConnManagerError::Closed)
        } else {
            Ok(())
        }
    }

    // ---- connections (the policy's side) ------------------------------------------------

    /// Established incoming connections from `ip`'s netgroup.
    pub fn incoming_in_netgroup(&self, ip: IpAddr) -> usize {
        self.groups.get(&Netgroup::of(ip)).map_or(0, |g| g.incoming)
    }

    /// Connections (both directions) in `ip`'s netgroup.
    pub fn connections_in_netgroup(&self, ip: IpAddr) -> usize {
        self.groups.get(&Netgroup::of(ip)).map_or(0, |g| g.all)
    }

    /// Whether an incoming connection from `ip` must be refused because its netgroup
    /// already holds `max_incoming_per_netgroup` established incoming connections, plus
    /// `pending` admitted ones. Emits [`ConnManagerEvent::NetgroupFull`] when refusing.
    pub fn netgroup_full(&mut self, ip: IpAddr, pending: usize) -> bool {
        if !self.is_active() {
            return false;
        }
        if self.limits.exempt_loopback && ip.is_loopback() {
            return false;
        }
        let netgroup = Netgroup::of(ip);
        let incoming = self.groups.get(&netgroup).map_or(0, |g| g.incoming) + pending;
        let full = incoming >= self.limits.per_netgroup;
        if full {
            self.events
                .push_back(ConnManagerEvent::NetgroupFull { netgroup, incoming });
        }
        full
    }

    /// A connection opened (the Notifiee's `Connected`).
    pub fn connection_opened(
        &mut self,
        now: Time,
        id: ConnectionId,
        peer: PeerId,
        ip: IpAddr,
        direction: Direction,
        trusted: bool,
    ) {
        if self.conn_index.contains_key(&id) {
            return;
        }
        self.gc(now);
        self.catch_up(now);
        let s = self.slot_or_insert(now, peer);
        if let Some(e) = self.entry_mut(s) {
            e.conns.push(id);
            e.expires = None;
            e.trusted = trusted;
        }
        let netgroup = Netgroup::of(ip);
        let exempt = self.limits.exempt_loopback && ip.is_loopback();
        let keyed_netgroup = keyed(self.salt, netgroup);
        let g = self
            .groups
            .entry(netgroup)
            .or_insert_with(|| index::Group::new(keyed_netgroup, exempt));
        g.all += 1;
        if direction == Direction::Incoming {
            g.incoming += 1;
        }
        self.conn_index.insert(id, self.conns.len());
        self.conns.push(ConnEntry {
            id,
            peer: s,
            peer_id: peer,
            netgroup,
            keyed_netgroup,
            exempt,
            direction,
            opened: now,
            indexed: None,
        });
        // Its place, the peer's other connections' (one may now be a duplicate), and the
        // group's head (its size changed).
        self.reindex_peer(s);
        self.refresh_head(netgroup);
        self.events.push_back(ConnManagerEvent::Opened {
            id,
            peer_id: peer,
            direction,
        });
    }

    /// A connection closed (the Notifiee's `Disconnected`). Unknown ids are ignored.
    pub fn connection_closed(&mut self, now: Time, id: ConnectionId) {
        let Some(&i) = self.conn_index.get(&id) else {
            return;
        };
        self.unindex(i);
        self.conn_index.remove(&id);
        let c = self.conns.swap_remove(i);
        if let Some(moved) = self.conns.get(i) {
            self.conn_index.insert(moved.id, i);
        }
        if let Some(g) = self.groups.get_mut(&c.netgroup) {
            g.all = g.all.saturating_sub(1);
            if c.direction == Direction::Incoming {
                g.incoming = g.incoming.saturating_sub(1);
            }
        }
        if let Some(e) = self.entry_mut(c.peer) {
            e.conns.retain(|x| *x != id);
        }
        // Another connection of the peer may no longer be a duplicate; the group's size
        // changed (an empty group is dropped).
        self.reindex_peer(c.peer);
        self.refresh_head(c.netgroup);
        self.make_temporary(c.peer, now);
        self.events.push_back(ConnManagerEvent::Closed {
            id,
            peer_id: c.peer_id,
        });
    }

    /// How many connections a trim should close now: `count - low` when `count` (the
    /// node's connections) is above the high watermark, else 0.
    pub fn excess(&self, count: usize) -> usize {
        if self.is_active() && count > self.limits.high {
            count - self.limits.low
        } else {
            0
        }
    }

    /// The connections to close to bring `count` connections down to the low watermark
    /// (go-libp2p `TrimOpenConns`), worst first, each with its rule; events
    /// [`ConnManagerEvent::Trimmed`]. Shielded connections are taken only as far as needed
    /// to reach the high watermark. Empty when the manager is not active.
    pub fn trim(&mut self, now: Time, count: usize) -> Vec<Victim> {
        if !self.is_active() || count <= self.limits.low {
            return Vec::new();
        }
        self.gc(now);
        let wanted = count - self.limits.low;
        let must = count.saturating_sub(self.limits.high);
        let victims = self.choose(now, wanted, must);
        for v in &victims {
            self.events.push_back(ConnManagerEvent::Trimmed(v.clone()));
        }
        victims
    }

    /// The connection to evict so that an incoming connection from `ip` can take its
    /// slot, when the node is full: only for a newcomer from a netgroup the node has no
    /// connection in, and only an unshielded incoming connection goes (outgoing
    /// connections are the node's own choices). Event [`ConnManagerEvent::Evicted`].
    pub fn evict_for(&mut self, now: Time, ip: IpAddr) -> Option<Victim> {
        if !self.is_active() || self.connections_in_netgroup(ip) > 0 {
            return None;
        }
        self.gc(now);
        let victim = self.choose_evictable(now)?;
        self.events.push_back(ConnManagerEvent::Evicted {
            victim: victim.clone(),
            for_netgroup: Netgroup::of(ip),
        });
        Some(victim)
    }

    /// The victims for the octez-style "too many" step (up to `count`, worst first),
    /// shielded ones only when nothing else is left; events [`ConnManagerEvent::Trimmed`].
    pub fn victims(&mut self, now: Time, count: usize) -> Vec<Victim> {
        self.gc(now);
        let victims = self.choose(now, count, count);
        for v in &victims {
            self.events.push_back(ConnManagerEvent::Trimmed(v.clone()));
        }
        victims
    }
}

/// `salt`-keyed hash of a netgroup (BLAKE2b; the attacker does not know the salt, so it
/// cannot pick netgroups that the eviction keeps).
fn keyed(salt: u64, g: Netgroup) -> u64 {
    use blake2::digest::consts::U8;
    use blake2::{Blake2b, Digest};
    let mut h = Blake2b::<U8>::new();
    h.update(salt.to_le_bytes());
    match g {
        Netgroup::V4(b) => {
            h.update([4]);
            h.update(b);
        }
        Netgroup::V6(b) => {
            h.update([6]);
            h.update(b);
        }
    }
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out);
    u64::from_le_bytes(b)
}
