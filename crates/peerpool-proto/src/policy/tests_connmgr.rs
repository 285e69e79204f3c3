//! The connection manager inside the connection policy: event-driven trims, evict-to-admit,
//! the per-netgroup cap, and the eclipse scenario of issue 9 (pure core).
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{auth, drain, policy_with, t};
use super::*;
use crate::connection_message::NackMotive;
use crate::connmgr::{ConnManagerConfig, ConnManagerEvent, VictimRule};
use crate::pool::PoolConfig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

fn closed(actions: &[Action<()>]) -> Vec<(ConnectionId, DisconnectReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { id, reason } => Some((*id, *reason)),
            _ => None,
        })
        .collect()
}

fn peer16(n: u16) -> PeerId {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&n.to_be_bytes());
    b[15] = 0x5a;
    PeerId(b)
}

/// A policy with bounds 1/4/10 (low 6, high 8, max 10) and the manager's defaults but
/// `per_netgroup` incoming connections per netgroup.
fn small(per_netgroup: usize) -> ConnectionPolicy<()> {
    small_with(per_netgroup, None)
}

fn small_with(per_netgroup: usize, high: Option<usize>) -> ConnectionPolicy<()> {
    let pool = PoolConfig {
        min_connections: 1,
        max_connections: 10,
        ..PoolConfig::default()
    };
    let config = PolicyConfig {
        maintenance: MaintenanceConfig {
            expected_connections: Some(4),
            ..MaintenanceConfig::default()
        },
        conn_manager: ConnManagerConfig {
            max_incoming_per_netgroup: Some(per_netgroup),
            high_water: high,
            ..ConnManagerConfig::default()
        },
        max_incoming_connections: Some(10),
        ..PolicyConfig::default()
    };
    policy_with(pool, config, 250)
}

/// An incoming connection from `ip` by peer `n`; returns the admission and, if accepted
/// and established, the connection.
fn incoming(
    p: &mut ConnectionPolicy<()>,
    n: u16,
    ip: IpAddr,
    now: Time,
) -> (Result<Admission, Refusal>, Option<ConnectionId>) {
    let id = match p.handle_incoming(now, SocketAddr::new(ip, 40_000)) {
        Ok(id) => id,
        Err(e) => return (Err(e), None),
    };
    let a = p.handle_authenticated(now, id, &auth(peer16(n), None));
    if matches!(a, Admission::Accept(_)) && p.handle_established(now, id) {
        (Ok(a), Some(id))
    } else {
        if !matches!(a, Admission::Accept(_)) {
            p.handle_attempt_failed(now, id, AttemptFailure::RefusedByUs);
        }
        (Ok(a), None)
    }
}

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, 1))
}

#[test]
fn crossing_the_high_watermark_trims_at_once_respecting_grace_down_to_high() {
    let mut p = small(10);
    let mut ids = Vec::new();
    for n in 0..8u16 {
        ids.push(incoming(&mut p, n, v4(20, n as u8, 0), t(0)).1.unwrap());
    }
    assert!(closed(&drain(&mut p)).is_empty(), "8 = high: no trim");
    // The 9th at t(100): the first 8 are past their grace, it is not.
    let ninth = incoming(&mut p, 8, v4(20, 8, 0), t(100)).1.unwrap();
    let actions = drain(&mut p);
    let c = closed(&actions);
    assert_eq!(c.len(), 3, "9 > high 8: down to low 6: {c:?}");
    assert!(c
        .iter()
        .all(|(id, r)| *id != ninth && *r == DisconnectReason::TooManyConnections));
    let trims = actions
        .iter()
        .filter(|a| matches!(a, Action::Event(PolicyEvent::ConnManager(ConnManagerEvent::Trimmed(v))) if v.overrode.is_none()))
        .count();
    assert_eq!(trims, 3, "each trim is explained");
    for (id, _) in c {
        p.handle_closed(t(100), id, ClosedBy::Us);
    }
    assert_eq!(p.connection_count(), 6);
    // Everyone young: only down to high, overriding grace.
    let mut p = small(10);
    for n in 0..9u16 {
        assert!(incoming(&mut p, n, v4(20, n as u8, 0), t(0)).1.is_some());
    }
    let actions = drain(&mut p);
    assert_eq!(closed(&actions).len(), 1);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Event(PolicyEvent::ConnManager(ConnManagerEvent::Trimmed(v)))
            if v.overrode.is_some())));
}

