//! The open-file limit and the connections it allows (issue 11, item 4).
//!
//! Every peer connection holds one file descriptor, its TCP socket. At start the binary
//! raises the soft `RLIMIT_NOFILE` as far as the hard limit allows
//! ([`raise_nofile_limit`]), then keeps `max_connections` within what that limit leaves
//! once the rest of the node is served ([`cap_connections`]). A full node then refuses a
//! newcomer through the connection policy (a Nack "too many connections", logged by
//! [`spawn_refusal_log`]) instead of running out of descriptors in `accept` (the accept
//! loop still backs off on `EMFILE`, as a last resort).
//!
//! What a node needs besides its connections ([`fds_besides_connections`]):
//! [`RESERVED_FDS`] for the process itself, plus one socket per handshake it may have in
//! flight: `max_incoming_handshakes` incoming and `max_dials_in_flight` outgoing
//! ([`DIALS_WHEN_UNCAPPED`] when the maintenance dials without a cap).

use crate::node_cmd::BinaryNode;
use peerpool::{ConnectError, EventError, NodeConfig, NodeEvent};
use peerpool_proto::connection_message::NackMotive;
use peerpool_proto::handshake::Direction;
use peerpool_proto::policy::Refusal;
use std::io;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Descriptors kept for what is not a peer socket: standard input, output and error (3);
/// the runtime's poller and its waker (2); the P2P listener and the discovery socket (2);
/// the RPC and metrics listeners and a dozen of their clients at once (14); the peers
/// file's or identity's temporary file and directory while saving (2); and room for the
/// libraries (the rest, 9).
pub const RESERVED_FDS: u64 = 32;

/// Descriptors one established connection holds (its TCP socket).
pub const FDS_PER_CONNECTION: u64 = 1;

/// Outgoing handshakes counted in flight when the maintenance has no cap on its dials
/// (`max_dials_in_flight` unset, octez's behaviour).
pub const DIALS_WHEN_UNCAPPED: usize = 50;

/// Where a Linux kernel keeps its ceiling on any process's open files, used when the hard
/// limit is "unlimited" (the soft limit cannot be set to that).
const NR_OPEN_FILE: &str = "/proc/sys/fs/nr_open";

/// Linux's default `nr_open`, when [`NR_OPEN_FILE`] cannot be read.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The open-file limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit in force now: the effective limit.
    pub soft: u64,
    /// The hard limit (the most the soft limit may be raised to without privileges).
    pub hard: u64,
    /// Why raising failed, if it did (`soft` is then still `before`).
    pub raise_error: Option<String>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (to the kernel's `nr_open` when the
/// hard limit is unlimited) and returns what is in force.
///
/// Errors: the limit cannot be read (or the platform has none); a failed raise is not an
/// error but [`NofileLimit::raise_error`].
#[cfg(unix)]
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let (before, hard) = rlimit::Resource::NOFILE.get()?;
    let target = if hard == rlimit::INFINITY {
        std::fs::read_to_string(NR_OPEN_FILE)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NR_OPEN_DEFAULT)
    } else {
        hard
    };
    if before >= target {
        return Ok(NofileLimit {
            before,
            soft: before,
            hard,
            raise_error: None,
        });
    }
    Ok(match rlimit::increase_nofile_limit(target) {
        Ok(soft) => NofileLimit {
            before,
            soft,
            hard,
            raise_error: None,
        },
        Err(e) => NofileLimit {
            before,
            soft: rlimit::Resource::NOFILE
                .get()
                .map_or(before, |(soft, _)| soft),
            hard,
            raise_error: Some(e.to_string()),
        },
    })
}

/// Raises the open-file limit: not on this platform.
///
/// Errors: always ([`io::ErrorKind::Unsupported`]).
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no RLIMIT_NOFILE on this platform",
    ))
}

/// Descriptors `config` lets the node hold besides its established connections:
/// [`RESERVED_FDS`] plus one per handshake in flight.
pub fn fds_besides_connections(config: &NodeConfig) -> u64 {
    let dials = config
        .policy
        .maintenance
        .max_dials_in_flight
        .unwrap_or(DIALS_WHEN_UNCAPPED);
    let handshakes = config.policy.max_incoming_handshakes.saturating_add(dials);
    RESERVED_FDS.saturating_add(u64::try_from(handshakes).unwrap_or(u64::MAX))
}

/// Connections an open-file limit of `nofile` allows when `besides` descriptors are kept
/// for the rest of the node.
pub fn connections_allowed(nofile: u64, besides: u64) -> u64 {
    nofile.saturating_sub(besides) / FDS_PER_CONNECTION
}

