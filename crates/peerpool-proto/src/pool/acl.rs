//! Access control (BEHAVIOUR.md §5, octez `P2p_acl`): the peer-id greylist, the IP greylist
//! (a counting Bloom filter whose cells count down), the IP and peer blacklists, and the
//! table of which failure greylists whom ([`acl_action`]).
//!
//! Differences from octez, on purpose:
//! - the IP filter takes exactly `ip_greylist_size_in_kilobytes` KiB (octez takes twice that
//!   for power-of-two sizes, §13.10);
//! - an IP greylisting lasts at least `ip_greylist_cleanup_delay` (octez: 21–22.5 h for a
//!   1-day delay): cells start at 15 and count down every `cleanup_delay / 14`, the first
//!   countdown after the greylisting, so the entry expires between `cleanup_delay` and
//!   `cleanup_delay × 15/14` after it, later if other entries collide with it;
//! - clearing the greylists ([`Acl::clear_greylists`]) leaves manual bans alone;
//!   [`Acl::clear`] clears all four lists as octez's `DELETE /network/greylist` does.

use super::time::{duration_from_nanos, Time};
use crate::crypto::blake2b_256;
use crate::identity::PeerId;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;
use thiserror::Error;

/// Number of cells an address sets in the IP filter (octez: 5).
pub const IP_HASHES: usize = 5;
/// Value a cell takes when an address is greylisted; 4-bit cells.
const CELL_MAX: u8 = 15;
/// Countdowns per `ip_greylist_cleanup_delay`.
const COUNTDOWNS_PER_DELAY: u32 = 14;
/// Largest IP greylist filter, KiB (1 GiB, the config file's bound): the filter is
/// allocated whole at start.
pub const MAX_IP_GREYLIST_KIB: usize = 1 << 20;

/// ACL sizes and delays (BEHAVIOUR.md §9 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclConfig {
    /// Capacity of the peer-id greylist, entries. Default 1023. Must be ≥ 1.
    pub peer_greylist_size: usize,
    /// Memory of the IP greylist filter, KiB (1 KiB = 2048 four-bit cells). Also the
    /// capacity of the FIFO that lists greylisted IPs for the RPC. Default 2048. Must be
    /// in `1..=`[`MAX_IP_GREYLIST_KIB`].
    pub ip_greylist_size_in_kilobytes: usize,
    /// Minimum time an IP stays greylisted. Default 86 400 s. Must be ≥ 14 ns.
    pub ip_greylist_cleanup_delay: Duration,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            peer_greylist_size: 1023,
            ip_greylist_size_in_kilobytes: 2048,
            ip_greylist_cleanup_delay: Duration::from_secs(86_400),
        }
    }
}

/// Errors of this module: a config that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclError {
    /// `peer_greylist_size` is 0.
    #[error("peer_greylist_size must be at least 1")]
    EmptyPeerGreylist,
    /// `ip_greylist_size_in_kilobytes` is 0.
    #[error("ip_greylist_size_in_kilobytes must be at least 1")]
    EmptyIpGreylist,
    /// `ip_greylist_size_in_kilobytes` is above [`MAX_IP_GREYLIST_KIB`].
    #[error("ip_greylist_size_in_kilobytes must be at most {MAX_IP_GREYLIST_KIB} (1 GiB)")]
    IpGreylistTooLarge,
    /// `ip_greylist_cleanup_delay` is too short to count down.
    #[error("ip_greylist_cleanup_delay must be at least 14 ns")]
    CleanupDelayTooShort,
}

impl AclConfig {
    /// Checks the cross-field rules once, at construction.
    pub fn validate(&self) -> Result<(), AclError> {
        if self.peer_greylist_size == 0 {
            return Err(AclError::EmptyPeerGreylist);
        }
        if self.ip_greylist_size_in_kilobytes == 0 {
            return Err(AclError::EmptyIpGreylist);
        }
        if self.ip_greylist_size_in_kilobytes > MAX_IP_GREYLIST_KIB {
            return Err(AclError::IpGreylistTooLarge);
        }
        if self.ip_greylist_cleanup_delay < Duration::from_nanos(u64::from(COUNTDOWNS_PER_DELAY)) {
            return Err(AclError::CleanupDelayTooShort);
        }
        Ok(())
    }
}

/// The peer-id greylist: a FIFO set of fixed capacity; re-adding an id makes it the newest.
/// No time expiry (BEHAVIOUR.md §5.1).
#[derive(Debug, Clone)]
pub struct PeerGreylist {
    capacity: usize,
    seq: u64,
    by_id: HashMap<PeerId, u64>,
    by_age: BTreeMap<u64, PeerId>,
}

