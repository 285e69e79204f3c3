//! Scenario tests of the pool: registration, GC, ACL, private mode, advertising, files.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::*;
use crate::identity::PeerId;
use crate::point::Point;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::net::IpAddr;
use std::time::Duration;

pub(super) fn pt(n: u32) -> Point {
    Point::new(IpAddr::from((0x0a00_0000 | n).to_be_bytes()), 9732)
}

pub(super) fn peer(n: u32) -> PeerId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    PeerId(b)
}

pub(super) fn t(s: u64) -> Time {
    Time::from_secs(1_700_000_000 + s)
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(1)
}

fn pool_with(config: PoolConfig) -> Pool<()> {
    Pool::new(config, &mut rng()).unwrap()
}

fn pool() -> Pool<()> {
    pool_with(PoolConfig::default())
}

fn drain(pool: &mut Pool<()>) -> (Vec<P2pEvent>, Vec<Trigger>) {
    let events = std::iter::from_fn(|| pool.poll_event()).collect();
    let triggers = std::iter::from_fn(|| pool.poll_trigger()).collect();
    (events, triggers)
}

/// Connects `point` ↔ `peer` as the runtime would for an outgoing connection.
fn connect(pool: &mut Pool<()>, now: Time, point: Point, peer_id: PeerId) {
    pool.register_point(now, point, None, None);
    pool.register_peer(now, peer_id);
    pool.set_point_requested(now, &point).unwrap();
    pool.set_point_accepted(now, &point, peer_id).unwrap();
    pool.set_peer_accepted(now, &peer_id, point.into()).unwrap();
    pool.set_point_running(now, &point, peer_id).unwrap();
    pool.set_peer_running(now, &peer_id, point.into()).unwrap();
}

fn disconnect(pool: &mut Pool<()>, now: Time, point: Point, peer_id: PeerId) {
    pool.set_point_disconnected(now, &point, false).unwrap();
    pool.set_peer_disconnected(now, &peer_id, false).unwrap();
}

#[test]
fn config_rules_are_checked_at_construction() {
    for bad in [
        PoolConfig {
            max_known_points: (10, 11),
            ..PoolConfig::default()
        },
        PoolConfig {
            max_known_peer_ids: (10, 0),
            ..PoolConfig::default()
        },
        PoolConfig {
            min_connections: 5,
            max_connections: 4,
            ..PoolConfig::default()
        },
        PoolConfig {
            reconnection: ReconnectionConfig {
                factor: 0.5,
                ..ReconnectionConfig::default()
            },
            ..PoolConfig::default()
        },
    ] {
        assert!(matches!(
            Pool::<()>::new(bad, &mut rng()),
            Err(PoolError::InvalidConfig(_))
        ));
    }
}

#[test]
fn registering_points_emits_new_point_once() {
    let mut p = pool();
    let r = p.register_point(t(0), pt(1), None, None);
    assert!(r.new);
    assert!(!p.register_point(t(1), pt(1), Some(true), None).new);
    assert!(p.point(&pt(1)).unwrap().trusted);
    let (events, triggers) = drain(&mut p);
    assert_eq!(events, [P2pEvent::NewPoint { point: pt(1) }]);
    assert_eq!(triggers, [Trigger::NewPoint]);
    assert!(p.unregister_point(&pt(1)));
    assert!(p.point(&pt(1)).is_none());
}

#[test]
fn our_own_points_are_refused() {
    let mut p = pool();
    p.register_point(t(0), pt(1), None, None);
    p.add_to_id_points(pt(1));
    assert!(p.point(&pt(1)).is_none());
    assert!(!p.register_new_point(t(0), pt(1)));
    let n = p.register_list_of_new_points(t(0), Medium::Advertise, Some(peer(1)), [pt(1), pt(2)]);
    assert_eq!((n.received, n.added), (2, 1));
    assert_eq!(p.check_dial(&pt(1)), Err(PoolError::Myself(pt(1))));
    for i in 10..20 {
        p.add_to_id_points(pt(i));
    }
    assert!(!p.is_my_point(&pt(1)), "LRU of {MY_ID_POINTS}");
}

