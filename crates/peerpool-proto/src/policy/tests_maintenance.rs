//! Scenarios of the maintenance and the incoming caps, without any runtime (the swap's
//! are in `tests_swap`).
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{
    auth, drain, establish_incoming, ip, peer, point, policy_seeded, policy_with, pool_config, t,
};
use super::*;
use crate::connection_message::SupportedVersions;
use crate::pool::{P2pEvent, PoolConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub(super) fn policy(
    min: usize,
    expected: usize,
    max: usize,
    config: PolicyConfig,
) -> ConnectionPolicy<()> {
    let pool = PoolConfig {
        min_connections: min,
        max_connections: max,
        ..PoolConfig::default()
    };
    let config = PolicyConfig {
        maintenance: MaintenanceConfig {
            expected_connections: Some(expected),
            ..config.maintenance
        },
        ..config
    };
    policy_seeded(pool, config, 200, 9)
}

pub(super) fn dials(actions: &[Action<()>]) -> Vec<(ConnectionId, Point)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dial { id, point } => Some((*id, *point)),
            _ => None,
        })
        .collect()
}

/// Peer and point of known point number `n` (10.0.x.y).
pub(super) fn known(n: u16) -> Point {
    Point::new(
        IpAddr::V4(Ipv4Addr::new(10, 1, (n / 200) as u8, (n % 200) as u8 + 1)),
        9732,
    )
}

pub(super) fn peer_of(n: u16) -> PeerId {
    let mut id = [0u8; 16];
    id[..2].copy_from_slice(&n.to_be_bytes());
    id[15] = 0xaa;
    PeerId(id)
}

/// Registers `count` points (through an Advertise from a fresh incoming peer would add a
/// connection; the pool's own registration keeps the count at zero).
pub(super) fn learn(p: &mut ConnectionPolicy<()>, count: u16) {
    for n in 0..count {
        p.pool.register_point(t(0), known(n), None, None);
    }
    drain(p);
}

/// Completes a dial as established with the peer of its point.
pub(super) fn succeed(p: &mut ConnectionPolicy<()>, at: Time, id: ConnectionId, point: Point) {
    let n = (0..1000u16).find(|n| known(*n) == point).unwrap_or(999);
    let a = p.handle_authenticated(at, id, &auth(peer_of(n), Some(9732)));
    assert!(matches!(a, Admission::Accept(_)), "{a:?}");
    assert!(p.handle_established(at, id));
}

#[test]
fn too_few_dials_at_most_the_cap_at_once_until_min_target() {
    // 10/50/100: below 23 a round dials until 36, at most 10 dials in flight.
    let mut p = policy(10, 50, 100, PolicyConfig::default());
    learn(&mut p, 60);
    p.activate(t(1));
    let first = dials(&drain(&mut p));
    assert_eq!(first.len(), 10, "the cap on dials in flight");
    assert_eq!(p.dialing(), 10);
    // Each success makes room for one more dial; the round stops at min_target.
    let mut in_flight = first;
    let mut established = 0;
    while let Some((id, pt)) = in_flight.pop() {
        succeed(&mut p, t(2), id, pt);
        established += 1;
        in_flight.extend(dials(&drain(&mut p)));
        assert!(p.dialing() <= 10);
    }
    // No dial starts once min_target runs; the dials already in flight (at most 9) may
    // still succeed.
    assert!((36..=45).contains(&established), "{established}");
    assert_eq!(p.connection_count(), established);
    // octez's policy dials every candidate of the round at once (up to max_target).
    let config = PolicyConfig {
        maintenance: MaintenanceConfig::octez(),
        ..PolicyConfig::default()
    };
    let mut q = policy(10, 50, 100, config);
    learn(&mut q, 60);
    q.activate(t(1));
    assert_eq!(dials(&drain(&mut q)).len(), 60);
}

#[test]
fn candidates_never_failed_first_then_oldest_failure_and_no_retry_in_the_round() {
    let config = PolicyConfig {
        maintenance: MaintenanceConfig {
            max_dials_in_flight: Some(1),
            ..MaintenanceConfig::default()
        },
        ..PolicyConfig::default()
    };
    let mut p = policy(2, 3, 6, config);
    learn(&mut p, 3);
    // Points 0 and 1 failed before, 1 longer ago; 2 never did.
    for (n, at) in [(0u16, 20u64), (1, 10)] {
        let id = p.connect(t(at), known(n), None, false).unwrap();
        p.handle_attempt_failed(t(at), id, AttemptFailure::Connect);
    }
    drain(&mut p);
    p.activate(t(100));
    let order: Vec<Point> = (0..3)
        .map(|_| {
            let (id, pt) = dials(&drain(&mut p))[0];
            p.handle_attempt_failed(t(100), id, AttemptFailure::Timeout);
            pt
        })
        .collect();
    assert_eq!(order, vec![known(2), known(1), known(0)]);
    // All three failed in this round: nothing is retried, the node asks for more.
    let actions = drain(&mut p);
    assert!(dials(&actions).is_empty());
    assert!(actions.contains(&Action::WakeDiscovery));
}

