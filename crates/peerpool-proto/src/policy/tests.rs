//! Scenarios of the connection policy, without any runtime: inputs in, actions out.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::*;
use crate::connection_message::{
    ConnectionMetadata, NackMotive, NetworkVersion, SupportedVersions,
};
use crate::pool::{P2pEvent, PeerState, PointState, PoolConfig, PoolError};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub(super) fn peer(n: u8) -> PeerId {
    PeerId([n; 16])
}

pub(super) fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

pub(super) fn point(n: u8) -> Point {
    Point::new(ip(n), 9732)
}

pub(super) fn t(secs: u64) -> Time {
    Time::from_secs(1_700_000_000 + secs)
}

pub(super) fn version(chain: &str) -> NetworkVersion {
    SupportedVersions::octez(chain).announced()
}

pub(super) fn auth(peer_id: PeerId, port: Option<u16>) -> AuthenticatedPeer {
    AuthenticatedPeer {
        peer_id,
        announced_port: port,
        announced_version: version("TEZOS"),
        metadata: ConnectionMetadata::default(),
    }
}

pub(super) fn pool_config() -> PoolConfig {
    PoolConfig {
        min_connections: 0,
        max_connections: 4,
        ..PoolConfig::default()
    }
}

pub(super) fn policy_with(pool: PoolConfig, config: PolicyConfig, me: u8) -> ConnectionPolicy<()> {
    policy_seeded(pool, config, me, 42)
}

/// A policy for `peer(me)` at `t(0)` whose RNG is seeded with `seed`.
pub(super) fn policy_seeded(
    pool: PoolConfig,
    config: PolicyConfig,
    me: u8,
    seed: u64,
) -> ConnectionPolicy<()> {
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(7);
    let pool = Pool::new(pool, &mut rng).unwrap();
    ConnectionPolicy::new(
        t(0),
        config,
        SupportedVersions::octez("TEZOS"),
        pool,
        peer(me),
        seed,
    )
    .unwrap()
}

pub(super) fn policy() -> ConnectionPolicy<()> {
    policy_with(pool_config(), PolicyConfig::default(), 100)
}

pub(super) fn drain(p: &mut ConnectionPolicy<()>) -> Vec<Action<()>> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

pub(super) fn pool_events(actions: &[Action<()>]) -> Vec<P2pEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(PolicyEvent::Pool(e)) => Some(*e),
            _ => None,
        })
        .collect()
}

/// Dials `point(n)`, admits `peer(n)` and establishes; returns the connection id.
pub(super) fn establish_outgoing(p: &mut ConnectionPolicy<()>, n: u8, now: Time) -> ConnectionId {
    let id = p.connect(now, point(n), None, false).unwrap();
    let admission = p.handle_authenticated(now, id, &auth(peer(n), Some(9732)));
    assert!(matches!(admission, Admission::Accept(_)), "{admission:?}");
    assert!(p.handle_established(now, id));
    id
}

/// An incoming connection from `ip(n)` that announces port 9732, established.
pub(super) fn establish_incoming(p: &mut ConnectionPolicy<()>, n: u8, now: Time) -> ConnectionId {
    let id = p
        .handle_incoming(now, SocketAddr::new(ip(n), 40_000 + u16::from(n)))
        .unwrap();
    let admission = p.handle_authenticated(now, id, &auth(peer(n), Some(9732)));
    assert!(matches!(admission, Admission::Accept(_)), "{admission:?}");
    assert!(p.handle_established(now, id));
    id
}

#[test]
fn an_outgoing_connection_goes_requested_accepted_running() {
    let mut p = policy();
    let id = p.connect(t(1), point(1), None, false).unwrap();
    assert_eq!(p.pool().point_state(&point(1)), Some(PointState::Requested));
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Dial {
        id,
        point: point(1)
    }));
    assert!(pool_events(&actions).contains(&P2pEvent::OutgoingConnection { point: point(1) }));

    let admission = p.handle_authenticated(t(1), id, &auth(peer(1), Some(9732)));
    assert_eq!(admission, Admission::Accept(version("TEZOS")));
    assert_eq!(
        p.pool().point_state(&point(1)),
        Some(PointState::Accepted { peer_id: peer(1) })
    );
    assert!(p.handle_established(t(2), id));
    assert_eq!(
        p.pool().point_state(&point(1)),
        Some(PointState::Running { peer_id: peer(1) })
    );
    assert!(matches!(
        p.pool().peer_state(&peer(1)),
        Some(PeerState::Running { .. })
    ));
    let actions = drain(&mut p);
    // A new peer is asked for points, and gets the weight of its score.
    assert!(actions.contains(&Action::Send {
        id,
        message: ControlMessage::Bootstrap
    }));
    assert!(actions.contains(&Action::SetWeight { id, weight: 1 }));
    assert_eq!(p.connection_of(&peer(1)).unwrap().id, id);
    assert_eq!(p.dialing(), 0);
}

