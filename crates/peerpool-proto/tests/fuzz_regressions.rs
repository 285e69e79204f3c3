//! Reproducers of what fuzzing found (`fuzz/`, see `fuzz/README.md`), kept in the normal
//! test suite: settings that validation accepts and that later panicked or hung, and
//! inputs that crashed a decoder. Each test failed before its fix.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use peerpool_proto::connection_message::SupportedVersions;
use peerpool_proto::connmgr::{Bump, Decay, DecayingTag, DecayingValue};
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{
    ConnectionPolicy, PolicyConfig, PolicyConfigError, Rate, MAX_RATE_WINDOW,
};
use peerpool_proto::pool::{
    AclConfig, AclError, PointInfo, Pool, PoolConfig, PoolError, ReconnectionConfig, Time,
};
use peerpool_proto::scheduler::TokenBucket;
use rand::SeedableRng;
use std::time::Duration;

const NOW: Time = Time::from_secs(1_700_000_000);

fn point() -> Point {
    "10.0.0.1:9732".parse().unwrap()
}

/// `n` failed dials of one point with `config`; returns the last delay.
fn fail_dials(config: &ReconnectionConfig, n: usize) -> Duration {
    let mut p = PointInfo::new(point(), false, None);
    let mut now = NOW;
    for _ in 0..n {
        p.set_requested(now).unwrap();
        p.set_disconnected(now, false, config);
        now = p.greylisted_until().unwrap();
    }
    p.reconnection().unwrap().delay
}

/// A factor of 1e20 passed validation, then overflowed `Duration::mul_f64` at the
/// second failed dial.
#[test]
fn a_huge_backoff_factor_saturates_at_the_cap() {
    let config = ReconnectionConfig {
        factor: 1e20,
        ..ReconnectionConfig::default()
    };
    let pool = PoolConfig {
        reconnection: config,
        ..PoolConfig::default()
    };
    assert_eq!(pool.validate(), Ok(()));
    assert_eq!(fail_dials(&config, 5), config.increase_cap);
}

/// No cap on the backoff (`Duration::MAX`) with factor 2 overflowed after 64 failed
/// dials.
#[test]
fn an_uncapped_backoff_saturates_at_the_largest_duration() {
    let config = ReconnectionConfig {
        factor: 2.0,
        increase_cap: Duration::MAX,
        ..ReconnectionConfig::default()
    };
    assert_eq!(fail_dials(&config, 100), Duration::MAX);
    // The wait ends at the end of time, not before the failure.
    let mut p = PointInfo::new(point(), false, None);
    for _ in 0..100 {
        p.set_requested(NOW).unwrap();
        p.set_disconnected(NOW, false, &config);
    }
    assert!(p.cannot_reconnect_yet(NOW.saturating_add(Duration::from_secs(u64::MAX / 2))));
}

fn policy(
    pool: PoolConfig,
    config: PolicyConfig,
) -> Result<ConnectionPolicy<()>, PolicyConfigError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let pool = Pool::new(pool, &mut rng).unwrap();
    ConnectionPolicy::new(
        NOW,
        config,
        SupportedVersions::octez("TEZOS"),
        pool,
        PeerId([1; 16]),
        7,
    )
}

fn with_rates(rate: Rate) -> PolicyConfig {
    let mut config = PolicyConfig::default();
    config.bootstrap_rate = rate;
    config.advertise_rate = rate;
    config.swap_rate = rate;
    config
}

/// `min_connections` and `max_connections` near `usize::MAX` (and not around 50) made
/// the default expected count `(min + max) / 2` overflow.
#[test]
fn huge_connection_bounds_do_not_overflow_the_expected_count() {
    let pool = PoolConfig {
        min_connections: usize::MAX - 1,
        max_connections: usize::MAX,
        ..PoolConfig::default()
    };
    assert_eq!(pool.validate(), Ok(()));
    let p = policy(pool, PolicyConfig::default()).unwrap();
    assert!(p.bounds().min_threshold >= usize::MAX - 1);
}

