//! The policy's settings, checked once by [`PolicyConfig::validate`], and the maintenance
//! bounds derived from them.

use std::time::Duration;
use thiserror::Error;

/// Most points in one Advertise or Nack we send (octez sends up to 50; receivers greylist
/// above 100, BEHAVIOUR.md §4.4).
pub const ADVERTISE_POINTS: usize = 50;

/// octez's default expected connection count (BEHAVIOUR.md §9).
pub const DEFAULT_EXPECTED_CONNECTIONS: usize = 50;

/// The expected connection count when none is set, for `min ≤ max`: octez's 50 when within
/// the bounds, else halfway (without overflowing when both are near `usize::MAX`).
pub fn default_expected_connections(min: usize, max: usize) -> usize {
    if (min..=max).contains(&DEFAULT_EXPECTED_CONNECTIONS) {
        DEFAULT_EXPECTED_CONNECTIONS
    } else {
        min + max.saturating_sub(min) / 2
    }
}

/// The longest a [`Rate`] may take to refill its whole burst (`period × burst`): 100
/// years. The rate limiter counts in `u64` nanoseconds (584 years), so a longer window
/// would overflow it.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A per-peer rate: at most `burst` messages at once, refilled at one per `period`
/// (a GCRA, as the `governor` crate implements it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time to earn one more message. Must be > 0, and `period × burst` at most
    /// [`MAX_RATE_WINDOW`].
    pub period: Duration,
    /// Messages allowed back to back. Must be ≥ 1.
    pub burst: u32,
}

/// Which events wake the maintenance (all on by default); tests turn some off to see one
/// trigger at work, as octez's maintenance tests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triggers {
    /// A disconnection leaves fewer than `min_connections`.
    pub too_few: bool,
    /// A new connection leaves more than the maintenance's `max_threshold`.
    pub too_many: bool,
    /// Every `idle_time` without another reason.
    pub idle: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            too_few: true,
            too_many: true,
            idle: true,
        }
    }
}

/// The maintenance (octez `P2p_maintenance`, BEHAVIOUR.md §3): keep the connection count
/// between the bounds derived from `min_connections`, `expected_connections` and
/// `max_connections`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MaintenanceConfig {
    /// Whether the maintenance runs at all (octez `--disable-p2p-maintenance` turns it
    /// off). Trusted points are dialled whenever they are down either way.
    pub enabled: bool,
    /// How often the maintenance runs when nothing else wakes it (octez
    /// `maintenance_idle_time`, default 120 s). > 0.
    pub idle_time: Duration,
    /// The connection count aimed at (octez default 50); `None`: 50 if it lies in
    /// `[min_connections, max_connections]`, else halfway between them. Must lie in that
    /// range.
    pub expected_connections: Option<usize>,
    /// The wait after a round that found nothing to dial, before looking again (octez's
    /// `time_between_looking_for_peers`, hard-coded 5 s there). > 0.
    pub looking_for_peers: Duration,
    /// The wait doubles after each empty round, up to this (default 60 s; set it equal to
    /// `looking_for_peers` for octez's fixed retry). ≥ `looking_for_peers`.
    pub looking_for_peers_max: Duration,
    /// Most dials of the maintenance in flight at once (default 10); `None`: every
    /// candidate of the round at once, as octez does.
    pub max_dials_in_flight: Option<usize>,
    /// Which events wake the maintenance.
    pub triggers: Triggers,
    /// With the too-few trigger on, also wake the maintenance when a disconnection leaves
    /// fewer than `min_threshold` (default true). octez only wakes below the raw
    /// `min_connections` (BEHAVIOUR.md §3.2), so a node that drops into
    /// `[min_connections, min_threshold)` waits for the idle timer (120 s) to act.
    pub wake_below_min_threshold: bool,
    /// End the wait for points when the first known point's backoff ends, if that comes
    /// before `looking_for_peers` (default true; octez waits its 5 s).
    pub wake_at_backoff_end: bool,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            enabled: true,
            idle_time: Duration::from_secs(120),
            expected_connections: None,
            looking_for_peers: Duration::from_secs(5),
            looking_for_peers_max: Duration::from_secs(60),
            max_dials_in_flight: Some(10),
            triggers: Triggers::default(),
            wake_below_min_threshold: true,
            wake_at_backoff_end: true,
        }
    }
}