#[test]
fn points_gc_removes_the_oldest_misses_and_ends_at_target() {
    let mut p = pool_with(PoolConfig {
        max_known_points: (10, 6),
        ..PoolConfig::default()
    });
    // Points 0..10 each fail once at time i: point 0 has the oldest miss.
    for i in 0..10 {
        p.register_point(t(0), pt(i), None, None);
        p.set_point_requested(t(u64::from(i)), &pt(i)).unwrap();
        p.set_point_disconnected(t(u64::from(i)), &pt(i), false)
            .unwrap();
    }
    // Point 0 trusted, point 1 running: never collected.
    p.register_point(t(0), pt(0), Some(true), None);
    connect(&mut p, t(20), pt(1), peer(1));
    p.register_point(t(30), pt(100), None, None);
    assert_eq!(p.known_points_len(), 6, "ends at the target, not one above");
    for kept in [0, 1, 100, 7, 8, 9] {
        assert!(p.point(&pt(kept)).is_some(), "{kept}");
    }
    assert!(drain(&mut p).0.contains(&P2pEvent::GcPoints));
}

#[test]
fn points_gc_never_removes_trusted_or_connected_points() {
    let mut p = pool_with(PoolConfig {
        max_known_points: (4, 2),
        ..PoolConfig::default()
    });
    for i in 0..6 {
        p.register_point(t(0), pt(i), Some(true), None);
    }
    assert_eq!(p.known_points_len(), 6);
    assert_eq!(p.gc_points(t(0)), 0);
}

#[test]
fn points_gc_keeps_points_backing_off_and_a_full_table_refuses_network_points() {
    let mut p = pool_with(PoolConfig {
        max_known_points: (4, 3),
        ..PoolConfig::default()
    });
    for i in 0..4 {
        p.register_point(t(0), pt(i), None, None);
        p.set_point_requested(t(0), &pt(i)).unwrap();
        p.set_point_disconnected(t(1), &pt(i), false).unwrap();
        assert!(p.point(&pt(i)).unwrap().cannot_reconnect_yet(t(1)));
    }
    // Every point is backing off: nothing to collect, the advertised point is refused and
    // the failed points keep their history (octez would forget one and redial it fresh).
    assert!(!p.register_new_point(t(1), pt(10)));
    assert!(p.point(&pt(10)).is_none());
    assert_eq!(p.known_points_len(), 4);
    assert_eq!(p.gc_points(t(1)), 0);
    // A point the operator adds is always registered.
    assert!(p.register_point(t(1), pt(11), None, None).new);
    assert_eq!(p.known_points_len(), 5);
    // Once the backoffs are over the GC collects the oldest misses as before.
    let later = t(3600);
    assert!(!p.point(&pt(0)).unwrap().cannot_reconnect_yet(later));
    assert!(p.register_new_point(later, pt(12)));
    assert!(p.known_points_len() <= 4);
    assert!(p.point(&pt(12)).is_some());
}

#[derive(Debug, Clone, PartialEq)]
struct Scored(f64);

impl PeerMeta for Scored {
    fn initial() -> Self {
        Scored(1.0)
    }
    fn score(&self) -> f64 {
        self.0
    }
}

#[test]
fn peers_gc_removes_lowest_score_then_newest() {
    let mut p: Pool<Scored> = Pool::new(
        PoolConfig {
            max_known_peer_ids: (5, 3),
            ..PoolConfig::default()
        },
        &mut rng(),
    )
    .unwrap();
    for i in 0..5 {
        p.register_peer(t(u64::from(i)), peer(i));
    }
    p.set_peer_metadata(&peer(4), Scored(5.0)).unwrap();
    p.set_peer_metadata(&peer(0), Scored(0.5)).unwrap();
    assert_eq!(p.score(&peer(0)), Some(0.5));
    p.register_peer(t(10), peer(10));
    // Target 3 counting the new peer: 5 - 2 + 1 = 4 would be above it, so GC takes
    // three: peer 0 (lowest score), then peers 3 and 2 (newest among score 1.0).
    let mut left: Vec<_> = p.peers().map(|i| i.peer_id()).collect();
    left.sort();
    assert_eq!(left, [peer(1), peer(4), peer(10)]);
}

