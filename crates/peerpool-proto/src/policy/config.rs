//! The policy's settings, checked once by [`PolicyConfig::validate`].

use std::time::Duration;
use thiserror::Error;

/// Most points in one Advertise or Nack we send (octez sends up to 50; receivers greylist
/// above 100, BEHAVIOUR.md §4.4).
pub const ADVERTISE_POINTS: usize = 50;

/// A per-peer rate: at most `burst` messages at once, refilled at one per `period`
/// (a GCRA, as the `governor` crate implements it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Time to earn one more message. Must be > 0.
    pub period: Duration,
    /// Messages allowed back to back. Must be ≥ 1.
    pub burst: u32,
}

/// The connection policy's settings. Defaults follow octez (BEHAVIOUR.md §9) except where
/// noted.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Incoming handshakes in flight at once; more are refused at accept, before any byte
    /// is read (octez `max_incoming_connections`, default 20). Must be ≥ 1.
    pub max_incoming_handshakes: usize,
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
    /// How often the peers file is saved while running (default 5 min; `None`: only when
    /// asked and at shutdown).
    pub peers_file_interval: Option<Duration>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_incoming_handshakes: 20,
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
            peers_file_interval: Some(Duration::from_secs(300)),
        }
    }
}

impl PolicyConfig {
    /// Checks every rule. Errors: [`PolicyConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        if self.max_incoming_handshakes == 0 {
            return Err(PolicyConfigError::new(
                "max_incoming_handshakes",
                "must be >= 1",
            ));
        }
        if self.advertise_points > crate::message::MAX_ADVERTISE_POINTS {
            return Err(PolicyConfigError::new("advertise_points", "must be <= 100"));
        }
        for (field, rate) in [
            ("bootstrap_rate", self.bootstrap_rate),
            ("advertise_rate", self.advertise_rate),
        ] {
            if rate.period.is_zero() || rate.burst == 0 {
                return Err(PolicyConfigError::new(
                    field,
                    "needs period > 0 and burst >= 1",
                ));
            }
        }
        if self.peers_file_interval.is_some_and(|d| d.is_zero()) {
            return Err(PolicyConfigError::new("peers_file_interval", "must be > 0"));
        }
        Ok(())
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
    fn new(field: &'static str, rule: &'static str) -> Self {
        PolicyConfigError { field, rule }
    }
}