impl MaintenanceConfig {
    /// octez's maintenance, for comparisons: every candidate dialled at once, a fixed 5 s
    /// between rounds that found nothing to dial (new points end the wait, backoffs do
    /// not), woken only below `min_connections`.
    pub fn octez() -> Self {
        MaintenanceConfig {
            looking_for_peers_max: Duration::from_secs(5),
            max_dials_in_flight: None,
            wake_below_min_threshold: false,
            wake_at_backoff_end: false,
            ..MaintenanceConfig::default()
        }
    }
}

/// The maintenance bounds (BEHAVIOUR.md §3.1): below `min_threshold` the maintenance dials
/// until `min_target`; above `max_threshold` it closes connections down to `max_target`.
/// With the defaults 10/50/100: 23/36/68/84.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Below this, too few.
    pub min_threshold: usize,
    /// Dial until this.
    pub min_target: usize,
    /// Close down to this.
    pub max_target: usize,
    /// Above this, too many.
    pub max_threshold: usize,
}

impl Bounds {
    /// The bounds for `min ≤ expected ≤ max` (integer division, as octez).
    ///
    /// Errors: [`PolicyConfigError`] when the three are not in order.
    pub fn new(min: usize, expected: usize, max: usize) -> Result<Self, PolicyConfigError> {
        if !(min <= expected && expected <= max) {
            return Err(PolicyConfigError::new(
                "expected_connections",
                "needs min_connections <= expected_connections <= max_connections",
            ));
        }
        let step_min = (expected - min) / 3;
        let step_max = (max - expected) / 3;
        Ok(Bounds {
            min_threshold: min + step_min,
            min_target: min + 2 * step_min,
            max_target: max - 2 * step_max,
            max_threshold: max - step_max,
        })
    }
}

/// The connection policy's settings. Defaults follow octez (BEHAVIOUR.md §9) except where
/// noted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Incoming handshakes in flight at once; more are refused at accept, before any byte
    /// is read (octez `max_incoming_connections`, default 20). Must be ≥ 1.
    pub max_incoming_handshakes: usize,
    /// Incoming handshakes in flight from one IP address (default 2; octez has no such
    /// cap, so 20 silent connections from anywhere lock every newcomer out). ≥ 1.
    pub max_incoming_handshakes_per_ip: usize,
    /// Incoming handshakes in flight from one netgroup (IPv4 /16, IPv6 /32); `None`: half
    /// of `max_incoming_handshakes` (at least 1). A slowloris from one network leaves
    /// room for honest peers from others.
    pub max_incoming_handshakes_per_netgroup: Option<usize>,
    /// Established incoming connections at most; `None`: `max_connections` minus
    /// `min_connections`, so the node can always dial its minimum itself (octez caps only
    /// handshakes in flight, so strangers can take every slot).
    pub max_incoming_connections: Option<usize>,
    /// Send Bootstrap to each new peer to learn points (default true).
    pub bootstrap_on_connect: bool,
    /// Answer Bootstrap and register Advertise and Nack points (default true; octez
    /// `disable_peer_discovery` is the opposite).
    pub peer_discovery: bool,
    /// Points in a Bootstrap answer or a Nack (default 50; at most 100).
    pub advertise_points: usize,
    /// Per-peer rate of Bootstrap messages we answer; beyond it they are ignored (default
    /// 1 per second, burst 3). octez delays a second one within 100 ms instead, which lets
    /// one peer hold its connection's worker; dropping costs nothing.
    pub bootstrap_rate: Rate,
    /// Per-peer rate of Advertise messages we register (default 1 per second, burst 3).
    pub advertise_rate: Rate,
    /// Per-peer rate of swap messages (default 1 per minute, burst 2; octez: 60 s).
    pub swap_rate: Rate,
    /// How long after a swap we ignore new swap requests, and how long a swap request we
    /// sent authorizes an ack (octez `swap_linger`, default 30 s); `None` disables swap
    /// in both directions (octez still sends requests then, BEHAVIOUR.md §7.4).
    pub swap_linger: Option<Duration>,
    /// How often the peers file is saved while running (default 5 min; `None`: only when
    /// asked and at shutdown).
    pub peers_file_interval: Option<Duration>,
    /// The maintenance.
    pub maintenance: MaintenanceConfig,
    /// The connection manager (trims, evict-to-admit, per-netgroup cap; issue 9). Its
    /// watermarks default to the maintenance's `max_target` / `max_threshold`.
    pub conn_manager: crate::connmgr::ConnManagerConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_incoming_handshakes: 20,
            max_incoming_handshakes_per_ip: 2,
            max_incoming_handshakes_per_netgroup: None,
            max_incoming_connections: None,
            bootstrap_on_connect: true,
            peer_discovery: true,
            advertise_points: ADVERTISE_POINTS,
            bootstrap_rate: Rate {
                period: Duration::from_secs(1),
                burst: 3,
            },
            advertise_rate: Rate {
                period: Duration::from_secs(1),
                burst: 3,
            },
            swap_rate: Rate {
                period: Duration::from_secs(60),
                burst: 2,
            },
            swap_linger: Some(Duration::from_secs(30)),
            peers_file_interval: Some(Duration::from_secs(300)),
            maintenance: MaintenanceConfig::default(),
            conn_manager: crate::connmgr::ConnManagerConfig::default(),
        }
    }
}

