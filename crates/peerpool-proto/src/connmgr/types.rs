//! The connection manager's settings, errors, reports and events.

use crate::handshake::Direction;
use crate::identity::PeerId;
use crate::netgroup::Netgroup;
use crate::policy::{Bounds, ConnectionId};
use crate::pool::Time;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The connection manager's settings (ANCHORS.md, go-libp2p `connmgr` and Bitcoin Core's
/// eviction). Plain data; [`ConnManagerConfig::limits`] checks it once against the
/// maintenance bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnManagerConfig {
    /// `false`: the no-op manager (octez's behaviour: random victims, a full node refuses,
    /// no per-netgroup cap). The tag and protection API still answers.
    pub enabled: bool,
    /// Trim down to this many connections (low watermark). `None`: the maintenance's
    /// `max_target`.
    pub low_water: Option<usize>,
    /// A trim runs as soon as the count is above this (high watermark). `None`: the
    /// maintenance's `max_threshold`.
    pub high_water: Option<usize>,
    /// A connection younger than this is not trimmed (default 60 s), unless its netgroup
    /// holds more than its share or the count would otherwise stay above `high_water`.
    pub grace_period: Duration,
    /// Most peers protected by `protect` at once. `None`: half of the low watermark.
    pub protection_budget: Option<usize>,
    /// Most established incoming connections from one netgroup (IPv4 /16, IPv6 /32).
    /// `None`: `max(2, max_connections / 16)`.
    pub max_incoming_per_netgroup: Option<usize>,
    /// How long tags of a peer without connections are kept (default 10 s, as go-libp2p's
    /// temporary entries).
    pub temporary_tag_ttl: Duration,
    /// Connections the eviction protects in each of its categories (netgroup, round-trip
    /// time, recent useful messages, uptime; default 4), at most an eighth of the
    /// candidates each.
    pub protect_per_category: usize,
    /// Loopback addresses (127/8, ::1) are exempt from the per-netgroup incoming cap and
    /// from losing their grace for it (default true): a local test network or sandbox
    /// runs every node from 127.0.0.1. Tests of the cap over real sockets turn it off.
    pub exempt_loopback: bool,
}

impl Default for ConnManagerConfig {
    fn default() -> Self {
        ConnManagerConfig {
            enabled: true,
            low_water: None,
            high_water: None,
            grace_period: Duration::from_secs(60),
            protection_budget: None,
            max_incoming_per_netgroup: None,
            temporary_tag_ttl: Duration::from_secs(10),
            protect_per_category: 4,
            exempt_loopback: true,
        }
    }
}

impl ConnManagerConfig {
    /// The no-op manager (octez's behaviour).
    pub fn disabled() -> Self {
        ConnManagerConfig {
            enabled: false,
            ..ConnManagerConfig::default()
        }
    }

    /// The checked limits for a node with these maintenance `bounds` and
    /// `max_connections`.
    ///
    /// Errors: [`ConnManagerError::Config`] unless `low ≤ high ≤ max_connections` and
    /// `low ≥ 1`, or when the protection budget exceeds the low watermark.
    pub fn limits(
        &self,
        bounds: &Bounds,
        max_connections: usize,
    ) -> Result<Limits, ConnManagerError> {
        let low = self.low_water.unwrap_or(bounds.max_target);
        let high = self.high_water.unwrap_or(bounds.max_threshold);
        if !(1 <= low && low <= high && high <= max_connections) {
            return Err(ConnManagerError::Config(format!(
                "watermarks need 1 <= low ({low}) <= high ({high}) <= max_connections ({max_connections})"
            )));
        }
        let budget = self.protection_budget.unwrap_or(low / 2);
        if budget > low {
            return Err(ConnManagerError::Config(format!(
                "protection_budget {budget} is above the low watermark {low}"
            )));
        }
        let per_netgroup = self
            .max_incoming_per_netgroup
            .unwrap_or((max_connections / 16).max(2))
            .max(1);
        Ok(Limits {
            enabled: self.enabled,
            low,
            high,
            grace: self.grace_period,
            budget,
            per_netgroup,
            temporary_ttl: self.temporary_tag_ttl,
            per_category: self.protect_per_category,
            exempt_loopback: self.exempt_loopback,
        })
    }
}

/// [`ConnManagerConfig`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`ConnManagerConfig::enabled`].
    pub enabled: bool,
    /// Low watermark (connections).
    pub low: usize,
    /// High watermark (connections).
    pub high: usize,
    /// Grace period of a new connection.
    pub grace: Duration,
    /// Most peers protected by `protect`.
    pub budget: usize,
    /// Most established incoming connections per netgroup.
    pub per_netgroup: usize,
    /// How long tags of a peer without connections are kept.
    pub temporary_ttl: Duration,
    /// Connections protected per eviction category.
    pub per_category: usize,
    /// See [`ConnManagerConfig::exempt_loopback`].
    pub exempt_loopback: bool,
}