#[test]
fn expected_peer_id_mismatch_greylists_and_disconnects() {
    let mut p = pool();
    connect(&mut p, t(0), pt(1), peer(1));
    assert_eq!(
        p.set_expected_peer_id(t(1), pt(1), peer(1)),
        ExpectedPeerIdOutcome::Recorded
    );
    assert_eq!(
        p.set_expected_peer_id(t(1), pt(1), peer(2)),
        ExpectedPeerIdOutcome::Disconnect {
            point: pt(1),
            peer_id: peer(1)
        }
    );
    assert!(p.point_banned(&pt(1)));
    p.register_point(t(0), pt(2), None, None);
    p.set_point_accepted(t(0), &pt(2), peer(3)).unwrap();
    assert_eq!(
        p.set_expected_peer_id(t(1), pt(2), peer(4)),
        ExpectedPeerIdOutcome::AddrGreylisted { peer_id: peer(3) }
    );
    assert_eq!(p.point(&pt(2)).unwrap().expected_peer_id, Some(peer(4)));
    // Unknown point: registered with the expectation.
    assert_eq!(
        p.set_expected_peer_id(t(1), pt(3), peer(5)),
        ExpectedPeerIdOutcome::Recorded
    );
    assert_eq!(p.point(&pt(3)).unwrap().expected_peer_id, Some(peer(5)));
}

#[test]
fn greylisting_a_departed_peer_still_greylists_its_id_and_last_address() {
    let mut p = pool();
    connect(&mut p, t(0), pt(1), peer(1));
    disconnect(&mut p, t(5), pt(1), peer(1));
    assert_eq!(p.greylist_peer(t(6), &peer(1)), Some(pt(1).ip()));
    assert!(p.peer_banned(&peer(1)));
    assert!(p.point_banned(&pt(1)));
    assert_eq!(
        p.check_connection(&pt(2), &peer(1), true),
        Err(PoolError::PeerBanned(peer(1)))
    );
    // A peer never seen: its id is greylisted, no address.
    assert_eq!(p.greylist_peer(t(6), &peer(9)), None);
    assert!(p.acl().banned_peer(&peer(9)));
    p.clear_greylist();
    assert!(!p.peer_banned(&peer(1)) && !p.point_banned(&pt(1)));
}

#[test]
fn apply_failure_follows_the_table() {
    let mut p = pool();
    assert_eq!(
        p.apply_failure(t(0), Failure::Timeout, pt(1).ip(), None),
        AclAction::Ignore
    );
    assert!(!p.point_banned(&pt(1)));
    p.apply_failure(t(0), Failure::HandshakeMisbehaviour, pt(1).ip(), None);
    assert!(p.point_banned(&pt(1)));
    p.apply_failure(t(0), Failure::UndecodableMessage, pt(2).ip(), Some(peer(2)));
    assert!(p.point_banned(&pt(2)) && p.peer_banned(&peer(2)));
}

