use super::*;
use crate::policy::Bounds;
use std::net::Ipv4Addr;

fn t(s: u64) -> Time {
    Time::from_secs(10_000 + s)
}

fn peer(n: u16) -> PeerId {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&n.to_be_bytes());
    PeerId(b)
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    Ipv4Addr::new(a, b, c, 1).into()
}

/// low 6, high 8, max 12, grace 60 s, budget 3, 4 incoming per netgroup.
fn manager(per_category: usize) -> ConnManager {
    let bounds = Bounds {
        min_threshold: 2,
        min_target: 3,
        max_target: 6,
        max_threshold: 8,
    };
    let cfg = ConnManagerConfig {
        protect_per_category: per_category,
        max_incoming_per_netgroup: Some(4),
        ..ConnManagerConfig::default()
    };
    ConnManager::new(cfg.limits(&bounds, 12).expect("valid limits"), 7)
}

fn open(m: &mut ConnManager, now: Time, id: u64, p: u16, addr: IpAddr, dir: Direction) {
    m.connection_opened(now, ConnectionId(id), peer(p), addr, dir, false);
}

#[test]
fn limits_default_to_the_maintenance_bounds_and_are_checked() {
    let b = Bounds::new(10, 50, 100).expect("bounds");
    let l = ConnManagerConfig::default()
        .limits(&b, 100)
        .expect("limits");
    assert_eq!((l.low, l.high), (68, 84), "max_target, max_threshold");
    assert_eq!(l.budget, 34, "half of low");
    assert_eq!(l.per_netgroup, 6, "max(2, 100 / 16)");
    let bad = ConnManagerConfig {
        low_water: Some(90),
        ..ConnManagerConfig::default()
    };
    let err = bad.limits(&b, 100).expect_err("low above high");
    assert!(err.to_string().contains("low (90)"), "{err}");
    let over = ConnManagerConfig {
        high_water: Some(101),
        ..ConnManagerConfig::default()
    };
    assert!(over.limits(&b, 100).is_err(), "high above max");
}

#[test]
fn tags_sum_into_the_value_and_upsert_sees_the_old_one() {
    let mut m = manager(0);
    open(&mut m, t(0), 1, 1, ip(10, 0, 0), Direction::Outgoing);
    m.tag_peer(t(0), peer(1), "a", 5).expect("open");
    m.tag_peer(t(0), peer(1), "b", 7).expect("open");
    m.upsert_tag(t(0), peer(1), "a", |v| v * 3).expect("open");
    let info = m.tag_info(t(1), &peer(1)).expect("known");
    assert_eq!(info.value, 22);
    assert_eq!(info.tags.get("a"), Some(&15));
    assert_eq!(info.first_seen, t(0));
    assert_eq!(info.conns, vec![(ConnectionId(1), t(0))]);
    m.untag_peer(t(1), &peer(1), "b");
    assert_eq!(m.tag_info(t(1), &peer(1)).map(|i| i.value), Some(15));
}

#[test]
fn tags_of_a_peer_without_connection_last_for_the_temporary_ttl() {
    let mut m = manager(0);
    m.tag_peer(t(0), peer(1), "pre", 4).expect("open");
    assert_eq!(m.tag_info(t(9), &peer(1)).map(|i| i.value), Some(4));
    // A connection within the TTL keeps the tag.
    open(&mut m, t(9), 1, 1, ip(10, 0, 0), Direction::Incoming);
    assert_eq!(m.tag_info(t(30), &peer(1)).map(|i| i.value), Some(4));
    // After the last connection closes, the entry lasts 10 s more.
    m.connection_closed(t(40), ConnectionId(1));
    assert!(m.tag_info(t(49), &peer(1)).is_some());
    assert!(m.tag_info(t(50), &peer(1)).is_none());
    // Never connected: dropped 10 s after the first tag.
    m.tag_peer(t(60), peer(2), "x", 1).expect("open");
    assert!(m.tag_info(t(70), &peer(2)).is_none());
}