#[test]
fn a_refused_dial_leaves_no_trace_and_says_why() {
    let mut p = policy();
    p.add_my_point(point(9));
    assert_eq!(
        p.connect(t(1), point(9), None, false),
        Err(Refusal::Pool(PoolError::Myself(point(9))))
    );
    p.ban_point(t(1), &point(2));
    assert_eq!(
        p.connect(t(1), point(2), None, false),
        Err(Refusal::Pool(PoolError::PointBanned(ip(2))))
    );
    establish_outgoing(&mut p, 3, t(1));
    assert_eq!(
        p.connect(t(1), point(3), None, false),
        Err(Refusal::Pool(PoolError::AlreadyConnected(point(3))))
    );
    assert_eq!(p.attempts_in_flight(), 0);
}

#[test]
fn incoming_cheap_checks_come_before_any_handshake() {
    let config = PolicyConfig {
        max_incoming_handshakes: 2,
        max_incoming_handshakes_per_netgroup: Some(2),
        ..PolicyConfig::default()
    };
    let mut p = policy_with(pool_config(), config, 100);
    let a = p.handle_incoming(t(1), SocketAddr::new(ip(1), 1)).unwrap();
    let _b = p.handle_incoming(t(1), SocketAddr::new(ip(2), 1)).unwrap();
    assert_eq!(
        p.handle_incoming(t(1), SocketAddr::new(ip(3), 1)),
        Err(Refusal::TooManyIncomingHandshakes)
    );
    // A slot frees when a handshake ends, whatever its outcome.
    p.handle_attempt_failed(t(2), a, AttemptFailure::Timeout);
    assert!(p.handle_incoming(t(2), SocketAddr::new(ip(3), 1)).is_ok());
    // A greylisted address is refused at once.
    p.greylist_addr(t(2), ip(4));
    let config = PolicyConfig {
        max_incoming_handshakes: 10,
        ..PolicyConfig::default()
    };
    let mut q = policy_with(pool_config(), config, 100);
    q.greylist_addr(t(2), ip(4));
    assert_eq!(
        q.handle_incoming(t(2), SocketAddr::new(ip(4), 1)),
        Err(Refusal::Pool(PoolError::PointBanned(ip(4))))
    );
}

#[test]
fn another_chain_gets_a_nack_with_points_and_the_point_backs_off() {
    let mut p = policy();
    establish_outgoing(&mut p, 5, t(0));
    // Make point 5 advertisable: it is public and connected.
    let id = p.connect(t(1), point(1), None, false).unwrap();
    let mut other = auth(peer(1), Some(9732));
    other.announced_version = version("ELSEWHERE");
    match p.handle_authenticated(t(1), id, &other) {
        Admission::Nack(NackMotive::UnknownChainName, points) => {
            assert_eq!(points, vec![point(5)])
        }
        a => panic!("{a:?}"),
    }
    p.handle_attempt_failed(t(1), id, AttemptFailure::RefusedByUs);
    assert_eq!(
        p.pool().point_state(&point(1)),
        Some(PointState::Disconnected)
    );
    assert!(p
        .pool()
        .point(&point(1))
        .unwrap()
        .cannot_reconnect_yet(t(1)));
    assert!(!p.pool().point_banned(&point(1)));
}

#[test]
fn an_unexpected_peer_id_closes_without_greylisting() {
    let mut p = policy();
    let id = p.connect(t(1), point(1), Some(peer(7)), false).unwrap();
    let admission = p.handle_authenticated(t(1), id, &auth(peer(1), Some(9732)));
    assert!(matches!(
        admission,
        Admission::Close(PoolError::IdentityCheckFailure { expected, got, .. })
            if expected == peer(7) && got == peer(1)
    ));
    p.handle_attempt_failed(t(1), id, AttemptFailure::RefusedByUs);
    assert_eq!(
        p.pool().point_state(&point(1)),
        Some(PointState::Disconnected)
    );
    assert!(!p.pool().point_banned(&point(1)));
    assert!(!p.pool().peer_banned(&peer(1)));
}

