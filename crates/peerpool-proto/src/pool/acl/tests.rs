#![allow(clippy::unwrap_used)] // in tests a panic is the failure report
use super::*;
use rand::{RngCore, SeedableRng};

fn ip(n: u32) -> IpAddr {
    IpAddr::from(n.to_be_bytes())
}

#[test]
fn peer_greylist_is_a_fifo_with_refresh() {
    let mut g = PeerGreylist::new(3);
    for i in 0..3 {
        g.add(PeerId([i; 16]));
    }
    g.add(PeerId([0; 16])); // refresh: 1 is now the oldest
    g.add(PeerId([3; 16]));
    assert!(g.contains(&PeerId([0; 16])));
    assert!(!g.contains(&PeerId([1; 16])));
    assert_eq!(g.len(), 3);
    let order: Vec<_> = g.iter().map(|p| p.0[0]).collect();
    assert_eq!(order, [2, 0, 3]);
    g.remove(&PeerId([2; 16]));
    assert_eq!(g.len(), 2);
}

#[test]
fn ip_filter_takes_exactly_its_nominal_size() {
    let g = IpGreylist::new(2048, Duration::from_secs(86_400));
    assert_eq!(g.size_in_bytes(), 2048 * 1024);
    assert_eq!(g.cell_count(), 2048 * 1024 * 2);
}

#[test]
fn ip_entry_lasts_at_least_the_cleanup_delay() {
    let delay = Duration::from_secs(86_400);
    let mut g = IpGreylist::new(1, delay);
    let t0 = Time::from_secs(1_000);
    g.add(t0, ip(1));
    // Another greylisting later must not be shortened by already-due countdowns.
    let t1 = t0.saturating_add(Duration::from_secs(50_000));
    g.add(t1, ip(2));
    let mut now = t0;
    let step = Duration::from_secs(600);
    let mut expired = [None, None];
    while expired.iter().any(Option::is_none) {
        now = now.saturating_add(step);
        g.countdown_until(now);
        for (k, (addr, start)) in [(ip(1), t0), (ip(2), t1)].into_iter().enumerate() {
            if now >= start && expired[k].is_none() && !g.contains(addr) {
                expired[k] = Some(now.saturating_duration_since(start));
            }
        }
    }
    for e in expired.into_iter().flatten() {
        assert!(e >= delay, "expired after {e:?}");
        assert!(e <= delay * 15 / 14 + step, "lingered {e:?}");
    }
}

#[test]
fn ip_remove_and_clear() {
    let mut g = IpGreylist::new(1, Duration::from_secs(10));
    g.add(Time::EPOCH, ip(7));
    assert!(g.contains(ip(7)));
    assert_eq!(g.listed().count(), 1);
    g.remove(ip(7));
    assert!(!g.contains(ip(7)));
    g.add(Time::EPOCH, ip(8));
    g.clear();
    assert!(!g.contains(ip(8)));
    assert_eq!(g.next_countdown(), None);
}

#[test]
fn listing_fifo_reports_overflow() {
    let mut g = IpGreylist::new(2, Duration::from_secs(10));
    for i in 0..3 {
        g.add(Time::from_secs(u64::from(i)), ip(i));
    }
    assert_eq!(g.listed().count(), 2);
    assert_eq!(g.list_unreliable_since(), Some(Time::from_secs(2)));
}

/// Measured false-positive rate against the Bloom formula `(1 − e^(−k·n/m))^k` at
/// 10 %, 50 % and 90 % of non-zero cells.
#[test]
fn ip_false_positive_rate_matches_the_bloom_formula() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (target_fill, queries, rel_tol, abs_tol) in [
        (0.10, 200_000u32, 0.0, 6e-5),
        (0.50, 40_000, 0.15, 0.0),
        (0.90, 20_000, 0.05, 0.0),
    ] {
        let mut g = IpGreylist::new(1, Duration::from_secs(86_400));
        let m = g.cell_count() as f64;
        let mut n = 0u32;
        while g.fill_ratio() < target_fill {
            // Inserted addresses have the top bit set; queried ones do not.
            g.add(Time::EPOCH, ip(0x8000_0000 | n));
            n += 1;
        }
        let k = IP_HASHES as f64;
        let formula = (1.0 - (-k * f64::from(n) / m).exp()).powf(k);
        let mut hits = 0u32;
        for _ in 0..queries {
            if g.contains(ip(rng.next_u32() & 0x7fff_ffff)) {
                hits += 1;
            }
        }
        let measured = f64::from(hits) / f64::from(queries);
        let tol = formula * rel_tol + abs_tol;
        eprintln!("fill {target_fill}: n {n}, measured {measured:.6}, formula {formula:.6}");
        assert!(
            (measured - formula).abs() <= tol,
            "fill {target_fill}: measured {measured}, formula {formula}, n {n}"
        );
    }
}

#[test]
fn failure_table() {
    assert_eq!(
        acl_action(Failure::HandshakeMisbehaviour),
        AclAction::GreylistAddr
    );
    assert_eq!(
        acl_action(Failure::UnexpectedPeerId { running: true }),
        AclAction::GreylistAddrAndDisconnect
    );
    assert_eq!(
        acl_action(Failure::UndecodableMessage),
        AclAction::GreylistPeer
    );
    assert_eq!(acl_action(Failure::Nacked), AclAction::Ignore);
    assert_eq!(acl_action(Failure::Timeout), AclAction::Ignore);
}

#[test]
fn acl_lists() {
    let mut acl = Acl::new(&AclConfig::default()).unwrap();
    acl.ban_addr(ip(1));
    acl.greylist_addr(Time::EPOCH, ip(2));
    acl.ban_peer(PeerId([1; 16]));
    acl.greylist_peer(PeerId([2; 16]));
    assert!(acl.banned_addr(ip(1)) && acl.banned_addr(ip(2)) && !acl.banned_addr(ip(3)));
    assert!(acl.banned_peer(&PeerId([1; 16])) && acl.banned_peer(&PeerId([2; 16])));
    acl.clear_greylists();
    assert!(acl.banned_addr(ip(1)) && !acl.banned_addr(ip(2)));
    assert!(acl.banned_peer(&PeerId([1; 16])) && !acl.banned_peer(&PeerId([2; 16])));
    acl.clear();
    assert!(!acl.banned_addr(ip(1)) && !acl.banned_peer(&PeerId([1; 16])));
    assert_eq!(
        Acl::new(&AclConfig {
            peer_greylist_size: 0,
            ..AclConfig::default()
        })
        .unwrap_err(),
        AclError::EmptyPeerGreylist
    );
}