/// `max_connections` against the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    /// The open-file limit.
    pub nofile: u64,
    /// Descriptors kept besides connections ([`fds_besides_connections`]).
    pub reserved: u64,
    /// `max_connections` as configured.
    pub configured: usize,
    /// Connections the limit allows ([`connections_allowed`]).
    pub allowed: u64,
    /// `max_connections` in force: the smaller of the two, at least 1.
    pub effective: usize,
}

impl ConnectionCap {
    /// Whether the limit lowered `max_connections`.
    pub fn lowered(&self) -> bool {
        self.effective < self.configured
    }
}

/// Lowers `max_connections` to what an open-file limit of `nofile` allows, if it is above,
/// with the settings that must not exceed it (`min_connections`,
/// `expected_connections`, the connection manager's watermarks, the cap on incoming
/// connections). Returns the numbers, for the log.
pub fn cap_connections(config: &mut NodeConfig, nofile: u64) -> ConnectionCap {
    let reserved = fds_besides_connections(config);
    let allowed = connections_allowed(nofile, reserved);
    let configured = config.pool.max_connections;
    let effective = usize::try_from(allowed)
        .unwrap_or(usize::MAX)
        .min(configured)
        .max(1);
    if effective < configured {
        let clamp = |n: &mut usize| *n = (*n).min(effective);
        clamp(&mut config.pool.max_connections);
        clamp(&mut config.pool.min_connections);
        let policy = &mut config.policy;
        for n in [
            &mut policy.maintenance.expected_connections,
            &mut policy.conn_manager.low_water,
            &mut policy.conn_manager.high_water,
            &mut policy.max_incoming_connections,
        ]
        .into_iter()
        .flatten()
        {
            clamp(n);
        }
        // The manager refuses a protection budget above its low watermark: keep an explicit
        // budget within the watermark the lowered bounds give.
        if let Some(budget) = policy.conn_manager.protection_budget {
            let low = policy.conn_manager.low_water.unwrap_or_else(|| {
                default_low_water(config.pool.min_connections, effective, policy)
            });
            policy.conn_manager.protection_budget = Some(budget.min(low));
        }
    }
    ConnectionCap {
        nofile,
        reserved,
        configured,
        allowed,
        effective,
    }
}

/// The low watermark the policy derives when none is set: the maintenance's `max_target`
/// for `min ≤ expected ≤ max`, `expected` defaulting as the policy does.
fn default_low_water(
    min: usize,
    max: usize,
    policy: &peerpool_proto::policy::PolicyConfig,
) -> usize {
    use peerpool_proto::policy::{default_expected_connections, Bounds};
    let expected = policy
        .maintenance
        .expected_connections
        .unwrap_or_else(|| default_expected_connections(min, max));
    Bounds::new(min, expected.clamp(min, max), max).map_or(min, |b| b.max_target)
}

/// Logs the open-file limit and the connections it allows, at start: info, and a warning
/// when the limit lowered `max_connections` or could not be raised.
pub fn log_start(limit: &NofileLimit, cap: &ConnectionCap) {
    if let Some(e) = &limit.raise_error {
        warn!(
            soft = limit.before,
            hard = limit.hard,
            error = %e,
            "cannot raise the open-file limit"
        );
    }
    info!(
        nofile = limit.soft,
        raised_from = limit.before,
        hard = limit.hard,
        reserved = cap.reserved,
        max_connections = cap.effective,
        "open-file limit {}: at most {} connections",
        limit.soft,
        cap.effective
    );
    if cap.lowered() {
        warn!(
            configured = cap.configured,
            effective = cap.effective,
            "max_connections {} is more than the open-file limit {} allows ({} descriptors \
             kept for the node, one per connection): the node keeps at most {} connections; \
             raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) for more",
            cap.configured,
            cap.nofile,
            cap.reserved,
            cap.effective
        );
    }
}

/// Whether `event` is an incoming connection refused because every slot is taken.
fn refused_when_full(event: &NodeEvent) -> Option<std::net::SocketAddr> {
    match event {
        NodeEvent::HandshakeFailed {
            remote_addr,
            direction: Direction::Incoming,
            error: ConnectError::RejectedByUs(NackMotive::TooManyConnections),
        }
        | NodeEvent::IncomingRefused {
            remote_addr,
            reason: Refusal::TooManyConnections,
        } => Some(*remote_addr),
        _ => None,
    }
}

