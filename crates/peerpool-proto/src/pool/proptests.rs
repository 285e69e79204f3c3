//! Property tests over random operation sequences on a small pool.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{peer, pt, t};
use super::*;
use crate::point::Point;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

const POINTS: u32 = 40;
const PEERS: u32 = 30;
const MAX_POINTS: (usize, usize) = (12, 8);
const MAX_PEERS: (usize, usize) = (10, 6);
const CLEANUP: Duration = Duration::from_secs(1_000);

#[derive(Debug, Clone)]
enum Op {
    Register(u32, bool),
    RegisterNew(u32),
    RegisterPeer(u32),
    Request(u32),
    Fail(u32),
    Connect(u32, u32),
    Disconnect(u32, bool),
    GreylistAddr(u32),
    GreylistPeer(u32),
    BanPoint(u32),
    Untrust(u32),
    SetPublic(u32),
    Advance(u64),
    GcPoints,
    GcPeers,
    GcGreylist,
    List(bool, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..POINTS, any::<bool>()).prop_map(|(p, tr)| Op::Register(p, tr && p % 5 == 0)),
        4 => (0..POINTS).prop_map(Op::RegisterNew),
        2 => (0..PEERS).prop_map(Op::RegisterPeer),
        3 => (0..POINTS).prop_map(Op::Request),
        2 => (0..POINTS).prop_map(Op::Fail),
        3 => (0..POINTS, 0..PEERS).prop_map(|(p, q)| Op::Connect(p, q)),
        2 => (0..POINTS, any::<bool>()).prop_map(|(p, r)| Op::Disconnect(p, r)),
        2 => (0..POINTS).prop_map(Op::GreylistAddr),
        1 => (0..PEERS).prop_map(Op::GreylistPeer),
        1 => (0..POINTS).prop_map(Op::BanPoint),
        1 => (0..POINTS).prop_map(Op::Untrust),
        2 => (0..POINTS).prop_map(Op::SetPublic),
        3 => (1..400u64).prop_map(Op::Advance),
        1 => Just(Op::GcPoints),
        1 => Just(Op::GcPeers),
        2 => Just(Op::GcGreylist),
        2 => (any::<bool>(), 0..20usize).prop_map(|(i, s)| Op::List(i, s)),
    ]
}

/// What the test remembers independently of the pool.
#[derive(Default)]
struct Model {
    /// IP → last greylisting time.
    greylisted: HashMap<IpAddr, Time>,
    /// Blacklisted IPs (no unban op, so they stay).
    blacklisted: HashSet<IpAddr>,
    /// Points registered trusted and not untrusted since.
    trusted: HashSet<Point>,
}

fn collectable_points(pool: &Pool<()>, now: Time) -> usize {
    pool.points()
        .filter(|p| {
            !p.trusted && p.state() == PointState::Disconnected && !p.cannot_reconnect_yet(now)
        })
        .count()
}

fn collectable_peers(pool: &Pool<()>) -> usize {
    pool.peers()
        .filter(|p| !p.trusted && p.state() == PeerState::Disconnected)
        .count()
}

/// After a GC to `target`: at or below it, unless nothing collectable remains (besides the
/// entry just registered, which the GC made room for).
fn check_after_gc(len: usize, collectable: usize, target: usize, just_added: bool) {
    let allowed = usize::from(just_added);
    assert!(
        len <= target || collectable <= allowed,
        "len {len} > target {target} with {collectable} collectable"
    );
}

