//! The node's configuration: plain data ([`NodeConfig`]) checked once into a
//! [`ValidConfig`] (`TryFrom`), so a bad value is a clear error at start, never a
//! surprise later. Defaults follow octez (BEHAVIOUR.md §9) unless a field says otherwise;
//! durations are `Duration`s, sizes are bytes (`*_bytes`), rates bytes per second.

use crate::connection::QueueConfig;
use crate::io_scheduler::IoSchedulerConfig;
use peerpool_proto::connection_message::{ConnectionMetadata, SupportedVersions};
use peerpool_proto::framing::MAX_CHUNK_PAYLOAD;
use peerpool_proto::handshake::HandshakeConfig;
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::policy::{PolicyConfig, PolicyConfigError};
use peerpool_proto::pool::{PoolConfig, PoolError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Smallest chunk payload, bytes (octez `binary_chunks_size` ≥ 19 bytes of chunk).
pub const MIN_CHUNK_PAYLOAD: usize = 1;

/// The node's settings, as plain data. Check them with [`NodeConfig::validate`] (or
/// `ValidConfig::try_from`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Our identity.
    pub identity: Arc<Identity>,
    /// Where to listen; `None` for a node that only dials. A node that listens dials from
    /// its listening address.
    pub listen_addr: Option<SocketAddr>,
    /// The port announced to peers in our connection message (octez
    /// `advertised-net-port`, for a node behind a port mapping); `None`: the listening
    /// port.
    pub advertised_port: Option<u16>,
    /// Connections waiting to be accepted (`listen(2)` backlog; default 1024, octez's 20
    /// drops bursts of connection attempts under load).
    pub backlog: u32,
    /// Chain name and supported versions (default `TEZOS_MAINNET`, ddb {0,1,2}, p2p {0,1}).
    pub versions: SupportedVersions,
    /// Proof of work demanded from peers (default difficulty 26).
    pub pow_target: PowTarget,
    /// Our connection metadata (`private_node` is set from `pool.private_mode`).
    pub metadata: ConnectionMetadata,
    /// Dead-peer detection set on every TCP stream of the default transport: keepalive
    /// (10 s idle, 5 s between probes) and `TCP_USER_TIMEOUT` (45 s), as octez.
    pub tcp: crate::transport::TcpOptions,
    /// Outgoing: TCP connect plus the whole handshake (default 10 s). > 0.
    pub connection_timeout: Duration,
    /// Incoming: the whole handshake (default 5 s). > 0.
    pub authentication_timeout: Duration,
    /// How long closing a connection may wait for its queued bytes to go out, and how
    /// long shutdown waits for connections to close (default 3 s).
    pub close_timeout: Duration,
    /// Plaintext bytes per chunk, 1..=65517 (default 65517).
    pub chunk_payload_bytes: usize,
    /// Per-connection queue bounds, in messages and bytes.
    pub queues: QueueConfig,
    /// One node-wide cap on the bytes buffered for all connections (default 256 MiB). A
    /// quarter of it bounds the bytes the I/O scheduler reads ahead of the connections
    /// (capped downloads), three quarters the received messages being assembled or
    /// waiting for the application; the two are kept apart so neither can hold up the
    /// other ([`split_budget`]); an eighth of the messages' part is kept for small messages
    /// ([`crate::budget::ByteBudget`]). The rest must hold `queues.max_message_bytes`.
    pub buffer_budget_bytes: usize,
    /// One node-wide cap on the outgoing application bytes in flight (queued, or in the
    /// I/O scheduler's write queue, until written to the socket) beyond each connection's
    /// `queues.outgoing_guaranteed_bytes` (default 256 MiB; 1..=4 GiB - 1). Peers that stop
    /// reading can take all of it, and no more: the node's outgoing memory stays within
    /// `max_connections × outgoing_guaranteed_bytes + outgoing_budget_bytes`, and a peer
    /// that keeps up never needs it while within its guarantee.
    pub outgoing_budget_bytes: usize,
    /// The pool: known points and peers bounds, backoff, ACL sizes, private mode,
    /// `min_connections` (below it the node dials known points, default 10) and
    /// `max_connections` (the slot check, default 100).
    pub pool: PoolConfig,
    /// The connection policy: handshakes in flight, Bootstrap on connect, peer discovery,
    /// Bootstrap/Advertise rates, peers-file save interval.
    pub policy: PolicyConfig,
    /// The I/O scheduler: global upload and download caps (bytes per second), read size,
    /// queue bounds (BEHAVIOUR.md §6).
    pub io_scheduler: IoSchedulerConfig,
    /// Local discovery (UDP announcements on the local network, BEHAVIOUR.md §8); `None`
    /// (the default) leaves it off, as octez's unset `discovery-addr` does.
    pub discovery: Option<crate::discovery::DiscoveryConfig>,
    /// Where `peers.json` is kept when no store is given to the builder; `None` keeps the
    /// pool in memory only.
    pub peers_file: Option<PathBuf>,
    /// Seed of the node's randomness (handshake nonces, point sampling, hash keys);
    /// `None` draws one from the operating system.
    pub seed: Option<u64>,
    /// Events buffered for subscribers (default 1024, ≥ 1); a subscriber further behind
    /// loses the oldest and is told how many. The buffer holds an event only until every
    /// subscriber has read it, and allocates as events wait, not at start.
    pub event_capacity: usize,
}

