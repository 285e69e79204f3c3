//! Arbitrary settings of the pool, the policy and the connection manager, extremes
//! included: whatever [`PoolConfig::validate`] and [`ConnectionPolicy::new`] accept must
//! be safe to run with.

use arbitrary::{Result, Unstructured};
use peerpool_proto::connection_message::SupportedVersions;
use peerpool_proto::identity::PeerId;
use peerpool_proto::policy::{ConnectionPolicy, PolicyConfig, Rate};
use peerpool_proto::pool::{AclConfig, Pool, PoolConfig, ReconnectionConfig, Time};
use rand::SeedableRng;
use std::time::Duration;

/// A duration anywhere in its range: zero, the largest, any number of nanoseconds or
/// seconds, or a few milliseconds.
pub fn duration(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => Duration::ZERO,
        1 => Duration::MAX,
        2 => Duration::from_nanos(u.arbitrary()?),
        3 => Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
        4 => Duration::from_secs(u64::from(u.arbitrary::<u32>()?)),
        _ => Duration::from_millis(u64::from(u.arbitrary::<u16>()?)),
    })
}

/// A count: small, medium, near `usize::MAX`, or any.
pub fn count(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=6)? {
        0 => usize::MAX - u.int_in_range(0..=3)?,
        1 => u.arbitrary()?,
        2 => usize::from(u.arbitrary::<u16>()?),
        3 => u.int_in_range(0..=200)?,
        _ => u.int_in_range(0..=8)?,
    })
}

/// A size that allocates (the IP greylist's KiB): small, up to 4 MiB, or past what
/// validation accepts. Sizes between 4 MiB and the 1 GiB bound are valid but left out:
/// every countdown of the filter is a pass over it, and passes over a gibibyte (with a
/// cleanup delay of nanoseconds) only make the target slow, not wrong.
pub fn alloc_size(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => usize::MAX - u.int_in_range(0..=3)?,
        1 => (1 << 20) + 1 + u.int_in_range(0..=1)?,
        2 => u.int_in_range(0..=4096)?,
        _ => u.int_in_range(0..=64)?,
    })
}

/// A reconnection factor: any `f64`, or one of the values that once overflowed.
pub fn factor(u: &mut Unstructured<'_>) -> Result<f64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => u.arbitrary()?,
        1 => 1e20,
        2 => f64::MAX,
        3 => 2.0,
        4 => 1.0 + f64::from(u.arbitrary::<u8>()?) / 10.0,
        _ => f64::from(u.arbitrary::<u32>()?),
    })
}

fn rate(u: &mut Unstructured<'_>) -> Result<Rate> {
    Ok(Rate {
        period: duration(u)?,
        burst: match u.int_in_range(0u8..=2)? {
            0 => u.arbitrary()?,
            1 => u32::MAX,
            _ => u.int_in_range(0..=5)?,
        },
    })
}

fn optional<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

/// Arbitrary pool settings: every field, anywhere in its range.
pub fn pool_config(u: &mut Unstructured<'_>) -> Result<PoolConfig> {
    Ok(PoolConfig {
        max_known_points: (count(u)?, count(u)?),
        max_known_peer_ids: (count(u)?, count(u)?),
        reconnection: ReconnectionConfig {
            factor: factor(u)?,
            initial_delay: duration(u)?,
            disconnection_delay: duration(u)?,
            increase_cap: duration(u)?,
        },
        acl: AclConfig {
            peer_greylist_size: count(u)?,
            ip_greylist_size_in_kilobytes: alloc_size(u)?,
            ip_greylist_cleanup_delay: duration(u)?,
        },
        private_mode: u.ratio(1, 8)?,
        min_connections: count(u)?,
        max_connections: count(u)?,
        event_outbox_size: count(u)?,
    })
}

/// Arbitrary policy settings (maintenance and connection manager included).
pub fn policy_config(u: &mut Unstructured<'_>) -> Result<PolicyConfig> {
    let mut c = PolicyConfig::default();
    c.max_incoming_handshakes = count(u)?;
    c.max_incoming_handshakes_per_ip = count(u)?;
    c.max_incoming_handshakes_per_netgroup = optional(u, count)?;
    c.max_incoming_connections = optional(u, count)?;
    c.bootstrap_on_connect = u.arbitrary()?;
    c.peer_discovery = u.arbitrary()?;
    c.advertise_points = u.int_in_range(0..=120)?;
    c.bootstrap_rate = rate(u)?;
    c.advertise_rate = rate(u)?;
    c.swap_rate = rate(u)?;
    c.swap_linger = optional(u, duration)?;
    c.peers_file_interval = optional(u, duration)?;
    let m = &mut c.maintenance;
    m.enabled = u.ratio(7, 8)?;
    m.idle_time = duration(u)?;
    m.expected_connections = optional(u, count)?;
    m.looking_for_peers = duration(u)?;
    m.looking_for_peers_max = duration(u)?;
    m.max_dials_in_flight = optional(u, count)?;
    m.triggers.too_few = u.arbitrary()?;
    m.triggers.too_many = u.arbitrary()?;
    m.triggers.idle = u.arbitrary()?;
    m.wake_below_min_threshold = u.arbitrary()?;
    m.wake_at_backoff_end = u.arbitrary()?;
    let cm = &mut c.conn_manager;
    cm.enabled = u.arbitrary()?;
    cm.low_water = optional(u, count)?;
    cm.high_water = optional(u, count)?;
    cm.grace_period = duration(u)?;
    cm.protection_budget = optional(u, count)?;
    cm.max_incoming_per_netgroup = optional(u, count)?;
    cm.temporary_tag_ttl = duration(u)?;
    cm.protect_per_category = count(u)?;
    cm.exempt_loopback = u.arbitrary()?;
    Ok(c)
}

/// A start time: today, the epoch, the last date a peers file writes, or the far end of
/// [`Time`].
pub fn start_time(u: &mut Unstructured<'_>) -> Result<Time> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => Time::EPOCH,
        1 => Time::MAX_RFC3339,
        2 => Time::from_unix(Duration::MAX.saturating_sub(duration(u)?)),
        3 => Time::from_secs(u.arbitrary()?),
        _ => Time::from_secs(1_700_000_000 + u64::from(u.arbitrary::<u32>()?)),
    })
}

/// Our own peer id in every harness (the peers the harness makes up use other bytes).
pub const ME: PeerId = PeerId([0xee; 16]);

/// The chain every harness speaks.
pub const CHAIN: &str = "TEZOS_FUZZ";

/// A policy over a pool with these settings, at `now`, or `None` when the settings are
/// refused (a refusal is fine; a panic is not).
pub fn build_policy(
    now: Time,
    pool: PoolConfig,
    policy: PolicyConfig,
    seed: u64,
) -> Option<ConnectionPolicy<()>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pool = Pool::new(pool, &mut rng).ok()?;
    ConnectionPolicy::new(now, policy, SupportedVersions::octez(CHAIN), pool, ME, seed).ok()
}