#[test]
fn garbage_greylists_the_address_and_myself_remembers_the_point() {
    let mut p = policy();
    let id = p.handle_incoming(t(1), SocketAddr::new(ip(3), 5)).unwrap();
    p.handle_attempt_failed(t(1), id, AttemptFailure::Garbage);
    assert!(p.pool().point_banned(&point(3)));
    let events = pool_events(&drain(&mut p));
    assert!(events.contains(&P2pEvent::AuthenticationFailed {
        point: Point::new(ip(3), 5)
    }));

    let id = p.connect(t(2), point(4), None, false).unwrap();
    p.handle_attempt_failed(t(2), id, AttemptFailure::Myself);
    assert!(p.pool().is_my_point(&point(4)));
    assert!(p.pool().point(&point(4)).is_none());
    // A timeout greylists nothing.
    let id = p.handle_incoming(t(3), SocketAddr::new(ip(5), 5)).unwrap();
    p.handle_attempt_failed(t(3), id, AttemptFailure::Timeout);
    assert!(!p.pool().point_banned(&point(5)));
}

#[test]
fn nack_points_are_registered_unless_discovery_is_off() {
    for discovery in [true, false] {
        let config = PolicyConfig {
            peer_discovery: discovery,
            ..PolicyConfig::default()
        };
        let mut p = policy_with(pool_config(), config, 100);
        let id = p.connect(t(1), point(1), None, false).unwrap();
        let _ = p.handle_authenticated(t(1), id, &auth(peer(1), Some(9732)));
        p.handle_attempt_failed(
            t(1),
            id,
            AttemptFailure::Nacked {
                motive: NackMotive::TooManyConnections,
                points: vec![point(20), point(21)],
            },
        );
        assert_eq!(p.pool().point(&point(20)).is_some(), discovery);
        assert_eq!(p.pool().point(&point(21)).is_some(), discovery);
        assert_eq!(
            p.pool().point_state(&point(1)),
            Some(PointState::Disconnected)
        );
        assert_eq!(p.pool().peer_state(&peer(1)), Some(PeerState::Disconnected));
        // A Nack is a miss: the point backs off.
        let info = p.pool().point(&point(1)).unwrap();
        assert!(info.cannot_reconnect_yet(t(1)));
        assert_eq!(info.last_miss(), Some(t(1)));
    }
}

#[test]
fn a_full_node_nacks_with_referrals_or_evicts_through_its_hook() {
    // The admission hook serves the no-op connection manager (octez's behaviour); the
    // manager's own evict-to-admit is in `tests_connmgr`.
    let config = PolicyConfig {
        conn_manager: crate::connmgr::ConnManagerConfig::disabled(),
        ..PolicyConfig::default()
    };
    let mut p = policy_with(pool_config(), config, 100);
    for n in 1..=4 {
        establish_outgoing(&mut p, n, t(0));
    }
    drain(&mut p);
    // Full: the dial itself is refused, an incoming peer is Nacked with points.
    assert_eq!(
        p.connect(t(1), point(9), None, false),
        Err(Refusal::TooManyConnections)
    );
    let id = p.handle_incoming(t(1), SocketAddr::new(ip(8), 1)).unwrap();
    match p.handle_authenticated(t(1), id, &auth(peer(8), Some(9732))) {
        Admission::Nack(NackMotive::TooManyConnections, points) => {
            assert_eq!(points.len(), 4);
            assert!(!points.contains(&point(8)));
        }
        a => panic!("{a:?}"),
    }
    p.handle_attempt_failed(t(1), id, AttemptFailure::RefusedByUs);

    #[derive(Debug)]
    struct EvictOldest;
    impl AdmissionHook for EvictOldest {
        fn when_full(
            &mut self,
            _: Time,
            _: &Candidate,
            connections: &[ConnectionView],
        ) -> Option<ConnectionId> {
            connections.iter().map(|c| c.id).min()
        }
    }
    p.set_admission_hook(Box::new(EvictOldest));
    let oldest = p.connections().map(|c| c.id).min().unwrap();
    let id = p.handle_incoming(t(2), SocketAddr::new(ip(8), 1)).unwrap();
    assert!(matches!(
        p.handle_authenticated(t(2), id, &auth(peer(8), Some(9732))),
        Admission::Accept(_)
    ));
    let actions = drain(&mut p);
    assert!(actions.contains(&Action::Close {
        id: oldest,
        reason: DisconnectReason::Evicted
    }));
    assert!(p.handle_established(t(2), id));
    p.handle_closed(t(2), oldest, ClosedBy::Us);
    assert_eq!(p.connection_count(), 4);
    // A peer we close on purpose is a requested disconnection.
    assert!(pool_events(&drain(&mut p))
        .iter()
        .any(|e| matches!(e, P2pEvent::Disconnection { .. })));
}