impl NodeConfig {
    /// Defaults for `identity` on `chain_name`.
    pub fn new(identity: Arc<Identity>, chain_name: &str) -> Self {
        NodeConfig {
            identity,
            listen_addr: None,
            advertised_port: None,
            backlog: 1024,
            versions: SupportedVersions::octez(chain_name),
            // invariant: 26 is within [0, 256].
            pow_target: PowTarget::new(26.0).unwrap_or_else(|_| unreachable!()),
            metadata: ConnectionMetadata::default(),
            tcp: crate::transport::TcpOptions::default(),
            connection_timeout: Duration::from_secs(10),
            authentication_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(3),
            chunk_payload_bytes: MAX_CHUNK_PAYLOAD,
            queues: QueueConfig::default(),
            buffer_budget_bytes: 256 * 1024 * 1024,
            outgoing_budget_bytes: 256 * 1024 * 1024,
            pool: PoolConfig::default(),
            policy: PolicyConfig::default(),
            io_scheduler: IoSchedulerConfig::default(),
            discovery: None,
            peers_file: None,
            seed: None,
            event_capacity: 1024,
        }
    }

    /// octez's `--connections N`: `min_connections` N/2 (N when N is 1), expected N,
    /// `max_connections` 3N/2, and the known points and peers tables (8N, 6N)
    /// (BEHAVIOUR.md §3.1). Saturates: a huge N gives the largest counts, never an
    /// overflow.
    pub fn set_connections(&mut self, n: usize) {
        self.pool.min_connections = if n == 1 { 1 } else { n / 2 };
        // 3N/2, rounded down as octez does.
        self.pool.max_connections = n.saturating_add(n / 2);
        self.policy.maintenance.expected_connections = Some(n);
        let table = n.saturating_mul(8).max(1);
        let target = (table / 4 * 3).max(1);
        self.pool.max_known_points = (table, target);
        self.pool.max_known_peer_ids = (table, target);
    }

    /// Checks every field and cross-field rule once.
    ///
    /// Errors: [`ConfigError`] naming the field, its value and what is allowed.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        ValidConfig::try_from(self)
    }
}

/// How `buffer_budget_bytes` is shared: `(read-ahead, messages)`, a quarter and the rest.
pub fn split_budget(total: usize) -> (usize, usize) {
    let read_ahead = (total / 4).max(1);
    (read_ahead, total.saturating_sub(read_ahead).max(1))
}

/// A configuration that passed every check; the only way to start a node.
#[derive(Debug, Clone)]
pub struct ValidConfig(NodeConfig);