#[test]
fn a_trusted_or_protected_peer_is_never_trimmed() {
    let mut p = small(10);
    p.trust_peer(t(0), peer16(0));
    p.with_conn_manager(t(0), |m, now| m.protect(now, peer16(1), "app"))
        .unwrap();
    for n in 0..9u16 {
        assert!(incoming(&mut p, n, v4(20, n as u8, 0), t(0)).1.is_some());
    }
    let c = closed(&drain(&mut p));
    let trusted = p.connection_of(&peer16(0)).unwrap().id;
    let protected = p.connection_of(&peer16(1)).unwrap().id;
    assert_eq!(c.len(), 1, "9 young: down to high 8 only");
    assert_eq!(p.trim_open_conns(t(500)), 2, "past grace: down to low 6");
    let all = [c, closed(&drain(&mut p))].concat();
    assert!(!all.iter().any(|(id, _)| *id == trusted || *id == protected));
}

#[test]
fn a_full_node_evicts_for_a_newcomer_from_a_new_netgroup_only() {
    // With high = max the node can be full (with high < max a trim keeps it below).
    let mut p = small_with(10, Some(10));
    for n in 0..10u16 {
        // Two netgroups hold everything: 30.1 and 30.2.
        assert!(
            incoming(&mut p, n, v4(30, 1 + (n % 2) as u8, n as u8), t(0))
                .1
                .is_some()
        );
    }
    drain(&mut p);
    let before = p.connection_count();
    // From a netgroup we already have: refused with referrals.
    let (a, _) = incoming(&mut p, 100, v4(30, 1, 200), t(200));
    assert!(
        matches!(a, Ok(Admission::Nack(NackMotive::TooManyConnections, _))),
        "{a:?}"
    );
    // From a new netgroup: admitted, an incoming connection of a crowded netgroup goes.
    let (a, id) = incoming(&mut p, 101, v4(40, 0, 0), t(200));
    assert!(matches!(a, Ok(Admission::Accept(_))), "{a:?}");
    assert!(id.is_some());
    let actions = drain(&mut p);
    let c = closed(&actions);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].1, DisconnectReason::Evicted);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Event(PolicyEvent::ConnManager(ConnManagerEvent::Evicted { victim, .. }))
            if matches!(victim.rule, VictimRule::CrowdedNetgroup(_) | VictimRule::Youngest))));
    p.handle_closed(t(200), c[0].0, ClosedBy::Us);
    assert_eq!(p.connection_count(), before);
}

#[test]
fn a_netgroup_holding_its_share_of_incoming_connections_is_nacked() {
    let mut p = small(3);
    for n in 0..3u16 {
        assert!(incoming(&mut p, n, v4(50, 5, n as u8), t(0)).1.is_some());
    }
    let (a, _) = incoming(&mut p, 9, v4(50, 5, 77), t(0));
    assert!(
        matches!(a, Ok(Admission::Nack(NackMotive::TooManyConnections, _))),
        "{a:?}"
    );
    assert!(
        incoming(&mut p, 10, v4(50, 6, 1), t(0)).1.is_some(),
        "another /16"
    );
    // Loopback is exempt by default (a local network runs from 127.0.0.1).
    for n in 20..25u16 {
        assert!(incoming(&mut p, n, v4(127, 0, 0), t(0)).1.is_some());
    }
}

// ---- the eclipse scenario (issue 9, tests) ----------------------------------------------

/// How the attack went: the honest share of the node's connections at a few instants.
#[derive(Debug)]
struct Eclipse {
    at_60s: f64,
    at_120s: f64,
    at_end: f64,
    connections_at_end: usize,
}