/// Two nodes dial each other at the same time: whatever the order in which the four
/// handshake ends reach their decision, exactly one of the two TCP connections is accepted
/// at both ends (an end that accepts while the other end refuses sees a Nack), it is the
/// one dialled by the smaller peer id, and each side ends with that one connection.
#[test]
fn simultaneous_dials_keep_the_connection_dialled_by_the_smaller_id() {
    let orders: [[usize; 4]; 6] = [
        [0, 1, 2, 3],
        [3, 2, 1, 0],
        [0, 3, 1, 2],
        [1, 2, 0, 3],
        [2, 0, 3, 1],
        [3, 0, 2, 1],
    ];
    for (a_id, b_id) in [(1u8, 2u8), (2, 1)] {
        for order in orders {
            let config = || PolicyConfig::default();
            let mut a = policy_with(pool_config(), config(), a_id);
            let mut b = policy_with(pool_config(), config(), b_id);
            let a_point = Point::new(ip(a_id), 9732);
            let b_point = Point::new(ip(b_id), 9732);
            // Each side sees its outgoing attempt and the other's incoming one (from the
            // dialler's ephemeral port, announcing its listening port).
            let a_out = a.connect(t(1), b_point, None, false).unwrap();
            let b_out = b.connect(t(1), a_point, None, false).unwrap();
            let a_in = a
                .handle_incoming(t(1), SocketAddr::new(ip(b_id), 50_000))
                .unwrap();
            let b_in = b
                .handle_incoming(t(1), SocketAddr::new(ip(a_id), 50_000))
                .unwrap();
            // Ends: 0 = a_out, 1 = b_in (the a → b connection); 2 = b_out, 3 = a_in.
            let mut accepted = [false; 4];
            for end in order {
                let decision = match end {
                    0 => a.handle_authenticated(t(1), a_out, &auth(peer(b_id), Some(9732))),
                    1 => b.handle_authenticated(t(1), b_in, &auth(peer(a_id), Some(9732))),
                    2 => b.handle_authenticated(t(1), b_out, &auth(peer(a_id), Some(9732))),
                    _ => a.handle_authenticated(t(1), a_in, &auth(peer(b_id), Some(9732))),
                };
                accepted[end] = matches!(decision, Admission::Accept(_));
            }
            let ab = accepted[0] && accepted[1];
            let ba = accepted[2] && accepted[3];
            assert_eq!((ab, ba), (a_id < b_id, b_id < a_id), "order {order:?}");
            for (p, id, ok) in [(&mut a, a_out, ab), (&mut b, b_in, ab)] {
                if ok {
                    assert!(p.handle_established(t(2), id));
                } else {
                    p.handle_attempt_failed(t(2), id, AttemptFailure::RefusedByUs);
                }
            }
            for (p, id, ok) in [(&mut b, b_out, ba), (&mut a, a_in, ba)] {
                if ok {
                    assert!(p.handle_established(t(2), id));
                } else {
                    p.handle_attempt_failed(t(2), id, AttemptFailure::RefusedByUs);
                }
            }
            for p in [&a, &b] {
                assert_eq!(p.connection_count(), 1, "order {order:?}");
                assert_eq!(p.attempts_in_flight(), 0);
            }
            assert_eq!(
                a.pool().point_state(&b_point),
                Some(PointState::Running {
                    peer_id: peer(b_id)
                }),
                "order {order:?}"
            );
            assert_eq!(
                b.pool().point_state(&a_point),
                Some(PointState::Running {
                    peer_id: peer(a_id)
                }),
                "order {order:?}"
            );
        }
    }
}

/// Found by the property test: an incoming attempt that takes over a peer's admitted
/// attempt (tie-break) announced a point that another attempt held for another peer; the
/// takeover stole the point, which then stayed Accepted with no attempt owning it.
#[test]
fn a_takeover_cannot_steal_a_point_another_peer_holds() {
    let mut p = policy();
    let a = p.connect(t(1), point(4), None, false).unwrap();
    assert!(matches!(
        p.handle_authenticated(t(1), a, &auth(peer(0), None)),
        Admission::Accept(_)
    ));
    let b = p.connect(t(1), point(3), None, false).unwrap();
    assert!(matches!(
        p.handle_authenticated(t(1), b, &auth(peer(2), None)),
        Admission::Accept(_)
    ));
    // peer 2 comes in from point 4's address, announcing point 4, and wins the tie-break
    // against our dial (its id is smaller): the point is not its to take.
    let c = p
        .handle_incoming(t(1), SocketAddr::new(ip(4), 40_004))
        .unwrap();
    assert!(matches!(
        p.handle_authenticated(t(1), c, &auth(peer(2), Some(9732))),
        Admission::Nack(NackMotive::AlreadyConnected, _)
    ));
    p.handle_attempt_failed(t(1), c, AttemptFailure::RefusedByUs);
    assert_eq!(p.point_owner.get(&point(4)), Some(&a));
    assert!(p.handle_established(t(2), a));
    assert_eq!(
        p.pool().point_state(&point(4)),
        Some(PointState::Running { peer_id: peer(0) })
    );
}