impl ValidConfig {
    /// The settings.
    pub fn get(&self) -> &NodeConfig {
        &self.0
    }

    /// The handshake settings for a node listening on `listening_port`.
    pub(crate) fn handshake(&self, listening_port: Option<u16>) -> HandshakeConfig {
        let c = &self.0;
        HandshakeConfig {
            identity: c.identity.clone(),
            versions: c.versions.clone(),
            listening_port,
            metadata: c.metadata,
            pow_target: c.pow_target,
            chunk_payload_size: c.chunk_payload_bytes,
        }
    }
}

/// A setting is out of range.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value outside what is allowed.
    #[error("invalid setting {field} = {value}: {allowed}")]
    Invalid {
        /// The field, with its section (`queues.max_message_bytes`).
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A pool setting breaks a rule.
    #[error("pool settings: {0}")]
    Pool(#[from] PoolError),
    /// A policy setting breaks a rule.
    #[error("policy settings: {0}")]
    Policy(#[from] PolicyConfigError),
}

fn check(
    ok: bool,
    field: &'static str,
    value: impl std::fmt::Debug,
    allowed: &'static str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            value: format!("{value:?}"),
            allowed,
        })
    }
}

impl TryFrom<NodeConfig> for ValidConfig {
    type Error = ConfigError;