/// What the manager refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnManagerError {
    /// A setting out of range (names the setting and the range).
    #[error("connection manager config: {0}")]
    Config(String),
    /// `protect` beyond the protection budget: the peer is not protected.
    #[error("protection budget exhausted: {budget} peers are already protected")]
    ProtectionBudget {
        /// The budget.
        budget: usize,
    },
    /// A decaying tag name registered twice, or used without registration.
    #[error("decaying tag {0:?}: {1}")]
    DecayingTag(String, &'static str),
    /// A decaying tag's rules are out of range.
    #[error(transparent)]
    Decay(#[from] super::decay::DecayError),
    /// The manager was closed.
    #[error("the connection manager is closed")]
    Closed,
}

/// Why a connection is not trimmed or evicted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtectionRule {
    /// The application protected the peer under this tag.
    Tag(String),
    /// The point or the peer is trusted (the operator's choice).
    Trusted,
    /// One connection per netgroup, the netgroups picked by a keyed hash the attacker
    /// cannot predict (Bitcoin Core `EraseLastKElements` by keyed netgroup).
    Netgroup,
    /// Among the lowest round-trip times.
    LowRoundTrip,
    /// Among the most recent useful messages (the application's `record_useful`).
    RecentlyUseful,
    /// Among the longest-lived connections.
    LongestUptime,
    /// Younger than the grace period.
    Grace,
}

impl fmt::Display for ProtectionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtectionRule::Tag(t) => write!(f, "protected by the application ({t})"),
            ProtectionRule::Trusted => f.write_str("trusted"),
            ProtectionRule::Netgroup => f.write_str("kept for its netgroup"),
            ProtectionRule::LowRoundTrip => f.write_str("lowest round-trip times"),
            ProtectionRule::RecentlyUseful => f.write_str("recently useful"),
            ProtectionRule::LongestUptime => f.write_str("longest uptime"),
            ProtectionRule::Grace => f.write_str("in its grace period"),
        }
    }
}

/// The rule that chose a victim: the first criterion of the ranking on which it is worse
/// than the best connection that stays (or [`VictimRule::Last`] when none stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VictimRule {
    /// A second connection of a peer that has another.
    Duplicate,
    /// Its peer's tag value is lower.
    LowestValue,
    /// Its netgroup holds more connections.
    CrowdedNetgroup(Netgroup),
    /// It is incoming and the other outgoing.
    Inbound,
    /// It is younger.
    Youngest,
    /// No candidate stays.
    Last,
}

impl fmt::Display for VictimRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VictimRule::Duplicate => f.write_str("duplicate connection"),
            VictimRule::LowestValue => f.write_str("lowest tag value"),
            VictimRule::CrowdedNetgroup(g) => write!(f, "most connections in netgroup {g}"),
            VictimRule::Inbound => f.write_str("inbound before outbound"),
            VictimRule::Youngest => f.write_str("youngest"),
            VictimRule::Last => f.write_str("last candidate"),
        }
    }
}

/// A connection chosen to close, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// The connection.
    pub id: ConnectionId,
    /// Its peer.
    pub peer_id: PeerId,
    /// The rule that chose it.
    pub rule: VictimRule,
    /// A shield it had and that was overridden to bring the count down to the high
    /// watermark (`Grace` or an eviction category), if any.
    pub overrode: Option<ProtectionRule>,
}

/// What the manager knows of a peer (go-libp2p `TagInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// When the manager first heard of the peer (pool time).
    pub first_seen: Time,
    /// The sum of its tags, decaying ones as of now.
    pub value: i64,
    /// Each tag and its value (decaying ones as of now).
    pub tags: BTreeMap<String, i64>,
    /// Its connections and when each opened.
    pub conns: Vec<(ConnectionId, Time)>,
    /// What protects it now (empty: nothing).
    pub protected_by: Vec<ProtectionRule>,
}

/// What the manager did or saw (the Notifiee's opened/closed, and each trim or eviction
/// with its rule).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnManagerEvent {
    /// A connection opened.
    Opened {
        /// The connection.
        id: ConnectionId,
        /// The peer.
        peer_id: PeerId,
        /// Who dialled.
        direction: Direction,
    },
    /// A connection closed.
    Closed {
        /// The connection.
        id: ConnectionId,
        /// The peer.
        peer_id: PeerId,
    },
    /// A connection was trimmed (the count was above the high watermark, or
    /// `trim_open_conns`).
    Trimmed(Victim),
    /// A connection was evicted to admit a connection from a netgroup the node had none
    /// from.
    Evicted {
        /// The victim.
        victim: Victim,
        /// The newcomer's netgroup.
        for_netgroup: Netgroup,
    },
    /// An incoming connection was refused: its netgroup already holds its share.
    NetgroupFull {
        /// The netgroup.
        netgroup: Netgroup,
        /// Its established incoming connections.
        incoming: usize,
    },
}