#[test]
fn manual_ban_trust_open() {
    let mut p = pool();
    connect(&mut p, t(0), pt(1), peer(1));
    p.register_point(t(0), pt(1), Some(true), None);
    let doomed = p.ban_point(&pt(1));
    assert_eq!(
        doomed,
        [Disconnect {
            point: pt(1),
            peer_id: peer(1)
        }]
    );
    assert!(!p.point(&pt(1)).unwrap().trusted);
    assert!(p.point_banned(&pt(1)) && p.peer_banned(&peer(1)));
    p.trust_point(t(1), pt(1));
    assert!(!p.point_banned(&pt(1)) && !p.peer_banned(&peer(1)));
    assert!(p.point(&pt(1)).unwrap().trusted);
    p.open_point(&pt(1));
    assert!(!p.point(&pt(1)).unwrap().trusted);

    assert_eq!(
        p.ban_peer(&peer(1)),
        Some(Disconnect {
            point: pt(1),
            peer_id: peer(1)
        })
    );
    assert!(p.peer_banned(&peer(1)));
    p.trust_peer(t(2), peer(1));
    assert!(!p.peer_banned(&peer(1)) && p.peer(&peer(1)).unwrap().trusted);
    // A trusted peer that gets greylisted is still reported not banned.
    p.greylist_peer(t(3), &peer(1));
    assert!(!p.peer_banned(&peer(1)));
    p.open_peer(&peer(1));
    assert!(!p.peer(&peer(1)).unwrap().trusted);
    p.ban_addr_and_clear_all(pt(7));
}

impl Pool<()> {
    fn ban_addr_and_clear_all(&mut self, point: Point) {
        self.ban_point(&point);
        assert!(self.point_banned(&point));
        self.acl_clear();
        assert!(!self.point_banned(&point));
    }
}

#[test]
fn private_mode_accepts_only_trusted_and_advertises_nothing() {
    let mut p = pool_with(PoolConfig {
        private_mode: true,
        ..PoolConfig::default()
    });
    p.register_point(t(0), pt(1), Some(true), None);
    p.register_point(t(0), pt(2), None, None);
    p.trust_peer(t(0), peer(3));
    for i in [1, 2] {
        p.set_known_public(&pt(i), true).unwrap();
    }
    assert_eq!(p.check_dial(&pt(1)), Ok(()));
    assert_eq!(p.check_dial(&pt(2)), Err(PoolError::PrivateMode(pt(2))));
    assert_eq!(p.check_connection(&pt(1), &peer(9), true), Ok(()));
    assert_eq!(p.check_connection(&pt(2), &peer(3), false), Ok(()));
    assert_eq!(
        p.check_connection(&pt(2), &peer(9), true),
        Err(PoolError::PrivateMode(pt(2)))
    );
    assert_eq!(p.candidates(t(0)), [pt(1)]);
    assert!(p.list_known_points(false, 50, &mut rng()).is_empty());
}

#[test]
fn candidates_honour_backoff_bans_and_state() {
    let mut p = pool();
    for i in 0..4 {
        p.register_point(t(0), pt(i), None, None);
    }
    p.set_point_requested(t(10), &pt(0)).unwrap();
    p.set_point_disconnected(t(10), &pt(0), false).unwrap(); // waits 1 s
    p.greylist_addr(t(10), pt(1).ip());
    p.set_point_requested(t(10), &pt(2)).unwrap();
    p.set_expected_peer_id(t(10), pt(3), peer(3));
    p.ban_peer(&peer(3));
    assert!(p.candidates(t(11)).is_empty());
    assert_eq!(p.candidates(t(12)), [pt(0)]);
    let day = Duration::from_secs(86_400);
    let later = t(10).saturating_add(day * 15 / 14 + Duration::from_secs(1));
    p.gc_greylist(later);
    assert_eq!(p.candidates(later), [pt(0), pt(1)]);
}