    fn try_from(mut c: NodeConfig) -> Result<Self, ConfigError> {
        check(
            !c.connection_timeout.is_zero(),
            "connection_timeout",
            c.connection_timeout,
            "> 0",
        )?;
        check(
            !c.authentication_timeout.is_zero(),
            "authentication_timeout",
            c.authentication_timeout,
            "> 0",
        )?;
        // Linux takes keepalive times in whole seconds, 1..=32767.
        let keepalive_secs = Duration::from_secs(1)..=Duration::from_secs(32_767);
        if let Some(idle) = c.tcp.keepalive_idle {
            check(
                keepalive_secs.contains(&idle),
                "tcp.keepalive_idle",
                idle,
                "1 s..=32767 s, or None",
            )?;
        }
        check(
            keepalive_secs.contains(&c.tcp.keepalive_interval),
            "tcp.keepalive_interval",
            c.tcp.keepalive_interval,
            "1 s..=32767 s",
        )?;
        if let Some(t) = c.tcp.user_timeout {
            check(
                t >= Duration::from_millis(1) && t.as_millis() <= u128::from(u32::MAX),
                "tcp.user_timeout",
                t,
                "1 ms..=49 days, or None",
            )?;
        }
        check(
            (MIN_CHUNK_PAYLOAD..=MAX_CHUNK_PAYLOAD).contains(&c.chunk_payload_bytes),
            "chunk_payload_bytes",
            c.chunk_payload_bytes,
            "1..=65517",
        )?;
        let q = &c.queues;
        for (field, value) in [
            ("queues.incoming_app_messages", q.incoming_app_messages),
            ("queues.incoming_app_bytes", q.incoming_app_bytes),
            ("queues.outgoing_app_messages", q.outgoing_app_messages),
            ("queues.outgoing_app_bytes", q.outgoing_app_bytes),
            (
                "queues.outgoing_control_messages",
                q.outgoing_control_messages,
            ),
            ("queues.max_message_bytes", q.max_message_bytes),
            ("event_capacity", c.event_capacity),
        ] {
            check(value >= 1, field, value, ">= 1")?;
        }
        // What a message may take of the messages' budget: all of it but the small lane.
        let messages = crate::budget::ByteBudget::new(split_budget(c.buffer_budget_bytes).1);
        check(
            messages.total() - messages.small_lane() >= q.max_message_bytes
                && c.buffer_budget_bytes <= crate::budget::MAX_BUDGET,
            "buffer_budget_bytes",
            c.buffer_budget_bytes,
            "3/4 of it, less its small-message lane (an eighth), >= queues.max_message_bytes, \
             and <= 4 GiB - 1",
        )?;
        check(
            q.slow_message_rate != Some(0),
            "queues.slow_message_rate",
            q.slow_message_rate,
            ">= 1, or None",
        )?;
        check(
            (1..=crate::budget::MAX_BUDGET).contains(&c.outgoing_budget_bytes),
            "outgoing_budget_bytes",
            c.outgoing_budget_bytes,
            "1..=4 GiB - 1",
        )?;
        let io = &c.io_scheduler;
        check(
            io.read_buffer_size >= 1,
            "io_scheduler.read_buffer_size",
            io.read_buffer_size,
            ">= 1",
        )?;
        check(
            io.read_queue_size >= 1 && io.write_queue_size >= 1,
            "io_scheduler.read_queue_size / write_queue_size",
            (io.read_queue_size, io.write_queue_size),
            ">= 1",
        )?;
        check(
            io.max_upload_speed != Some(0) && io.max_download_speed != Some(0),
            "io_scheduler.max_upload_speed / max_download_speed",
            (io.max_upload_speed, io.max_download_speed),
            "none, or >= 1 byte/s",
        )?;
        c.pool.validate()?;
        c.policy.validate()?;
        // A private node says so in its metadata (BEHAVIOUR.md §1.2).
        c.metadata.private_node |= c.pool.private_mode;
        Ok(ValidConfig(c))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> NodeConfig {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = Identity::generate(&PowTarget::new(0.0).unwrap(), &mut rng);
        NodeConfig::new(Arc::new(id), "TEZOS")
    }

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_field() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.queues.max_message_bytes = 0;
        match c.validate() {
            Err(ConfigError::Invalid { field, value, .. }) => {
                assert_eq!((field, value.as_str()), ("queues.max_message_bytes", "0"))
            }
            other => panic!("{other:?}"),
        }
        let mut c = config();
        c.buffer_budget_bytes = 1024;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "buffer_budget_bytes",
                ..
            })
        ));
        for bytes in [0, crate::budget::MAX_BUDGET + 1] {
            let mut c = config();
            c.outgoing_budget_bytes = bytes;
            assert!(matches!(
                c.validate(),
                Err(ConfigError::Invalid {
                    field: "outgoing_budget_bytes",
                    ..
                })
            ));
        }
        let mut c = config();
        c.queues.slow_message_rate = Some(0);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "queues.slow_message_rate",
                ..
            })
        ));
        let mut c = config();
        c.outgoing_budget_bytes = 1;
        c.queues.outgoing_guaranteed_bytes = 0;
        assert!(c.validate().is_ok());
        let mut c = config();
        c.pool.min_connections = 200;
        assert!(matches!(c.validate(), Err(ConfigError::Pool(_))));
        let mut c = config();
        c.policy.max_incoming_handshakes = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Policy(_))));
        let mut c = config();
        c.chunk_payload_bytes = 70_000;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_connections_flag_sets_octez_bounds() {
        let mut c = config();
        c.set_connections(50);
        assert_eq!((c.pool.min_connections, c.pool.max_connections), (25, 75));
        assert_eq!(c.pool.max_known_points, (400, 300));
        assert!(c.clone().validate().is_ok());
        c.set_connections(1);
        assert_eq!((c.pool.min_connections, c.pool.max_connections), (1, 1));
        assert!(c.validate().is_ok());
    }

    /// Found by fuzzing: `--connections N` with N near `usize::MAX` overflowed `3N/2`
    /// and `8N`.
    #[test]
    fn a_huge_connections_flag_saturates() {
        let mut c = config();
        c.set_connections(usize::MAX);
        assert_eq!(c.pool.max_connections, usize::MAX);
        assert_eq!(c.pool.max_known_points.0, usize::MAX);
        assert!(c.validate().is_ok());
        let mut c = config();
        c.set_connections(7);
        assert_eq!((c.pool.min_connections, c.pool.max_connections), (3, 10));
    }

    #[test]
    fn private_mode_is_announced_in_the_metadata() {
        let mut c = config();
        c.pool.private_mode = true;
        assert!(c.validate().unwrap().get().metadata.private_node);
    }
}