fn run(ops: Vec<Op>, seed: u64) {
    let config = PoolConfig {
        max_known_points: MAX_POINTS,
        max_known_peer_ids: MAX_PEERS,
        acl: AclConfig {
            ip_greylist_size_in_kilobytes: 1,
            ip_greylist_cleanup_delay: CLEANUP,
            ..AclConfig::default()
        },
        ..PoolConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pool: Pool<()> = Pool::new(config, &mut rng).unwrap();
    let mut m = Model::default();
    let mut now = t(0);
    for op in ops {
        match op {
            Op::Register(p, trusted) => {
                pool.register_point(now, pt(p), trusted.then_some(true), None);
                if trusted {
                    m.trusted.insert(pt(p));
                }
            }
            Op::RegisterNew(p) => {
                pool.register_new_point(now, pt(p));
            }
            Op::RegisterPeer(q) => {
                pool.register_peer(now, peer(q));
            }
            Op::Request(p) => {
                let _ = pool.set_point_requested(now, &pt(p));
            }
            Op::Fail(p) => {
                if pool.point_state(&pt(p)) == Some(PointState::Requested) {
                    pool.set_point_disconnected(now, &pt(p), false).unwrap();
                }
            }
            Op::Connect(p, q) => {
                let (point, peer_id) = (pt(p), peer(q));
                // Outgoing if we are dialling it, else incoming.
                let incoming = pool.point_state(&point) != Some(PointState::Requested);
                if pool.point(&point).is_some()
                    && pool
                        .peer_state(&peer_id)
                        .is_none_or(|s| s == PeerState::Disconnected)
                    && pool.check_connection(&point, &peer_id, incoming).is_ok()
                    && pool.set_point_accepted(now, &point, peer_id).is_ok()
                {
                    pool.register_peer(now, peer_id);
                    pool.set_peer_accepted(now, &peer_id, point.into()).unwrap();
                    pool.set_point_running(now, &point, peer_id).unwrap();
                    pool.set_peer_running(now, &peer_id, point.into()).unwrap();
                }
            }
            Op::Disconnect(p, requested) => {
                if let Some(peer_id) = pool.point(&pt(p)).and_then(PointInfo::current_peer_id) {
                    pool.set_point_disconnected(now, &pt(p), requested).unwrap();
                    pool.set_peer_disconnected(now, &peer_id, requested)
                        .unwrap();
                }
            }
            Op::GreylistAddr(p) => {
                pool.greylist_addr(now, pt(p).ip());
                m.greylisted.insert(pt(p).ip(), now);
            }
            Op::GreylistPeer(q) => {
                if let Some(ip) = pool.greylist_peer(now, &peer(q)) {
                    m.greylisted.insert(ip, now);
                }
                assert!(pool.acl().banned_peer(&peer(q)));
            }
            Op::BanPoint(p) => {
                pool.ban_point(&pt(p));
                m.blacklisted.insert(pt(p).ip());
                m.trusted.remove(&pt(p));
            }
            Op::Untrust(p) => {
                pool.untrust_point(&pt(p));
                m.trusted.remove(&pt(p));
            }
            Op::SetPublic(p) => {
                let _ = pool.set_known_public(&pt(p), true);
            }
            Op::Advance(s) => now = now.saturating_add(Duration::from_secs(s)),
            Op::GcPoints => {
                pool.gc_points(now);
                check_after_gc(
                    pool.known_points_len(),
                    collectable_points(&pool, now),
                    MAX_POINTS.1,
                    false,
                );
            }
            Op::GcPeers => {
                pool.gc_peer_ids();
                check_after_gc(
                    pool.known_peer_ids_len(),
                    collectable_peers(&pool),
                    MAX_PEERS.1,
                    false,
                );
            }
            Op::GcGreylist => pool.gc_greylist(now),
            Op::List(ignore_private, size) => {
                let list = pool.list_known_points(ignore_private, size, &mut rng);
                assert!(list.len() <= size);
                let distinct: HashSet<_> = list.iter().collect();
                assert_eq!(distinct.len(), list.len(), "duplicates in {list:?}");
                for p in &list {
                    let info = pool.point(p).unwrap();
                    assert!(!pool.point_banned(p), "{p} is banned");
                    assert!(!m.blacklisted.contains(&p.ip()));
                    assert!(!ignore_private || info.known_public, "{p} is private");
                }
            }
        }

        // A GC triggered by a registration ends at the target (counting the new entry).
        let events: Vec<P2pEvent> = std::iter::from_fn(|| pool.poll_event()).collect();
        if events.contains(&P2pEvent::GcPoints) {
            check_after_gc(
                pool.known_points_len(),
                collectable_points(&pool, now),
                MAX_POINTS.1,
                true,
            );
        }
        if events.contains(&P2pEvent::GcPeerIds) {
            check_after_gc(
                pool.known_peer_ids_len(),
                collectable_peers(&pool),
                MAX_PEERS.1,
                true,
            );
        }

        // Tables never exceed max, except with entries that cannot be collected.
        let non_collectable = pool.known_points_len() - collectable_points(&pool, now);
        assert!(pool.known_points_len() <= MAX_POINTS.0.max(non_collectable + 1));
        let non_collectable = pool.known_peer_ids_len() - collectable_peers(&pool);
        assert!(pool.known_peer_ids_len() <= MAX_PEERS.0.max(non_collectable + 1));

        // Trusted points are never collected.
        for p in &m.trusted {
            assert!(pool.point(p).is_some_and(|i| i.trusted), "trusted {p} lost");
        }

        // A greylisted or blacklisted point is never offered before expiry; backoff holds.
        for p in pool.candidates(now) {
            let ip = p.ip();
            assert!(!m.blacklisted.contains(&ip), "blacklisted {p} offered");
            if let Some(at) = m.greylisted.get(&ip) {
                assert!(
                    now >= at.saturating_add(CLEANUP),
                    "{p} greylisted at {at} offered at {now}"
                );
            }
            let info = pool.point(&p).unwrap();
            assert_eq!(info.state(), PointState::Disconnected);
            assert!(!info.cannot_reconnect_yet(now));
        }

        // The connected tables match the states.
        let running = pool
            .points()
            .filter(|p| matches!(p.state(), PointState::Running { .. }))
            .count();
        assert_eq!(running, pool.connected_points().count());
        assert_eq!(pool.active_connections(), pool.connected_peer_ids().count());
    }
}

proptest! {
    #[test]
    fn random_operation_sequences_keep_the_invariants(
        ops in proptest::collection::vec(op(), 1..200),
        seed in any::<u64>(),
    ) {
        run(ops, seed);
    }
}