#[test]
fn protection_has_a_budget_and_unprotect_says_if_another_tag_remains() {
    let mut m = manager(0);
    for p in 1..=3 {
        m.protect(t(0), peer(p), "app").expect("within budget");
    }
    m.protect(t(0), peer(1), "second")
        .expect("an already protected peer costs nothing");
    let err = m
        .protect(t(0), peer(4), "app")
        .expect_err("beyond the budget");
    assert_eq!(err, ConnManagerError::ProtectionBudget { budget: 3 });
    assert!(!m.is_protected(&peer(4), None));
    assert!(
        m.unprotect(t(0), &peer(1), "app"),
        "still protected by 'second'"
    );
    assert!(m.is_protected(&peer(1), Some("second")));
    assert!(!m.is_protected(&peer(1), Some("app")));
    assert!(!m.unprotect(t(0), &peer(1), "second"));
    assert_eq!(m.protected_peers(), 2);
    m.protect(t(0), peer(4), "app").expect("room again");
}

#[test]
fn a_closed_manager_refuses_changes_and_never_trims() {
    let mut m = manager(0);
    for i in 0..10 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Incoming,
        );
    }
    m.close();
    assert_eq!(
        m.tag_peer(t(0), peer(1), "a", 1),
        Err(ConnManagerError::Closed)
    );
    assert_eq!(m.excess(10), 0);
    assert!(m.trim(t(100), 10).is_empty());
}

#[test]
fn a_trim_takes_the_lowest_values_first_and_never_a_protected_peer() {
    let mut m = manager(0);
    for i in 0..10u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Outgoing,
        );
        m.tag_peer(t(0), peer(i as u16), "score", i as i64)
            .expect("open");
    }
    m.protect(t(0), peer(0), "keep").expect("budget");
    assert_eq!(m.excess(10), 4, "10 > high 8: down to low 6");
    let victims = m.trim(t(100), 10);
    let ids: Vec<u64> = victims.iter().map(|v| v.id.0).collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "lowest scores, peer 0 protected");
    assert!(victims.iter().all(|v| v.rule == VictimRule::LowestValue));
    let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, ConnManagerEvent::Trimmed(_)))
            .count(),
        4
    );
}

#[test]
fn equal_values_go_by_the_most_crowded_netgroup_then_inbound_then_youngest() {
    let mut m = manager(0);
    // Netgroup 10.1: 3 connections; 10.2: 2; 10.3: 1.
    open(&mut m, t(0), 1, 1, ip(10, 1, 1), Direction::Outgoing);
    open(&mut m, t(1), 2, 2, ip(10, 1, 2), Direction::Incoming);
    open(&mut m, t(2), 3, 3, ip(10, 1, 3), Direction::Outgoing);
    open(&mut m, t(3), 4, 4, ip(10, 2, 1), Direction::Incoming);
    open(&mut m, t(4), 5, 5, ip(10, 2, 2), Direction::Incoming);
    open(&mut m, t(5), 6, 6, ip(10, 3, 1), Direction::Outgoing);
    let v = m.victims(t(1000), 4);
    let ids: Vec<u64> = v.iter().map(|v| v.id.0).collect();
    // 10.1 (3): inbound 2 first; then 10.1 and 10.2 both hold 2: inbound before
    // outbound: 5 (younger than 4); then 10.1 (2) vs 10.2 (1): 3 (youngest outbound in 10.1).
    assert_eq!(ids, vec![2, 5, 3, 4]);
    assert_eq!(
        v[0].rule,
        VictimRule::CrowdedNetgroup(Netgroup::of(ip(10, 1, 0)))
    );
}