#[test]
fn connection_triggers() {
    let mut p = pool_with(PoolConfig {
        min_connections: 2,
        max_connections: 2,
        ..PoolConfig::default()
    });
    for i in 0..3 {
        connect(&mut p, t(0), pt(i), peer(i));
    }
    assert_eq!(p.active_connections(), 3);
    assert_eq!(p.connected_points().count(), 3);
    let (events, triggers) = drain(&mut p);
    assert_eq!(
        triggers,
        [
            Trigger::TooManyConnections,
            Trigger::NewPeer,
            Trigger::NewPoint,
            Trigger::NewConnection
        ]
    );
    assert!(events.contains(&P2pEvent::ConnectionEstablished {
        id_point: pt(2).into(),
        peer_id: peer(2)
    }));
    disconnect(&mut p, t(1), pt(0), peer(0));
    assert_eq!(drain(&mut p).1, []);
    disconnect(&mut p, t(1), pt(1), peer(1));
    let (events, triggers) = drain(&mut p);
    assert_eq!(triggers, [Trigger::TooFewConnections]);
    assert_eq!(
        events,
        [P2pEvent::ExternalDisconnection { peer_id: peer(1) }]
    );
    assert_eq!(p.connected_peer_ids().collect::<Vec<_>>(), [&peer(2)]);
}

#[test]
fn failed_attempts_log_request_rejected() {
    let mut p = pool();
    p.register_point(t(0), pt(1), None, None);
    drain(&mut p);
    p.set_point_requested(t(0), &pt(1)).unwrap();
    p.set_point_disconnected(t(0), &pt(1), false).unwrap();
    p.set_point_accepted(t(2), &pt(1), peer(1)).unwrap();
    p.set_point_disconnected(t(2), &pt(1), false).unwrap();
    assert_eq!(
        drain(&mut p).0,
        [
            P2pEvent::RequestRejected {
                point: pt(1),
                identity: None
            },
            P2pEvent::RequestRejected {
                point: pt(1),
                identity: Some((pt(1).into(), peer(1)))
            }
        ]
    );
    assert_eq!(
        p.set_point_running(t(3), &pt(9), peer(1)),
        Err(PoolError::UnknownPoint(pt(9)))
    );
    assert!(matches!(
        p.set_peer_running(t(3), &peer(1), pt(1).into()),
        Err(PoolError::UnknownPeer(_))
    ));
}

#[test]
fn event_outbox_is_bounded() {
    let mut p = pool_with(PoolConfig {
        event_outbox_size: 3,
        ..PoolConfig::default()
    });
    for i in 0..5 {
        p.register_point(t(0), pt(i), None, None);
    }
    assert_eq!(p.dropped_events(), 2);
    assert_eq!(p.poll_event(), Some(P2pEvent::NewPoint { point: pt(2) }));
}

#[test]
fn list_known_points_prefers_connected_then_recently_seen() {
    let mut p = pool();
    // 3 running points connected at times 3, 1, 2; 10 disconnected seen at 10..20.
    for (i, at) in [(0u32, 3u64), (1, 1), (2, 2)] {
        connect(&mut p, t(at), pt(i), peer(i));
    }
    for i in 10..20 {
        connect(&mut p, t(0), pt(i), peer(i));
        disconnect(&mut p, t(u64::from(i)), pt(i), peer(i));
    }
    let all = p.list_known_points(false, 50, &mut rng());
    assert_eq!(all.len(), 13);
    assert_eq!(&all[..4], &[pt(1), pt(2), pt(0), pt(19)]);
    // size 5: best 3 = the connected points, other 2 random among the rest, distinct.
    let five = p.list_known_points(false, 5, &mut rng());
    assert_eq!(&five[..3], &[pt(1), pt(2), pt(0)]);
    assert_eq!(five.len(), 5);
    assert!(five[3] != five[4] && five[3..].iter().all(|x| (10..20).any(|i| pt(i) == *x)));
    // ignore_private: only known public points.
    assert!(p.list_known_points(true, 50, &mut rng()).is_empty());
    p.set_known_public(&pt(12), true).unwrap();
    assert_eq!(p.list_known_points(true, 50, &mut rng()), [pt(12)]);
    p.greylist_addr(t(30), pt(12).ip());
    assert!(p.list_known_points(true, 50, &mut rng()).is_empty());
}