/// A node (max 100, bounds 10/50/100: low 68, high 84) holding 40 honest peers from 30
/// netgroups; from t(0) an attacker with 1 000 addresses in 2 netgroups connects as fast
/// as the node accepts (10 attempts per simulated 100 ms), reconnecting every connection
/// that is closed; honest peers that lose their connection come back after 5 s. Runs
/// 180 s; with `restart`, the node restarts at 90 s (every connection lost) and the
/// honest peers come back 5 s later while the attacker goes on. `conn_manager` picks the
/// policy.
fn eclipse(conn_manager: ConnManagerConfig, restart: bool) -> Eclipse {
    let pool = PoolConfig {
        min_connections: 10,
        max_connections: 100,
        ..PoolConfig::default()
    };
    let config = PolicyConfig {
        conn_manager,
        max_incoming_connections: Some(100),
        maintenance: MaintenanceConfig {
            enabled: false,
            ..MaintenanceConfig::default()
        },
        ..PolicyConfig::default()
    };
    let fresh = || policy_with(pool.clone(), config.clone(), 250);
    let mut p = fresh();
    let honest_ip = |i: u16| v4(60 + (i % 30) as u8, (i / 30) as u8, i as u8);
    let mut honest: Vec<Option<ConnectionId>> = vec![None; 40];
    let mut honest_back: Vec<Option<Time>> = vec![None; 40];
    let start = t(0);
    // The honest peers connected long before the attack (past any grace).
    let before = Time::from_secs(1_700_000_000 - 3_600);
    for i in 0..40u16 {
        honest[i as usize] = incoming(&mut p, i, honest_ip(i), before).1;
    }
    drain(&mut p);
    let mut attacker: BTreeSet<ConnectionId> = BTreeSet::new();
    let mut next_attacker = 0u16;
    let share = |p: &ConnectionPolicy<()>, attacker: &BTreeSet<ConnectionId>| {
        let total = p.connection_count();
        let bad = p.connections().filter(|c| attacker.contains(&c.id)).count();
        if total == 0 {
            0.0
        } else {
            (total - bad) as f64 / total as f64
        }
    };
    let (mut at_60s, mut at_120s) = (0.0, 0.0);
    for step in 0..1_800u64 {
        let now = start.saturating_add(std::time::Duration::from_millis(step * 100));
        if restart && step == 900 {
            p = fresh();
            attacker.clear();
            for i in 0..40 {
                honest[i] = None;
                honest_back[i] = Some(now.saturating_add(std::time::Duration::from_secs(5)));
            }
        }
        // The attacker: 10 attempts per step, 500 addresses in each of 2 netgroups.
        for _ in 0..10 {
            let k = next_attacker % 1_000;
            next_attacker = next_attacker.wrapping_add(1);
            let ip = v4(200 + (k % 2) as u8, 1, (k / 2 % 250) as u8);
            if let (_, Some(id)) = incoming(&mut p, 1_000 + k, ip, now) {
                attacker.insert(id);
            }
        }
        // Honest peers whose connection closed come back 5 s later.
        for i in 0..40usize {
            if honest_back[i].is_some_and(|at| at <= now) {
                honest_back[i] = None;
                honest[i] = incoming(&mut p, i as u16, honest_ip(i as u16), now).1;
                if honest[i].is_none() {
                    honest_back[i] = Some(now.saturating_add(std::time::Duration::from_secs(5)));
                }
            }
        }
        // The runtime closes what the policy asks to close.
        for (id, _) in closed(&drain(&mut p)) {
            p.handle_closed(now, id, ClosedBy::Us);
            attacker.remove(&id);
            if let Some(i) = honest.iter().position(|h| *h == Some(id)) {
                honest[i] = None;
                honest_back[i] = Some(now.saturating_add(std::time::Duration::from_secs(5)));
            }
        }
        drain(&mut p);
        if step == 600 {
            at_60s = share(&p, &attacker);
        }
        if step == 1_200 {
            at_120s = share(&p, &attacker);
        }
    }
    Eclipse {
        at_60s,
        at_120s,
        at_end: share(&p, &attacker),
        connections_at_end: p.connection_count(),
    }
}

#[test]
fn an_attacker_from_two_netgroups_cannot_surround_the_node() {
    for restart in [false, true] {
        let ours = eclipse(ConnManagerConfig::default(), restart);
        let octez = eclipse(ConnManagerConfig::disabled(), restart);
        println!("eclipse (restart at 90 s: {restart}), honest share: manager {ours:?}; octez policy {octez:?}");
        assert!(
            ours.connections_at_end >= 40,
            "every honest peer is back: {ours:?}"
        );
        for share in [ours.at_60s, ours.at_120s, ours.at_end] {
            assert!(
                share >= 0.75,
                "honest share {share} with the manager: {ours:?}"
            );
        }
        assert!(
            octez.at_end < 0.5,
            "octez's policy is surrounded (the scenario has teeth): {octez:?}"
        );
    }
}

#[test]
fn the_maintenance_dials_a_new_netgroup_first() {
    for (manager, new_first) in [
        (ConnManagerConfig::default(), true),
        (ConnManagerConfig::disabled(), false),
    ] {
        let pool = PoolConfig {
            min_connections: 1,
            max_connections: 10,
            ..PoolConfig::default()
        };
        let config = PolicyConfig {
            maintenance: MaintenanceConfig {
                expected_connections: Some(4),
                max_dials_in_flight: Some(1),
                ..MaintenanceConfig::default()
            },
            conn_manager: manager,
            ..PolicyConfig::default()
        };
        let mut p = policy_with(pool, config, 250);
        assert!(incoming(&mut p, 1, v4(20, 1, 1), t(0)).1.is_some());
        // Known points: three in 20.1/16 (connected), one in 30.1/16, registered last.
        for (i, ip) in [v4(20, 1, 2), v4(20, 1, 3), v4(20, 1, 4), v4(30, 1, 1)]
            .into_iter()
            .enumerate()
        {
            p.pool
                .register_point(t(i as u64), Point::new(ip, 9732), None, None);
        }
        drain(&mut p);
        p.activate(t(10));
        p.maintain(t(10));
        let first = drain(&mut p).into_iter().find_map(|a| match a {
            Action::Dial { point, .. } => Some(point),
            _ => None,
        });
        let new_group = Point::new(v4(30, 1, 1), 9732);
        assert_eq!(first == Some(new_group), new_first, "{first:?}");
    }
}
