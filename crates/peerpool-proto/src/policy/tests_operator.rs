//! Scenarios of the connection policy after admission, without any runtime: Bootstrap and
//! Advertise, peer faults, operator actions, the peers file, victims, determinism.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{
    auth, drain, establish_incoming, establish_outgoing, ip, peer, point, policy, policy_with,
    pool_config, pool_events, t,
};
use super::*;
use crate::pool::{P2pEvent, PeerState, PointState};
use std::net::SocketAddr;

#[test]
fn bootstrap_is_answered_within_its_rate_and_advertise_registers_points() {
    let mut p = policy();
    let asker = establish_incoming(&mut p, 1, t(0));
    establish_outgoing(&mut p, 2, t(0));
    drain(&mut p);
    p.handle_control(t(1), asker, ControlMessage::Bootstrap);
    let actions = drain(&mut p);
    let advertised: Vec<Point> = actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                id,
                message: ControlMessage::Advertise(points),
            } if *id == asker => Some(points.clone()),
            _ => None,
        })
        .unwrap();
    // Never the asker's own point.
    assert_eq!(advertised, vec![point(2)]);
    // Burst 3 per second: the next two are answered, the one after is throttled.
    for _ in 0..2 {
        p.handle_control(t(1), asker, ControlMessage::Bootstrap);
    }
    p.handle_control(t(1), asker, ControlMessage::Bootstrap);
    let actions = drain(&mut p);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Send { .. }))
            .count(),
        2
    );
    assert!(
        actions.contains(&Action::Event(PolicyEvent::ControlThrottled {
            peer_id: peer(1),
            kind: ControlKind::Bootstrap
        }))
    );
    // A second later one more is answered.
    p.handle_control(t(2), asker, ControlMessage::Bootstrap);
    assert!(drain(&mut p)
        .iter()
        .any(|a| matches!(a, Action::Send { .. })));

    p.handle_control(
        t(3),
        asker,
        ControlMessage::Advertise(vec![point(30), point(31)]),
    );
    assert!(p.pool().point(&point(30)).is_some());
    assert!(p.pool().point(&point(31)).is_some());
}

#[test]
fn a_private_peers_bootstrap_and_everything_without_discovery_is_ignored() {
    let mut p = policy();
    let id = p.handle_incoming(t(0), SocketAddr::new(ip(1), 1)).unwrap();
    let mut private = auth(peer(1), Some(9732));
    private.metadata.private_node = true;
    assert!(matches!(
        p.handle_authenticated(t(0), id, &private),
        Admission::Accept(_)
    ));
    assert!(p.handle_established(t(0), id));
    establish_outgoing(&mut p, 2, t(0));
    drain(&mut p);
    p.handle_control(t(1), id, ControlMessage::Bootstrap);
    assert!(!drain(&mut p)
        .iter()
        .any(|a| matches!(a, Action::Send { .. })));

    let config = PolicyConfig {
        peer_discovery: false,
        ..PolicyConfig::default()
    };
    let mut q = policy_with(pool_config(), config, 100);
    let id = establish_incoming(&mut q, 1, t(0));
    let actions = drain(&mut q);
    // No Bootstrap is sent either.
    assert!(!actions.iter().any(|a| matches!(a, Action::Send { .. })));
    q.handle_control(t(1), id, ControlMessage::Bootstrap);
    q.handle_control(t(1), id, ControlMessage::Advertise(vec![point(40)]));
    assert!(!drain(&mut q)
        .iter()
        .any(|a| matches!(a, Action::Send { .. })));
    assert!(q.pool().point(&point(40)).is_none());
}