impl PeerGreylist {
    /// An empty greylist holding at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        PeerGreylist {
            capacity,
            seq: 0,
            by_id: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Adds `peer_id` (or refreshes it), evicting the oldest id when full.
    pub fn add(&mut self, peer_id: PeerId) {
        if let Some(old) = self.by_id.remove(&peer_id) {
            self.by_age.remove(&old);
        }
        while self.by_id.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
        self.seq += 1;
        self.by_id.insert(peer_id, self.seq);
        self.by_age.insert(self.seq, peer_id);
    }

    /// Whether `peer_id` is greylisted.
    pub fn contains(&self, peer_id: &PeerId) -> bool {
        self.by_id.contains_key(peer_id)
    }

    /// Removes `peer_id`.
    pub fn remove(&mut self, peer_id: &PeerId) {
        if let Some(s) = self.by_id.remove(peer_id) {
            self.by_age.remove(&s);
        }
    }

    /// Number of greylisted ids.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is greylisted.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The ids, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.by_age.values()
    }

    /// Empties the greylist.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.by_age.clear();
    }
}

/// The IP greylist: a counting Bloom filter of 4-bit countdown cells (BEHAVIOUR.md §5.2).
///
/// An address maps to [`IP_HASHES`] cells from Blake2b-256 of its 16-byte IPv6 form
/// (IPv4 as IPv4-mapped). `add` sets them to 15, `contains` is true when all are non-zero
/// (false positives are possible, false negatives are not until expiry), `remove` zeroes
/// them (which can also unban colliding addresses, as in octez). The cells count down
/// every `cleanup_delay / 14`; the runtime calls [`IpGreylist::countdown_until`] at
/// [`IpGreylist::next_countdown`].
#[derive(Debug, Clone)]
pub struct IpGreylist {
    cells: Vec<u8>,
    period: Duration,
    next_countdown: Option<Time>,
    listed: VecDeque<IpAddr>,
    list_capacity: usize,
    list_unreliable_since: Option<Time>,
}

impl IpGreylist {
    /// A filter of exactly `size_in_kilobytes × 1024` bytes (the size clamped to
    /// `1..=`[`MAX_IP_GREYLIST_KIB`]) whose entries last at least `cleanup_delay` (see the
    /// module docs for the rounding).
    pub fn new(size_in_kilobytes: usize, cleanup_delay: Duration) -> Self {
        let nanos = cleanup_delay
            .as_nanos()
            .div_ceil(u128::from(COUNTDOWNS_PER_DELAY));
        let period = duration_from_nanos(nanos);
        IpGreylist {
            cells: vec![0; size_in_kilobytes.clamp(1, MAX_IP_GREYLIST_KIB) * 1024],
            period,
            next_countdown: None,
            listed: VecDeque::new(),
            list_capacity: size_in_kilobytes,
            list_unreliable_since: None,
        }
    }