/// A rate whose period is over 584 years panicked in the rate limiter ("Duration is
/// longer than 584 years"), and one whose `period × burst` overflowed `u64` nanoseconds
/// panicked in its arithmetic, at the first connection: validation refuses both now.
#[test]
fn rates_beyond_the_limiter_s_range_are_refused() {
    for rate in [
        Rate {
            period: Duration::MAX,
            burst: 1,
        },
        Rate {
            period: Duration::from_secs(86_400),
            burst: u32::MAX,
        },
    ] {
        let mut config = PolicyConfig::default();
        config.bootstrap_rate = rate;
        let e = config.validate().unwrap_err();
        assert_eq!(e.field, "bootstrap_rate");
    }
    let widest = Rate {
        period: MAX_RATE_WINDOW / 4,
        burst: 4,
    };
    let config = with_rates(widest);
    assert_eq!(config.validate(), Ok(()));
}

/// At the end of time (the rate limiter counts in `u64` nanoseconds since the epoch),
/// a control message on a connection established at the epoch overflowed the limiter.
#[test]
fn rate_limits_survive_the_end_of_time() {
    use peerpool_proto::connection_message::ConnectionMetadata;
    use peerpool_proto::policy::{Admission, AuthenticatedPeer, ControlMessage};
    let widest = Rate {
        period: MAX_RATE_WINDOW,
        burst: 1,
    };
    let config = with_rates(widest);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let pool = Pool::new(PoolConfig::default(), &mut rng).unwrap();
    let versions = SupportedVersions::octez("TEZOS");
    let mut p = ConnectionPolicy::<()>::new(
        Time::EPOCH,
        config,
        versions.clone(),
        pool,
        PeerId([1; 16]),
        7,
    )
    .unwrap();
    let id = p.connect(Time::EPOCH, point(), None, false).unwrap();
    let auth = AuthenticatedPeer {
        peer_id: PeerId([2; 16]),
        announced_port: Some(9732),
        announced_version: versions.announced(),
        metadata: ConnectionMetadata::default(),
    };
    assert!(matches!(
        p.handle_authenticated(Time::EPOCH, id, &auth),
        Admission::Accept(_)
    ));
    assert!(p.handle_established(Time::EPOCH, id));
    let end = Time::from_unix(Duration::MAX);
    for _ in 0..3 {
        p.handle_control(end, id, ControlMessage::Bootstrap);
        p.handle_control(end, id, ControlMessage::Advertise(vec![point()]));
    }
    assert_eq!(p.connection_count(), 1);
}

/// `ip_greylist_size_in_kilobytes` had no upper bound: `usize::MAX` passed validation and
/// overflowed `size × 1024` (or, below that, asked for terabytes) when the pool started.
#[test]
fn an_ip_greylist_beyond_a_gibibyte_is_refused() {
    for kib in [usize::MAX, usize::MAX / 1024 + 1, (1 << 20) + 1] {
        let acl = AclConfig {
            ip_greylist_size_in_kilobytes: kib,
            ..AclConfig::default()
        };
        assert_eq!(acl.validate(), Err(AclError::IpGreylistTooLarge));
        let pool = PoolConfig {
            acl,
            ..PoolConfig::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            Pool::<()>::new(pool, &mut rng).err(),
            Some(PoolError::Acl(AclError::IpGreylistTooLarge))
        );
    }
    let acl = AclConfig {
        ip_greylist_size_in_kilobytes: 1 << 20,
        ..AclConfig::default()
    };
    assert_eq!(acl.validate(), Ok(()));
}

/// A `Linear` decay with a coefficient close to 1, read long after its last update,
/// stepped once per elapsed tick: 10^12 ticks took hours. It is O(1) past 4096 steps.
#[test]
fn a_slow_linear_decay_read_after_many_ticks_is_quick() {
    let start = Time::from_secs(1_000);
    let tag = DecayingTag::new(
        start,
        Duration::from_nanos(1),
        Decay::Linear(1.0 - f64::EPSILON),
        Bump::SumUnbounded,
    )
    .unwrap();
    let mut v = DecayingValue::new(&tag, start);
    v.bump(&tag, start, i64::MAX);
    let began = std::time::Instant::now();
    // 1000 s of 1 ns ticks: 10^12 steps.
    assert!(v.decay_to(&tag, start.saturating_add(Duration::from_secs(1_000))));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    // (1 - 2^-52)^(10^12) ≈ 0.99978: most of the value is left.
    assert!(
        v.value > i64::MAX / 10 * 9 && v.value < i64::MAX,
        "{}",
        v.value
    );
    // 2^60 ns later, the value is gone.
    assert!(!v.decay_to(&tag, start.saturating_add(Duration::from_nanos(1 << 60))));
}