#[test]
fn asking_for_more_backs_off_and_a_new_point_ends_the_wait() {
    let mut private = auth(peer(2), None);
    private.metadata.private_node = true;
    // 3/4/6: with two connections the node is short and knows no point: Bootstrap to the
    // public peer only,
    // discovery woken, then waits 5 s, 10 s, 20 s … capped at 60 s.
    let mut p = policy(3, 4, 6, PolicyConfig::default());
    let a = p.handle_incoming(t(0), SocketAddr::new(ip(1), 1)).unwrap();
    p.handle_authenticated(t(0), a, &auth(peer(1), None));
    assert!(p.handle_established(t(0), a));
    let b = p.handle_incoming(t(0), SocketAddr::new(ip(2), 1)).unwrap();
    p.handle_authenticated(t(0), b, &private);
    assert!(p.handle_established(t(0), b));
    drain(&mut p);
    p.activate(t(10));
    let actions = drain(&mut p);
    let bootstraps: Vec<ConnectionId> = actions
        .iter()
        .filter_map(|x| match x {
            Action::Send {
                id,
                message: ControlMessage::Bootstrap,
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(bootstraps, vec![a]);
    assert!(actions.contains(&Action::WakeDiscovery));
    let mut now = t(10);
    let mut waits = Vec::new();
    for _ in 0..6 {
        let next = p.poll_timeout().unwrap();
        waits.push(next.saturating_duration_since(now).as_secs());
        now = next;
        p.handle_timeout(now);
        drain(&mut p);
    }
    assert_eq!(waits, vec![5, 10, 20, 40, 60, 60]);
    // A new point ends the wait at once.
    p.pool.register_point(now, known(5), None, None);
    p.handle_control(now, a, ControlMessage::Advertise(vec![known(6)]));
    let d = dials(&drain(&mut p));
    assert_eq!(d.len(), 2, "{d:?}");
}

#[test]
fn too_many_closes_down_to_max_target_sparing_private_trusted_peers() {
    // 1/4/10: max_target 6, max_threshold 8. octez's random victims: the no-op connection
    // manager (the manager's trims are in `tests_connmgr`).
    let config = PolicyConfig {
        conn_manager: crate::connmgr::ConnManagerConfig::disabled(),
        ..PolicyConfig::default()
    };
    let mut p = policy(1, 4, 10, config);
    assert_eq!(
        p.bounds(),
        Bounds {
            min_threshold: 2,
            min_target: 3,
            max_target: 6,
            max_threshold: 8
        }
    );
    // Explicit dials may go up to max_connections.
    for n in 0..9u16 {
        p.pool.register_point(t(0), known(n), Some(n == 0), None);
        let id = p.connect(t(0), known(n), None, false).unwrap();
        let mut a = auth(peer_of(n), Some(9732));
        a.metadata.private_node = n == 0;
        assert!(matches!(
            p.handle_authenticated(t(0), id, &a),
            Admission::Accept(_)
        ));
        assert!(p.handle_established(t(0), id));
    }
    drain(&mut p);
    p.activate(t(1));
    p.maintain(t(1));
    let actions = drain(&mut p);
    let closed: Vec<ConnectionId> = actions
        .iter()
        .filter_map(|x| match x {
            Action::Close {
                id,
                reason: DisconnectReason::TooManyConnections,
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 3, "{actions:?}");
    let spared = p.connection_of(&peer_of(0)).unwrap().id;
    assert!(
        !closed.contains(&spared),
        "a private trusted peer is never a victim"
    );
    assert!(actions.contains(&Action::Maintained));
    assert!(actions.contains(&Action::Event(PolicyEvent::Pool(
        P2pEvent::TooManyConnections
    ))));
    for id in closed {
        p.handle_closed(t(2), id, ClosedBy::Us);
    }
    assert_eq!(p.connection_count(), 6);
}

#[test]
fn the_idle_timer_and_the_too_few_trigger_wake_the_maintenance_unless_turned_off() {
    for too_few in [true, false] {
        let config = PolicyConfig {
            maintenance: MaintenanceConfig {
                triggers: Triggers {
                    too_few,
                    too_many: true,
                    idle: true,
                },
                ..MaintenanceConfig::default()
            },
            ..PolicyConfig::default()
        };
        // 2/3/6: min_threshold 2.
        let mut p = policy(2, 3, 6, config);
        learn(&mut p, 4);
        p.activate(t(0));
        let ds = dials(&drain(&mut p));
        assert_eq!(ds.len(), 4);
        let mut ids = Vec::new();
        for (id, pt) in ds {
            succeed(&mut p, t(0), id, pt);
            ids.push(id);
        }
        drain(&mut p);
        // In bounds: the idle timer is 120 s away.
        assert_eq!(p.poll_timeout(), Some(t(120)));
        // Three disconnections leave 1 < min_connections 2.
        for id in &ids[..3] {
            p.handle_closed(t(10), *id, ClosedBy::Peer);
        }
        // The points backed off for 60 s; new ones are learned.
        for n in 10..14 {
            p.pool.register_point(t(10), known(n), None, None);
        }
        p.handle_timeout(t(11));
        let woken = !dials(&drain(&mut p)).is_empty();
        assert_eq!(woken, too_few, "too_few trigger {too_few}");
        if !too_few {
            // The idle timer still runs the maintenance.
            p.handle_timeout(t(120));
            assert!(!dials(&drain(&mut p)).is_empty());
        }
    }
}

#[test]
fn falling_below_min_threshold_wakes_the_maintenance_unlike_octez() {
    for octez in [false, true] {
        let maintenance = if octez {
            MaintenanceConfig::octez()
        } else {
            MaintenanceConfig::default()
        };
        let config = PolicyConfig {
            maintenance,
            ..PolicyConfig::default()
        };
        // 4/8/12: min_threshold 5, min_target 6.
        let mut p = policy(4, 8, 12, config);
        let b = p.bounds();
        assert_eq!((b.min_threshold, b.min_target), (5, 6));
        learn(&mut p, 6);
        p.activate(t(0));
        let mut ids = Vec::new();
        for (id, pt) in dials(&drain(&mut p)) {
            succeed(&mut p, t(0), id, pt);
            ids.push(id);
        }
        drain(&mut p);
        assert_eq!(p.connection_count(), 6);
        // Two disconnections leave 4: not below min_connections, below min_threshold.
        for id in &ids[..2] {
            p.handle_closed(t(10), *id, ClosedBy::Peer);
        }
        p.pool.register_point(t(10), known(50), None, None);
        p.handle_timeout(t(11));
        let redialled = dials(&drain(&mut p));
        if octez {
            assert!(redialled.is_empty(), "octez waits for its idle timer");
            assert_eq!(p.poll_timeout(), Some(t(120)));
        } else {
            assert_eq!(redialled.len(), 1, "the new point, the others back off");
            assert_eq!(redialled[0].1, known(50));
        }
    }
}

#[test]
fn private_mode_dials_trusted_points_only_and_asks_nothing_of_peers() {
    let mut pool = PoolConfig {
        min_connections: 2,
        max_connections: 6,
        private_mode: true,
        ..PoolConfig::default()
    };
    pool.min_connections = 2;
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(7);
    let pool = Pool::new(pool, &mut rng).unwrap();
    let mut p: ConnectionPolicy<()> = ConnectionPolicy::new(
        t(0),
        PolicyConfig::default(),
        SupportedVersions::octez("TEZOS"),
        pool,
        peer(200),
        9,
    )
    .unwrap();
    learn(&mut p, 3);
    p.add_trusted_point(t(0), known(7), None);
    p.activate(t(1));
    let actions = drain(&mut p);
    let d: Vec<Point> = dials(&actions).into_iter().map(|(_, pt)| pt).collect();
    assert_eq!(d, vec![known(7)]);
    let (id, _) = dials(&actions)[0];
    p.handle_attempt_failed(t(1), id, AttemptFailure::Connect);
    let actions = drain(&mut p);
    assert!(!actions.contains(&Action::WakeDiscovery));
    assert!(!actions.iter().any(|a| matches!(a, Action::Send { .. })));
}

#[test]
fn maintain_answers_once_the_cycle_has_run() {
    let mut p = policy(0, 0, 4, PolicyConfig::default());
    p.activate(t(0));
    drain(&mut p);
    p.maintain(t(1));
    assert!(drain(&mut p).contains(&Action::Maintained));
    // Not before activation.
    let mut q = policy(0, 0, 4, PolicyConfig::default());
    q.maintain(t(1));
    assert!(!drain(&mut q).contains(&Action::Maintained));
    q.activate(t(2));
    assert!(drain(&mut q).contains(&Action::Maintained));
}

#[test]
fn incoming_handshakes_are_capped_per_address_and_per_netgroup() {
    let config = PolicyConfig {
        max_incoming_handshakes: 20,
        ..PolicyConfig::default()
    };
    let mut p = policy(0, 0, 100, config);
    let from = |a: u8, b: u8, c: u8, port: u16| {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, 7, c)), port)
    };
    // Two per address.
    assert!(p.handle_incoming(t(0), from(10, 1, 1, 1)).is_ok());
    assert!(p.handle_incoming(t(0), from(10, 1, 1, 2)).is_ok());
    assert_eq!(
        p.handle_incoming(t(0), from(10, 1, 1, 3)),
        Err(Refusal::TooManyHandshakesFromAddr)
    );
    // Ten per netgroup (half of 20): 10.1.0.0/16 is full after eight more.
    for c in 2..10 {
        assert!(p.handle_incoming(t(0), from(10, 1, c, 1)).is_ok());
    }
    assert!(matches!(
        p.handle_incoming(t(0), from(10, 1, 50, 1)),
        Err(Refusal::TooManyHandshakesFromNetgroup(_))
    ));
    // Another netgroup still gets in.
    assert!(p.handle_incoming(t(0), from(10, 2, 1, 1)).is_ok());
    assert_eq!(p.incoming_in_flight(), 11);
}

#[test]
fn established_incoming_connections_are_capped_so_outgoing_slots_stay_free() {
    let config = PolicyConfig {
        max_incoming_connections: Some(2),
        ..PolicyConfig::default()
    };
    let mut p = policy(0, 0, 10, config);
    for n in 1..=2 {
        let id = p.handle_incoming(t(0), SocketAddr::new(ip(n), 1)).unwrap();
        assert!(matches!(
            p.handle_authenticated(t(0), id, &auth(peer(n), Some(9732))),
            Admission::Accept(_)
        ));
        assert!(p.handle_established(t(0), id));
    }
    let id = p.handle_incoming(t(0), SocketAddr::new(ip(3), 1)).unwrap();
    assert!(matches!(
        p.handle_authenticated(t(0), id, &auth(peer(3), Some(9732))),
        Admission::Nack(crate::connection_message::NackMotive::TooManyConnections, _)
    ));
    p.handle_attempt_failed(t(0), id, AttemptFailure::RefusedByUs);
    // Our own dials still have room.
    let id = p.connect(t(0), point(4), None, false).unwrap();
    assert!(matches!(
        p.handle_authenticated(t(0), id, &auth(peer(4), Some(9732))),
        Admission::Accept(_)
    ));
}

#[test]
fn the_maintenance_dials_a_trusted_point_and_retries_after_its_wait() {
    for octez in [false, true] {
        let mut pool = pool_config();
        pool.min_connections = 1;
        let mut config = PolicyConfig::default();
        if octez {
            config.maintenance = MaintenanceConfig::octez();
        }
        let mut p = policy_with(pool, config, 100);
        p.add_trusted_point(t(0), point(1), None);
        // Not active yet: nothing is dialled.
        assert!(!drain(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Dial { .. })));
        p.activate(t(0));
        let id = match drain(&mut p)
            .iter()
            .find(|a| matches!(a, Action::Dial { .. }))
        {
            Some(Action::Dial { id, point: q }) if *q == point(1) => *id,
            other => panic!("{other:?}"),
        };
        p.handle_attempt_failed(t(0), id, AttemptFailure::Connect);
        // Nothing else to dial: the maintenance waits for the end of the point's backoff
        // (1 s); octez waits its 5 s. Then it tries again.
        assert!(!drain(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Dial { .. })));
        let next = p.poll_timeout().unwrap();
        if octez {
            assert_eq!(next, t(5));
        } else {
            assert!(next > t(1) && next < t(2), "{next:?}");
        }
        p.handle_timeout(next);
        assert!(drain(&mut p)
            .iter()
            .any(|a| matches!(a, Action::Dial { point: q, .. } if *q == point(1))));
    }
}

#[test]
fn below_min_connections_advertised_points_are_dialled() {
    let mut pool = pool_config();
    pool.min_connections = 2;
    let mut p = policy_with(pool, PolicyConfig::default(), 100);
    p.activate(t(0));
    let asker = establish_incoming(&mut p, 1, t(0));
    drain(&mut p);
    p.handle_control(
        t(1),
        asker,
        ControlMessage::Advertise(vec![point(10), point(11), point(12)]),
    );
    let dials: Vec<Point> = drain(&mut p)
        .iter()
        .filter_map(|a| match a {
            Action::Dial { point, .. } => Some(*point),
            _ => None,
        })
        .collect();
    // Bounds for 2/4/4: one connection runs, below min_threshold 2; the round may dial up
    // to max_target 4, so all three.
    assert_eq!(dials.len(), 3, "{dials:?}");
}