    /// Memory taken by the cells, bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.cells.len()
    }

    /// Number of 4-bit cells.
    pub fn cell_count(&self) -> usize {
        self.cells.len() * 2
    }

    /// Time between two countdowns.
    pub fn countdown_period(&self) -> Duration {
        self.period
    }

    fn indices(&self, ip: IpAddr) -> [usize; IP_HASHES] {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let h = blake2b_256(&[&v6.octets()]);
        let n = self.cell_count() as u64;
        let mut out = [0usize; IP_HASHES];
        for (i, slot) in out.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b[2..].copy_from_slice(&h[i * 6..i * 6 + 6]);
            // The remainder is < cell_count, which is a usize.
            *slot = (u64::from_be_bytes(b) % n) as usize;
        }
        out
    }

    fn cell(&self, i: usize) -> u8 {
        let byte = self.cells[i / 2];
        if i % 2 == 0 {
            byte & 0x0f
        } else {
            byte >> 4
        }
    }

    fn set_cell(&mut self, i: usize, v: u8) {
        let byte = &mut self.cells[i / 2];
        *byte = if i % 2 == 0 {
            (*byte & 0xf0) | v
        } else {
            (*byte & 0x0f) | (v << 4)
        };
    }

    /// Greylists `ip` from `now`. Countdowns due at `now` are run first so that none of
    /// them shortens the new entry.
    pub fn add(&mut self, now: Time, ip: IpAddr) {
        self.countdown_until(now);
        for i in self.indices(ip) {
            self.set_cell(i, CELL_MAX);
        }
        if self.next_countdown.is_none() {
            self.next_countdown = Some(now.saturating_add(self.period));
        }
        if let Some(pos) = self.listed.iter().position(|a| *a == ip) {
            self.listed.remove(pos);
        } else if self.listed.len() >= self.list_capacity {
            self.listed.pop_front();
            self.list_unreliable_since.get_or_insert(now);
        }
        if self.list_capacity > 0 {
            self.listed.push_back(ip);
        }
    }

    /// Whether `ip` is (probably) greylisted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.indices(ip).into_iter().all(|i| self.cell(i) > 0)
    }

    /// Zeroes `ip`'s cells and drops it from the listing.
    pub fn remove(&mut self, ip: IpAddr) {
        for i in self.indices(ip) {
            self.set_cell(i, 0);
        }
        self.listed.retain(|a| *a != ip);
    }

    /// Decrements every non-zero cell once; returns whether any cell is still non-zero.
    pub fn countdown(&mut self) -> bool {
        let mut any = 0;
        for b in &mut self.cells {
            let lo = *b & 0x0f;
            let hi = *b >> 4;
            *b = (lo.saturating_sub(1)) | (hi.saturating_sub(1) << 4);
            any |= *b;
        }
        any != 0
    }

    /// When the next countdown is due; `None` when no address is greylisted (the filter
    /// was never used since the last clear, or its last entry has expired): an idle filter
    /// costs no timer and no pass over its cells.
    pub fn next_countdown(&self) -> Option<Time> {
        self.next_countdown
    }

    /// Runs every countdown due at or before `now`: one pass over the cells per
    /// countdown, and a single one when more than 15 are due (every cell is 0 after
    /// them). The next countdown is then after `now` (or at the end of [`Time`]), or none
    /// once every cell is 0.
    pub fn countdown_until(&mut self, now: Time) {
        let Some(next) = self.next_countdown else {
            return;
        };
        if next > now {
            return;
        }
        let period = self.period.as_nanos().max(1);
        let due = now.saturating_duration_since(next).as_nanos() / period + 1;
        let mut left = false;
        if due > u128::from(CELL_MAX) {
            self.cells.fill(0);
        } else {
            for _ in 0..due {
                left = self.countdown();
                if !left {
                    break;
                }
            }
        }
        if left {
            let skip = duration_from_nanos(period.saturating_mul(due));
            self.next_countdown = Some(next.saturating_add(skip));
        } else {
            // Nothing is greylisted any more: no countdown until the next entry.
            self.next_countdown = None;
            self.listed.clear();
        }
    }

    /// Fraction of non-zero cells, in [0, 1].
    pub fn fill_ratio(&self) -> f64 {
        let nonzero: usize = self
            .cells
            .iter()
            .map(|b| usize::from(b & 0x0f != 0) + usize::from(b >> 4 != 0))
            .sum();
        nonzero as f64 / self.cell_count() as f64
    }

    /// The greylisted IPs known to the listing FIFO (for the RPC), oldest first; entries
    /// may have expired from the filter.
    pub fn listed(&self) -> impl Iterator<Item = &IpAddr> + '_ {
        self.listed.iter()
    }

    /// Since when the listing has dropped entries because it was full (octez
    /// `fifo_not_reliable_since`).
    pub fn list_unreliable_since(&self) -> Option<Time> {
        self.list_unreliable_since
    }

    /// Empties the filter and the listing.
    pub fn clear(&mut self) {
        self.cells.fill(0);
        self.listed.clear();
        self.list_unreliable_since = None;
        self.next_countdown = None;
    }
}

/// The four access lists.
#[derive(Debug, Clone)]
pub struct Acl {
    peer_greylist: PeerGreylist,
    ip_greylist: IpGreylist,
    ip_blacklist: HashSet<IpAddr>,
    peer_blacklist: HashSet<PeerId>,
}

impl Acl {
    /// Empty lists sized by `config`. Errors: see [`AclConfig::validate`].
    pub fn new(config: &AclConfig) -> Result<Self, AclError> {
        config.validate()?;
        Ok(Acl {
            peer_greylist: PeerGreylist::new(config.peer_greylist_size),
            ip_greylist: IpGreylist::new(
                config.ip_greylist_size_in_kilobytes,
                config.ip_greylist_cleanup_delay,
            ),
            ip_blacklist: HashSet::new(),
            peer_blacklist: HashSet::new(),
        })
    }

    /// `banned_addr`: blacklisted or (probably) greylisted.
    pub fn banned_addr(&self, ip: IpAddr) -> bool {
        self.ip_blacklist.contains(&ip) || self.ip_greylist.contains(ip)
    }