#[test]
fn a_peer_fault_greylists_and_a_closed_connection_backs_off() {
    let mut p = policy();
    let id = establish_outgoing(&mut p, 1, t(0));
    p.handle_closed(t(1), id, ClosedBy::PeerFault);
    assert!(p.pool().peer_banned(&peer(1)));
    assert!(p.pool().point_banned(&point(1)));
    let id = establish_outgoing(&mut p, 2, t(1));
    p.handle_closed(t(2), id, ClosedBy::Peer);
    assert_eq!(
        p.pool().point_state(&point(2)),
        Some(PointState::Disconnected)
    );
    assert_eq!(p.pool().peer_state(&peer(2)), Some(PeerState::Disconnected));
    // 60 s after a running connection (disconnection_delay).
    assert!(p
        .pool()
        .point(&point(2))
        .unwrap()
        .cannot_reconnect_yet(t(61)));
    assert!(!p
        .pool()
        .point(&point(2))
        .unwrap()
        .cannot_reconnect_yet(t(63)));
    assert!(
        pool_events(&drain(&mut p)).contains(&P2pEvent::ExternalDisconnection { peer_id: peer(2) })
    );
}

#[test]
fn operator_actions_close_what_they_ban() {
    let mut p = policy();
    let a = establish_outgoing(&mut p, 1, t(0));
    let b = establish_incoming(&mut p, 2, t(0));
    let c = establish_outgoing(&mut p, 3, t(0));
    drain(&mut p);
    p.ban_peer(t(1), &peer(1));
    p.ban_point(t(1), &point(2));
    p.greylist_peer(t(1), &peer(3));
    let closes: Vec<(ConnectionId, DisconnectReason)> = drain(&mut p)
        .into_iter()
        .filter_map(|x| match x {
            Action::Close { id, reason } => Some((id, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        vec![
            (a, DisconnectReason::PeerBanned),
            (b, DisconnectReason::AddrBanned),
            (c, DisconnectReason::Greylisted)
        ]
    );
    // Closing twice asks once.
    p.disconnect(t(1), &peer(1));
    assert!(!drain(&mut p)
        .iter()
        .any(|x| matches!(x, Action::Close { .. })));
}

#[test]
fn the_peers_file_is_saved_on_schedule_and_shutdown_stops_everything() {
    let mut p = policy();
    let first = p.poll_timeout().unwrap();
    assert_eq!(first, t(300));
    p.handle_timeout(t(300));
    assert!(drain(&mut p)
        .iter()
        .any(|a| matches!(a, Action::SavePeers(_))));
    assert_eq!(p.poll_timeout(), Some(t(600)));
    let id = establish_outgoing(&mut p, 1, t(301));
    drain(&mut p);
    p.shutdown(t(302));
    assert!(drain(&mut p).contains(&Action::Close {
        id,
        reason: DisconnectReason::Shutdown
    }));
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(
        p.connect(t(303), point(2), None, false),
        Err(Refusal::NotActive)
    );
    assert_eq!(
        p.handle_incoming(t(303), SocketAddr::new(ip(2), 1)),
        Err(Refusal::NotActive)
    );
}

#[test]
fn random_victims_spare_private_trusted_peers() {
    let view = |n: u8, private: bool, trusted: bool| ConnectionView {
        id: ConnectionId(u64::from(n)),
        peer_id: peer(n),
        remote_addr: SocketAddr::new(ip(n), 1),
        point: None,
        direction: crate::handshake::Direction::Incoming,
        private,
        trusted,
        since: t(0),
    };
    let views = vec![
        view(1, true, true),
        view(2, true, false),
        view(3, false, true),
    ];
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(1);
    for _ in 0..20 {
        let chosen = RandomVictims.choose(t(0), &views, 3, &mut rng);
        assert_eq!(chosen.len(), 2);
        assert!(!chosen.contains(&ConnectionId(1)));
    }
}

#[test]
fn the_same_seed_gives_the_same_decisions() {
    let run = || {
        let mut p = policy();
        for n in 1..=3 {
            establish_outgoing(&mut p, n, t(0));
        }
        let asker = establish_incoming(&mut p, 4, t(0));
        for n in 10..60 {
            p.handle_control(
                t(u64::from(n)),
                asker,
                ControlMessage::Advertise(vec![point(n)]),
            );
        }
        p.handle_control(t(100), asker, ControlMessage::Bootstrap);
        format!("{:?}", drain(&mut p))
    };
    assert_eq!(run(), run());
}