impl PolicyConfig {
    /// Checks every rule that does not depend on the pool's settings (those are checked
    /// by [`ConnectionPolicy::new`](super::ConnectionPolicy::new)).
    ///
    /// Errors: [`PolicyConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        if self.max_incoming_handshakes == 0 {
            return Err(PolicyConfigError::new(
                "max_incoming_handshakes",
                "must be >= 1",
            ));
        }
        if self.max_incoming_handshakes_per_ip == 0
            || self.max_incoming_handshakes_per_netgroup == Some(0)
        {
            return Err(PolicyConfigError::new(
                "max_incoming_handshakes_per_ip / per_netgroup",
                "must be >= 1",
            ));
        }
        if self.advertise_points > crate::message::MAX_ADVERTISE_POINTS {
            return Err(PolicyConfigError::new("advertise_points", "must be <= 100"));
        }
        for (field, rate) in [
            ("bootstrap_rate", self.bootstrap_rate),
            ("advertise_rate", self.advertise_rate),
            ("swap_rate", self.swap_rate),
        ] {
            if rate.period.is_zero() || rate.burst == 0 {
                return Err(PolicyConfigError::new(
                    field,
                    "needs period > 0 and burst >= 1",
                ));
            }
            if rate
                .period
                .checked_mul(rate.burst)
                .is_none_or(|window| window > MAX_RATE_WINDOW)
            {
                return Err(PolicyConfigError::new(
                    field,
                    "needs period x burst <= 100 years",
                ));
            }
        }
        if self.peers_file_interval.is_some_and(|d| d.is_zero()) {
            return Err(PolicyConfigError::new("peers_file_interval", "must be > 0"));
        }
        if self.swap_linger.is_some_and(|d| d.is_zero()) {
            return Err(PolicyConfigError::new("swap_linger", "must be > 0"));
        }
        let m = &self.maintenance;
        if m.idle_time.is_zero() || m.looking_for_peers.is_zero() {
            return Err(PolicyConfigError::new(
                "maintenance.idle_time / looking_for_peers",
                "must be > 0",
            ));
        }
        if m.looking_for_peers_max < m.looking_for_peers {
            return Err(PolicyConfigError::new(
                "maintenance.looking_for_peers_max",
                "must be >= looking_for_peers",
            ));
        }
        if m.max_dials_in_flight == Some(0) {
            return Err(PolicyConfigError::new(
                "maintenance.max_dials_in_flight",
                "must be >= 1 (None: no cap)",
            ));
        }
        Ok(())
    }

    /// The per-netgroup cap on incoming handshakes in flight.
    pub fn handshakes_per_netgroup(&self) -> usize {
        self.max_incoming_handshakes_per_netgroup
            .unwrap_or((self.max_incoming_handshakes / 2).max(1))
    }
}

/// A setting of [`PolicyConfig`] breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid policy setting {field}: {rule}")]
pub struct PolicyConfigError {
    /// The field.
    pub field: &'static str,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl PolicyConfigError {
    pub(super) fn new(field: &'static str, rule: &'static str) -> Self {
        PolicyConfigError { field, rule }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octez_default_bounds_and_the_connections_flag() {
        assert_eq!(
            Bounds::new(10, 50, 100),
            Ok(Bounds {
                min_threshold: 23,
                min_target: 36,
                max_target: 68,
                max_threshold: 84
            })
        );
        // --connections 50: min 25, expected 50, max 75 (BEHAVIOUR.md §3.1).
        let b = Bounds::new(25, 50, 75).unwrap_or(Bounds {
            min_threshold: 0,
            min_target: 0,
            max_target: 0,
            max_threshold: 0,
        });
        assert_eq!(
            (b.min_threshold, b.min_target, b.max_target, b.max_threshold),
            (33, 41, 59, 67)
        );
        assert!(Bounds::new(10, 5, 100).is_err());
        assert!(Bounds::new(0, 0, 0).is_ok());
    }
}