/// Logs, as a warning, the incoming connections refused because the node holds
/// `max_connections`: the first at once, then at most one line per `every` with the
/// number refused since. Ends when the node stops.
pub fn spawn_refusal_log(node: &BinaryNode, max_connections: usize, every: Duration) {
    let mut events = node.events();
    tokio::spawn(async move {
        let mut last: Option<Instant> = None;
        let mut unreported = 0u64;
        loop {
            let addr = match events.recv().await {
                Ok(event) => match refused_when_full(&event) {
                    Some(addr) => addr,
                    None => continue,
                },
                Err(EventError::Lagged(_)) => continue,
                Err(_) => return,
            };
            unreported += 1;
            if last.is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            last = Some(Instant::now());
            warn!(
                remote_addr = %addr,
                refused = unreported,
                "incoming connection refused: the node is at its limit of {max_connections} \
                 connections (max_connections and the open-file limit)"
            );
            unreported = 0;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use peerpool_proto::identity::{Identity, PowTarget};
    use rand::SeedableRng;

    fn config() -> NodeConfig {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = Identity::generate(&PowTarget::new(0.0).unwrap(), &mut rng);
        NodeConfig::new(std::sync::Arc::new(id), "TEST")
    }

    #[test]
    fn the_reserve_counts_the_process_and_the_handshakes_in_flight() {
        let mut c = config();
        // Defaults: 20 incoming handshakes, 10 dials.
        assert_eq!(fds_besides_connections(&c), 32 + 20 + 10);
        c.policy.maintenance.max_dials_in_flight = None;
        c.policy.max_incoming_handshakes = 5;
        assert_eq!(fds_besides_connections(&c), 32 + 5 + 50);
    }

    #[test]
    fn connections_allowed_is_what_the_limit_leaves() {
        assert_eq!(connections_allowed(1024, 62), 962);
        assert_eq!(connections_allowed(62, 62), 0);
        assert_eq!(connections_allowed(10, 62), 0);
        assert_eq!(connections_allowed(u64::MAX, 62), u64::MAX - 62);
    }

    #[test]
    fn a_high_limit_leaves_the_configuration_alone() {
        let mut c = config();
        c.set_connections(100); // 50 / 100 / 150
        let before = format!("{c:?}");
        let cap = cap_connections(&mut c, 1 << 20);
        assert_eq!(cap.effective, 150);
        assert_eq!(cap.configured, 150);
        assert!(!cap.lowered());
        assert_eq!(format!("{c:?}"), before);
        // Exactly enough: 150 connections + 62 kept.
        assert_eq!(cap_connections(&mut c, 212).effective, 150);
        assert!(!cap_connections(&mut c, 212).lowered());
    }

    #[test]
    fn a_low_limit_lowers_max_connections_and_what_depends_on_it() {
        let mut c = config();
        c.set_connections(100); // 50 / 100 / 150
        c.policy.conn_manager.high_water = Some(140);
        c.policy.conn_manager.low_water = Some(30);
        c.policy.max_incoming_connections = Some(100);
        let cap = cap_connections(&mut c, 100);
        assert_eq!(
            (cap.nofile, cap.reserved, cap.allowed, cap.effective),
            (100, 62, 38, 38)
        );
        assert!(cap.lowered());
        assert_eq!(c.pool.max_connections, 38);
        assert_eq!(c.pool.min_connections, 38);
        assert_eq!(c.policy.maintenance.expected_connections, Some(38));
        assert_eq!(c.policy.conn_manager.high_water, Some(38));
        assert_eq!(c.policy.conn_manager.low_water, Some(30));
        assert_eq!(c.policy.max_incoming_connections, Some(38));
    }

    #[tokio::test]
    async fn a_lowered_configuration_starts_a_node() {
        let node = crate::test_support::node_with(1, |c| {
            c.set_connections(100);
            c.policy.conn_manager.high_water = Some(140);
            c.policy.conn_manager.low_water = Some(120);
            c.policy.conn_manager.protection_budget = Some(10);
            assert_eq!(cap_connections(c, 100).effective, 38);
        })
        .await;
        let bounds = node.bounds().await.unwrap();
        assert!(bounds.max_threshold <= 38, "{bounds:?}");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn an_explicit_protection_budget_follows_the_lowered_watermark() {
        let node = crate::test_support::node_with(2, |c| {
            c.set_connections(100);
            c.policy.conn_manager.protection_budget = Some(60);
            assert_eq!(cap_connections(c, 100).effective, 38);
            assert!(c.policy.conn_manager.protection_budget.unwrap() <= 38);
        })
        .await;
        assert!(node.bounds().await.unwrap().max_threshold <= 38);
        node.shutdown().await;
    }

    #[test]
    fn a_tiny_limit_still_allows_one_connection() {
        let mut c = config();
        let cap = cap_connections(&mut c, 16);
        assert_eq!((cap.allowed, cap.effective), (0, 1));
        assert_eq!(c.pool.max_connections, 1);
        c.validate().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn raising_reaches_the_hard_limit_or_says_why_not() {
        let limit = raise_nofile_limit().unwrap();
        assert!(limit.soft >= limit.before);
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!((soft, hard), (limit.soft, limit.hard));
        if limit.raise_error.is_none() && hard != rlimit::INFINITY {
            assert_eq!(soft, hard);
        }
    }
}