    /// `banned_peer`: blacklisted or greylisted (trust is checked by the pool).
    pub fn banned_peer(&self, peer_id: &PeerId) -> bool {
        self.peer_blacklist.contains(peer_id) || self.peer_greylist.contains(peer_id)
    }

    /// Greylists `ip` from `now`.
    pub fn greylist_addr(&mut self, now: Time, ip: IpAddr) {
        self.ip_greylist.add(now, ip);
    }

    /// Greylists `peer_id` (no expiry; FIFO eviction).
    pub fn greylist_peer(&mut self, peer_id: PeerId) {
        self.peer_greylist.add(peer_id);
    }

    /// Adds `ip` to the blacklist.
    pub fn ban_addr(&mut self, ip: IpAddr) {
        self.ip_blacklist.insert(ip);
    }

    /// Adds `peer_id` to the blacklist.
    pub fn ban_peer(&mut self, peer_id: PeerId) {
        self.peer_blacklist.insert(peer_id);
    }

    /// Removes `ip` from the blacklist and the greylist.
    pub fn unban_addr(&mut self, ip: IpAddr) {
        self.ip_blacklist.remove(&ip);
        self.ip_greylist.remove(ip);
    }

    /// Removes `peer_id` from both peer lists.
    pub fn unban_peer(&mut self, peer_id: &PeerId) {
        self.peer_blacklist.remove(peer_id);
        self.peer_greylist.remove(peer_id);
    }

    /// Empties both greylists; manual bans stay.
    pub fn clear_greylists(&mut self) {
        self.peer_greylist.clear();
        self.ip_greylist.clear();
    }

    /// Empties all four lists (octez `P2p_acl.clear`).
    pub fn clear(&mut self) {
        self.clear_greylists();
        self.ip_blacklist.clear();
        self.peer_blacklist.clear();
    }

    /// Runs the IP countdowns due at `now`.
    pub fn gc_greylist(&mut self, now: Time) {
        self.ip_greylist.countdown_until(now);
    }

    /// The IP greylist.
    pub fn ip_greylist(&self) -> &IpGreylist {
        &self.ip_greylist
    }

    /// The peer greylist.
    pub fn peer_greylist(&self) -> &PeerGreylist {
        &self.peer_greylist
    }

    /// The manually banned IPs.
    pub fn ip_blacklist(&self) -> impl Iterator<Item = &IpAddr> + '_ {
        self.ip_blacklist.iter()
    }

    /// The manually banned peer ids.
    pub fn peer_blacklist(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.peer_blacklist.iter()
    }
}

/// A failure the runtime reports, classified for policy (BEHAVIOUR.md §5 "What greylists
/// whom").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Handshake errors: bad proof of work, invalid auth, decipher error, invalid message
    /// or chunk size, encoding/decoding errors (incoming or outgoing).
    HandshakeMisbehaviour,
    /// An unexpected error while handling an incoming handshake.
    HandshakeUnexpectedError,
    /// The point's expected peer id does not match the handshake; `running` when the
    /// connection was already established.
    UnexpectedPeerId {
        /// The connection was Running (it must also be closed).
        running: bool,
    },
    /// An undecodable message on an established connection.
    UndecodableMessage,
    /// The application (shell) reports misbehaviour: invalid block, invalid branch…
    ApplicationMisbehaviour,
    /// Timeouts (connect, authentication).
    Timeout,
    /// TCP connection refused or unreachable.
    ConnectionRefused,
    /// The remote sent a Nack.
    Nacked,
    /// No common protocol version.
    NoCommonProtocol,
}

/// What the ACL does about a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAction {
    /// Nothing.
    Ignore,
    /// Greylist the remote IP.
    GreylistAddr,
    /// Greylist the remote IP and close the connection.
    GreylistAddrAndDisconnect,
    /// Greylist the peer id and its (current or last known) IP, and close the connection.
    GreylistPeer,
}

/// The table of BEHAVIOUR.md §5: which failure greylists whom.
pub fn acl_action(failure: Failure) -> AclAction {
    match failure {
        Failure::HandshakeMisbehaviour | Failure::HandshakeUnexpectedError => {
            AclAction::GreylistAddr
        }
        Failure::UnexpectedPeerId { running: true } => AclAction::GreylistAddrAndDisconnect,
        Failure::UnexpectedPeerId { running: false } => AclAction::GreylistAddr,
        Failure::UndecodableMessage | Failure::ApplicationMisbehaviour => AclAction::GreylistPeer,
        Failure::Timeout
        | Failure::ConnectionRefused
        | Failure::Nacked
        | Failure::NoCommonProtocol => AclAction::Ignore,
    }
}

#[cfg(test)]
mod tests;