#[test]
fn a_peers_duplicate_connection_goes_first() {
    let mut m = manager(0);
    open(&mut m, t(0), 1, 1, ip(10, 1, 1), Direction::Outgoing);
    open(&mut m, t(1), 2, 2, ip(10, 2, 1), Direction::Outgoing);
    open(&mut m, t(2), 3, 1, ip(10, 3, 1), Direction::Incoming);
    m.tag_peer(t(0), peer(1), "score", 100).expect("open");
    let v = m.victims(t(1000), 1);
    assert_eq!(v[0].id, ConnectionId(3), "peer 1's second connection");
    assert_eq!(v[0].rule, VictimRule::Duplicate);
}

#[test]
fn grace_shields_young_connections_unless_the_count_would_stay_above_high() {
    let mut m = manager(0);
    // 6 old connections, then 4 young ones: 10 > high 8.
    for i in 0..6u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Incoming,
        );
    }
    for i in 6..10u64 {
        open(
            &mut m,
            t(100),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Incoming,
        );
    }
    m.tag_peer(t(100), peer(0), "s", 1).expect("open");
    // At t(110) the young ones are in grace: the 5 old unscored ones go first (4 wanted).
    let v = m.trim(t(110), 10);
    assert_eq!(v.len(), 4);
    assert!(v.iter().all(|v| v.id.0 < 6 && v.overrode.is_none()));

    // Protected old ones: the unshielded are too few to reach high, so grace yields.
    let mut m = manager(0);
    for i in 0..3u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Incoming,
        );
        m.protect(t(0), peer(i as u16), "p").expect("budget");
    }
    for i in 3..10u64 {
        open(
            &mut m,
            t(100),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Incoming,
        );
    }
    let v = m.trim(t(110), 10);
    assert_eq!(v.len(), 2, "only down to high (10 - 8), not to low");
    assert!(v
        .iter()
        .all(|v| v.overrode == Some(ProtectionRule::Grace) && v.id.0 >= 3));
}

#[test]
fn grace_does_not_shield_a_netgroup_above_its_share() {
    let mut m = manager(0);
    for i in 0..4u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, i as u8, 0),
            Direction::Outgoing,
        );
    }
    // Five young connections from 10.200/16 (share 4).
    for i in 4..9u64 {
        open(
            &mut m,
            t(100),
            i,
            i as u16,
            ip(10, 200, i as u8),
            Direction::Incoming,
        );
    }
    let v = m.trim(t(101), 9);
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|v| v.id.0 >= 4 && v.overrode.is_none()));
}

#[test]
fn eviction_categories_keep_peers_an_attacker_cannot_fake() {
    let mut m = manager(1);
    // 16 connections: 8 from 10.7/16, 8 from diverse netgroups, all old.
    for i in 0..8u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, 7, i as u8),
            Direction::Incoming,
        );
    }
    for i in 8..16u64 {
        open(
            &mut m,
            t(i),
            i,
            i as u16,
            ip(20, i as u8, 0),
            Direction::Incoming,
        );
    }
    m.record_rtt(&peer(12), Duration::from_millis(1));
    m.record_useful(t(500), &peer(13));
    let info = m.tag_info(t(1000), &peer(12)).expect("known");
    assert!(info.protected_by.contains(&ProtectionRule::LowRoundTrip));
    let info = m.tag_info(t(1000), &peer(13)).expect("known");
    assert!(info.protected_by.contains(&ProtectionRule::RecentlyUseful));
    let info = m.tag_info(t(1000), &peer(0)).expect("known");
    assert!(info.protected_by.contains(&ProtectionRule::LongestUptime));
    // 16 candidates, 1 per category: 4 shielded; 12 can go, 10.7's first.
    let v = m.victims(t(1000), 8);
    let ids: BTreeSet<u64> = v.iter().map(|v| v.id.0).collect();
    assert!(!ids.contains(&12) && !ids.contains(&13) && !ids.contains(&0));
    assert!(
        v.iter().take(6).all(|v| v.id.0 < 8),
        "the crowded netgroup goes first: {v:?}"
    );
}