/// A custom decay that reaches a fixed point stops stepping there.
#[test]
fn a_custom_decay_stops_at_its_fixed_point() {
    let start = Time::from_secs(1_000);
    let floor_at_5 = std::sync::Arc::new(|v: i64| (v - 1).max(5));
    let tag = DecayingTag::new(
        start,
        Duration::from_nanos(1),
        Decay::Custom(floor_at_5),
        Bump::SumUnbounded,
    )
    .unwrap();
    let mut v = DecayingValue::new(&tag, start);
    v.bump(&tag, start, 10);
    let began = std::time::Instant::now();
    assert!(v.decay_to(&tag, start.saturating_add(Duration::from_secs(1_000))));
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(v.value, 5);
}

/// Tick instants past `u32::MAX` ticks were computed as tick `u32::MAX` (the index was
/// clamped to `u32`), so an `ExpireWhenInactive` tag never expired once that many ticks
/// had passed.
#[test]
fn tick_instants_past_u32_max_ticks_are_right() {
    let start = Time::from_secs(1_000);
    let tag = DecayingTag::new(
        start,
        Duration::from_millis(1),
        Decay::ExpireWhenInactive(Duration::from_secs(60)),
        Bump::SumUnbounded,
    )
    .unwrap();
    let j = u64::from(u32::MAX) + 1_000;
    assert_eq!(
        tag.tick_time(j),
        start.saturating_add(Duration::from_millis(j))
    );
    assert_eq!(tag.tick_at(tag.tick_time(j)), j);
    // Bumped at tick 2^32 + 999 ms, and read 100 s later: expired.
    let bumped = tag.tick_time(j - 1);
    let mut v = DecayingValue::new(&tag, bumped);
    v.bump(&tag, bumped, 5);
    assert!(!v.decay_to(&tag, bumped.saturating_add(Duration::from_secs(100))));
    assert_eq!(
        tag.tick_time(u64::MAX),
        start.saturating_add(Duration::from_millis(u64::MAX))
    );
}

/// The I/O scheduler's token bucket at the largest rate, refilled after the longest
/// absence, overflowed its `i128` arithmetic.
#[test]
fn a_token_bucket_saturates() {
    let mut b = TokenBucket::new(u64::MAX, u64::MAX, Duration::ZERO);
    b.take(u64::MAX);
    b.take(u64::MAX);
    b.refill(Duration::MAX);
    assert!(b.can_take(u64::MAX));
    assert_eq!(b.ready_at(u64::MAX), Duration::MAX);
    let mut slow = TokenBucket::new(1, 1, Duration::ZERO);
    for _ in 0..4 {
        slow.take(u64::MAX);
    }
    assert_eq!(slow.ready_at(1), Duration::from_nanos(u64::MAX));
}

/// An attempt reported established before it was authenticated (a runtime's bug) was
/// refused but left its point Requested with no attempt owning it, so the point was never
/// dialled again (found by the `pool_ops` target).
#[test]
fn an_attempt_established_without_admission_gives_its_point_back() {
    use peerpool_proto::pool::PointState;
    let mut p = policy(PoolConfig::default(), PolicyConfig::default()).unwrap();
    let id = p.connect(NOW, point(), None, false).unwrap();
    assert_eq!(p.pool().point_state(&point()), Some(PointState::Requested));
    assert!(!p.handle_established(NOW, id));
    assert_eq!(p.attempts_in_flight(), 0);
    assert_eq!(
        p.pool().point_state(&point()),
        Some(PointState::Disconnected)
    );
    // The point can be dialled again.
    assert!(p.connect(NOW, point(), None, false).is_ok());
}