#[test]
fn octez_peers_file_loads_into_the_pool() {
    let recs: Vec<PeerRecord<serde_json::Value>> =
        peers_file::parse_peers_file(peers_file::tests::OCTEZ_SAMPLE).unwrap();
    let mut p: Pool<serde_json::Value> = Pool::new(PoolConfig::default(), &mut rng()).unwrap();
    assert_eq!(p.load_peer_records(t(0), recs), 2);
    assert_eq!(p.known_peer_ids_len(), 2);
    // The first peer's last_seen has a port: its point is registered; the second has none.
    let point: Point = "203.0.113.7:9732".parse().unwrap();
    assert_eq!(p.known_points_len(), 1);
    assert_eq!(p.point_state(&point), Some(PointState::Disconnected));
    assert!(p.peers().all(|i| i.state() == PeerState::Disconnected));
}

#[test]
fn pool_round_trips_through_the_peers_file() {
    let mut p = pool();
    connect(&mut p, t(0), pt(1), peer(1));
    p.set_known_public(&pt(1), true).unwrap();
    disconnect(&mut p, t(5), pt(1), peer(1));
    p.trust_peer(t(6), peer(2));
    p.register_point(t(6), pt(2), Some(true), Some(peer(2)));
    p.register_point(t(6), pt(3), None, None); // no peer: not saved
    let recs = p.peer_records();
    let text = peers_file::serialize_peers_file(&recs).unwrap();
    let back: Vec<PeerRecord<()>> = peers_file::parse_peers_file(&text).unwrap();
    assert_eq!(back, recs);
    let mut q = pool();
    q.load_peer_records(t(100), back);
    assert_eq!(q.peer_records(), recs);
    let info = q.point(&pt(1)).unwrap();
    assert!(info.known_public);
    assert_eq!(info.last_disconnection(), Some((peer(1), t(5))));
    assert!(q.point(&pt(2)).unwrap().trusted);
    assert!(q.peer(&peer(2)).unwrap().trusted);
    assert!(q.point(&pt(3)).is_none());
}

#[test]
fn check_connection_identity_and_already_connected() {
    let mut p = pool();
    p.register_point(t(0), pt(1), None, Some(peer(1)));
    assert_eq!(
        p.check_connection(&pt(1), &peer(2), false),
        Err(PoolError::IdentityCheckFailure {
            point: pt(1),
            expected: peer(1),
            got: peer(2)
        })
    );
    assert!(
        !p.point_banned(&pt(1)),
        "an identity check failure does not greylist"
    );
    assert_eq!(p.check_connection(&pt(1), &peer(1), false), Ok(()));
    p.set_point_requested(t(0), &pt(1)).unwrap();
    assert_eq!(p.check_connection(&pt(1), &peer(1), false), Ok(()));
    assert_eq!(
        p.check_connection(&pt(1), &peer(1), true),
        Err(PoolError::AlreadyConnected(pt(1)))
    );
    connect(&mut p, t(0), pt(2), peer(2));
    assert_eq!(
        p.check_connection(&pt(3), &peer(2), true),
        Err(PoolError::AlreadyConnected(pt(3)))
    );
    assert_eq!(
        p.check_connection(&pt(2), &peer(3), true),
        Err(PoolError::AlreadyConnected(pt(2)))
    );
}

#[test]
fn a_peers_file_dated_past_9999_loads_and_saves_to_text_that_loads_again() {
    let recs: Vec<PeerRecord<serde_json::Value>> =
        peers_file::parse_peers_file(peers_file::tests::PAST_9999_SAMPLE).unwrap();
    let mut p: Pool<serde_json::Value> = Pool::new(PoolConfig::default(), &mut rng()).unwrap();
    assert_eq!(p.load_peer_records(t(0), recs), 2);
    let saved = p.peer_records();
    assert_eq!(saved.len(), 2);
    assert!(saved.iter().all(|r| r.created == Time::MAX_RFC3339));
    let text = peers_file::serialize_peers_file(&saved).unwrap();
    let back: Vec<PeerRecord<serde_json::Value>> = peers_file::parse_peers_file(&text).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back, saved);
}