#[test]
fn evict_to_admit_only_for_a_new_netgroup_and_only_an_incoming_connection() {
    let mut m = manager(0);
    for i in 0..6u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, 7, i as u8),
            Direction::Incoming,
        );
    }
    for i in 6..12u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(30, i as u8, 0),
            Direction::Outgoing,
        );
    }
    assert!(
        m.evict_for(t(1000), ip(10, 7, 99)).is_none(),
        "known netgroup"
    );
    let v = m.evict_for(t(1000), ip(40, 0, 0)).expect("a new netgroup");
    assert!(v.id.0 < 6, "an incoming one from the crowded netgroup");
    assert!(m
        .poll_events_for_test()
        .iter()
        .any(|e| matches!(e, ConnManagerEvent::Evicted { .. })));
    // Outgoing only: nobody to evict.
    let mut m = manager(0);
    for i in 0..12u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(30, i as u8, 0),
            Direction::Outgoing,
        );
    }
    assert!(m.evict_for(t(1000), ip(40, 0, 0)).is_none());
}

#[test]
fn a_netgroup_holding_its_share_of_incoming_connections_is_refused() {
    let mut m = manager(0);
    for i in 0..3u64 {
        open(
            &mut m,
            t(0),
            i,
            i as u16,
            ip(10, 7, i as u8),
            Direction::Incoming,
        );
    }
    open(&mut m, t(0), 9, 9, ip(10, 7, 9), Direction::Outgoing);
    assert!(!m.netgroup_full(ip(10, 7, 50), 0), "3 incoming of 4");
    assert!(m.netgroup_full(ip(10, 7, 50), 1), "3 + 1 admitted");
    assert!(!m.netgroup_full(ip(10, 8, 50), 3));
    m.close();
    assert!(!m.netgroup_full(ip(10, 7, 50), 9), "closed: no refusals");
}

#[test]
fn decaying_tags_decay_on_read_and_count_in_the_value() {
    let mut m = manager(0);
    m.register_decaying_tag(
        t(0),
        "blocks",
        Duration::from_secs(60),
        Decay::Fixed(1),
        Bump::SumBounded { min: 0, max: 5 },
    )
    .expect("valid");
    assert!(m
        .register_decaying_tag(
            t(0),
            "blocks",
            Duration::from_secs(1),
            Decay::None,
            Bump::Overwrite
        )
        .is_err());
    assert!(matches!(
        m.bump(t(0), peer(1), "nope", 1),
        Err(ConnManagerError::DecayingTag(..))
    ));
    open(&mut m, t(0), 1, 1, ip(10, 0, 0), Direction::Outgoing);
    m.bump(t(10), peer(1), "blocks", 9).expect("registered");
    assert_eq!(m.tag_info(t(59), &peer(1)).map(|i| i.value), Some(5));
    assert_eq!(m.tag_info(t(130), &peer(1)).map(|i| i.value), Some(3));
    let info = m.tag_info(t(300), &peer(1)).expect("known");
    assert_eq!(info.tags.get("blocks"), None, "decayed to 0: removed");
    assert_eq!(info.value, 0);
}

#[test]
fn the_fast_choice_of_one_victim_agrees_with_the_sort() {
    let mut m = manager(0);
    for i in 0..40u64 {
        let dir = if i % 3 == 0 {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        open(
            &mut m,
            t(i % 7),
            i,
            (i % 33) as u16,
            ip(10, (i % 5) as u8, i as u8),
            dir,
        );
        m.tag_peer(t(0), peer((i % 33) as u16), "s", (i % 4) as i64)
            .expect("open");
    }
    let cands = m.candidates(t(1000));
    let fast = rank::reference::rank_ids(cands.clone(), 1);
    let slow = rank::reference::rank_slow(&cands, 1);
    let general = rank::reference::rank_general(cands, 1);
    assert_eq!(fast.first().map(|v| v.0), slow.first().copied());
    assert_eq!(fast.first().map(|v| v.0), general.first().map(|v| v.0));
}

impl ConnManager {
    fn poll_events_for_test(&mut self) -> Vec<ConnManagerEvent> {
        std::iter::from_fn(|| self.poll_event()).collect()
    }
}