/// After a time leap of more than 584 years (a `u64` of nanoseconds), the IP greylist's
/// next countdown stayed in the past, so the runtime's timer fired again and again
/// (found by the `pool_ops` target: "deadline not after now once handled"). Now the
/// deadline is after the leap, or gone once nothing is greylisted.
#[test]
fn the_greylist_countdown_moves_past_a_far_leap() {
    use peerpool_proto::pool::acl::IpGreylist;
    let ip = "10.0.0.1".parse().unwrap();
    let mut g = IpGreylist::new(1, Duration::from_secs(86_400));
    g.add(NOW, ip);
    assert!(g.contains(ip));
    let far = Time::MAX_RFC3339;
    g.countdown_until(far);
    assert!(!g.contains(ip));
    assert!(
        g.next_countdown().is_none_or(|t| t > far),
        "{:?}",
        g.next_countdown()
    );
    // Without a leap: the entry lasts its 14 to 15 periods, then no deadline is left.
    g.add(NOW, ip);
    let period = g.countdown_period();
    let mut now = NOW;
    for _ in 0..14 {
        now = g.next_countdown().unwrap();
        g.countdown_until(now);
    }
    assert!(g.contains(ip), "expired before its delay");
    g.countdown_until(g.next_countdown().unwrap());
    assert!(!g.contains(ip));
    assert_eq!(g.next_countdown(), None);
    assert!(now.saturating_duration_since(NOW) >= period * 13);
}

/// An attempt authenticated twice (a runtime's bug), announcing another port the second
/// time, moved to the second point and left the first one Accepted with no attempt
/// owning it (found by the `pool_ops` target). The second call is refused now.
#[test]
fn a_second_authentication_of_one_attempt_is_refused() {
    use peerpool_proto::connection_message::ConnectionMetadata;
    use peerpool_proto::policy::{Admission, AttemptFailure, AuthenticatedPeer};
    use peerpool_proto::pool::PointState;
    let mut p = policy(PoolConfig::default(), PolicyConfig::default()).unwrap();
    let remote = "10.0.0.9:40000".parse().unwrap();
    let id = p.handle_incoming(NOW, remote).unwrap();
    let auth = |port| AuthenticatedPeer {
        peer_id: PeerId([9; 16]),
        announced_port: Some(port),
        announced_version: SupportedVersions::octez("TEZOS").announced(),
        metadata: ConnectionMetadata::default(),
    };
    assert!(matches!(
        p.handle_authenticated(NOW, id, &auth(9732)),
        Admission::Accept(_)
    ));
    assert!(matches!(
        p.handle_authenticated(NOW, id, &auth(9733)),
        Admission::Close(_)
    ));
    p.handle_attempt_failed(NOW, id, AttemptFailure::Closed);
    assert_eq!(p.attempts_in_flight(), 0);
    for info in p.pool().points() {
        assert_eq!(info.state(), PointState::Disconnected, "{}", info.point());
    }
}

/// A peer banned between its admission and the end of the Ack exchange got a running
/// connection all the same: the ban closed only established connections, and the
/// establishment did not look again (found by the `pool_ops` target: "a blacklisted peer
/// is connected").
#[test]
fn a_peer_banned_during_the_ack_exchange_is_not_connected() {
    use peerpool_proto::connection_message::ConnectionMetadata;
    use peerpool_proto::policy::{Admission, AuthenticatedPeer};
    use peerpool_proto::pool::PointState;
    let mut p = policy(PoolConfig::default(), PolicyConfig::default()).unwrap();
    let peer = PeerId([9; 16]);
    for ban_addr in [false, true] {
        let id = p.connect(NOW, point(), None, false).unwrap();
        let auth = AuthenticatedPeer {
            peer_id: peer,
            announced_port: Some(9732),
            announced_version: SupportedVersions::octez("TEZOS").announced(),
            metadata: ConnectionMetadata::default(),
        };
        assert!(matches!(
            p.handle_authenticated(NOW, id, &auth),
            Admission::Accept(_)
        ));
        if ban_addr {
            p.ban_point(NOW, &point());
        } else {
            p.ban_peer(NOW, &peer);
        }
        assert!(!p.handle_established(NOW, id));
        assert_eq!(p.connection_count(), 0);
        assert_eq!(p.attempts_in_flight(), 0);
        assert_eq!(
            p.pool().point_state(&point()),
            Some(PointState::Disconnected)
        );
        p.open_peer(NOW, &peer);
        p.open_point(NOW, &point());
    }
}
