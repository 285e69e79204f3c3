//! Properties of the manager over random sequences of connections, tags, protections and
//! time (issue 9's tests).

use super::rank::reference::{rank_general, rank_ids, rank_slow};
use super::rank::Cand;
use super::*;
use crate::policy::Bounds;
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn peer(n: u8) -> PeerId {
    PeerId([n; 16])
}

fn t(ms: u64) -> Time {
    Time::from_secs(1_000_000).saturating_add(Duration::from_millis(ms))
}

#[derive(Debug, Clone)]
enum Op {
    Connect { peer: u8, group: u8, incoming: bool },
    Disconnect(usize),
    Tag { peer: u8, value: i64 },
    Protect(u8),
    Unprotect(u8),
    Advance(u64),
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..30, 0u8..6, any::<bool>())
            .prop_map(|(peer, group, incoming)| Op::Connect { peer, group, incoming }),
        2 => (0usize..64).prop_map(Op::Disconnect),
        2 => (0u8..30, -5i64..20).prop_map(|(peer, value)| Op::Tag { peer, value }),
        1 => (0u8..30).prop_map(Op::Protect),
        1 => (0u8..30).prop_map(Op::Unprotect),
        2 => (0u64..90_000).prop_map(Op::Advance),
        1 => Just(Op::Trim),
    ]
}

fn manager() -> ConnManager {
    let bounds = Bounds {
        min_threshold: 3,
        min_target: 5,
        max_target: 8,
        max_threshold: 11,
    };
    let cfg = ConnManagerConfig {
        protect_per_category: 2,
        max_incoming_per_netgroup: Some(3),
        ..ConnManagerConfig::default()
    };
    ConnManager::new(cfg.limits(&bounds, 16).expect("limits"), 99)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every trim (the high watermark crossed, or asked): no protected or trusted
    /// connection was chosen; the count is at most high unless protected connections
    /// alone exceed it; a connection in its grace period is chosen only (flagged) when the
    /// unshielded ones could not bring the count down to high.
    #[test]
    fn trims_keep_protected_peers_and_end_at_or_below_high(ops in prop::collection::vec(op(), 1..120)) {
        let mut m = manager();
        let mut now = t(0);
        let mut live: Vec<(ConnectionId, u8, Time, u8)> = Vec::new();
        let mut next = 1u64;
        for op in ops {
            let mut trim = false;
            match op {
                Op::Connect { peer: p, group, incoming } => {
                    let ip = IpAddr::from(Ipv4Addr::new(10, group, p, 1));
                    let dir = if incoming { Direction::Incoming } else { Direction::Outgoing };
                    m.connection_opened(now, ConnectionId(next), peer(p), ip, dir, false);
                    live.push((ConnectionId(next), p, now, group));
                    next += 1;
                    trim = m.excess(live.len()) > 0;
                }
                Op::Disconnect(i) => {
                    if !live.is_empty() {
                        let (id, ..) = live.remove(i % live.len());
                        m.connection_closed(now, id);
                    }
                }
                Op::Tag { peer: p, value } => { m.tag_peer(now, peer(p), "v", value).expect("open"); }
                Op::Protect(p) => { let _ = m.protect(now, peer(p), "app"); }
                Op::Unprotect(p) => { m.unprotect(now, &peer(p), "app"); }
                Op::Advance(ms) => now = now.saturating_add(Duration::from_millis(ms)),
                Op::Trim => trim = true,
            }
            prop_assert!(m.protected_peers() <= m.limits().budget);
            if !trim {
                continue;
            }
            let before = live.len();
            let victims = m.trim(now, before);
            let protected_conns = live.iter().filter(|c| m.is_protected(&peer(c.1), None)).count();
            for v in &victims {
                let c = live.iter().find(|c| c.0 == v.id).copied();
                let p = c.map(|c| c.1);
                prop_assert!(p.is_some(), "a victim is a live connection");
                prop_assert!(!m.is_protected(&peer(p.unwrap_or(0)), None), "protected victim {v:?}");
                // An unflagged victim is past its grace, or its netgroup is above its share.
                if let (Some(c), None) = (c, &v.overrode) {
                    let in_group = live.iter().filter(|o| o.3 == c.3).count();
                    let young = now.saturating_duration_since(c.2) < m.limits().grace;
                    prop_assert!(!young || in_group > m.limits().per_netgroup,
                        "a connection in grace trimmed unflagged: {v:?}");
                }
            }
            let unflagged = victims.iter().filter(|v| v.overrode.is_none()).count();
            let flagged = victims.len() - unflagged;
            if flagged > 0 {
                prop_assert!(before - unflagged > m.limits().high,
                    "a shield was overridden though the unshielded sufficed");
                prop_assert!(before - victims.len() >= m.limits().high, "overrode past high");
            }
            for v in &victims {
                live.retain(|c| c.0 != v.id);
                m.connection_closed(now, v.id);
            }
            if before > m.limits().low {
                prop_assert!(live.len() <= m.limits().high.max(protected_conns),
                    "after a trim {} > high {} (protected {protected_conns})", live.len(), m.limits().high);
            }
        }
    }

    /// The O(n) choice of one victim, the sorting path and a slow one-at-a-time reference
    /// (take the worst head, shrink its netgroup, repeat) agree.
    #[test]
    fn the_three_rankings_agree(
        cands in prop::collection::vec((any::<bool>(), 0i64..3, 0u8..4, any::<bool>(), 0u64..5), 1..40),
        take in 1usize..12,
    ) {
        let mut sizes = std::collections::HashMap::new();
        for c in &cands {
            *sizes.entry(c.2).or_insert(0usize) += 1;
        }
        let cands: Vec<Cand> = cands.iter().enumerate().map(|(i, c)| Cand {
            idx: i,
            id: ConnectionId(i as u64),
            dup: c.0,
            value: c.1,
            netgroup: Netgroup::V4([10, c.2]),
            group_size: sizes[&c.2] + 1,
            inbound: c.3,
            opened: t(c.4),
        }).collect();
        let slow = rank_slow(&cands, take);
        let general: Vec<ConnectionId> = rank_general(cands.clone(), take).into_iter().map(|v| v.0).collect();
        prop_assert_eq!(&general, &slow);
        let fast: Vec<ConnectionId> = rank_ids(cands.clone(), 1).into_iter().map(|v| v.0).collect();
        prop_assert_eq!(fast.first(), slow.first());
        // The fast path's rule names the same criterion as the sorting path's with the
        // second-worst as runner-up.
        if cands.len() >= 2 {
            let two = rank_ids(cands.clone(), 2);
            let one = rank_ids(cands, 1);
            prop_assert_eq!(one[0].0, two[0].0);
        }
    }

    /// A decaying tag read through the manager equals a step-by-step reference that
    /// applies the decay at every tick boundary, for every preset.
    #[test]
    fn decayed_values_equal_the_step_by_step_reference(
        preset in 0usize..5,
        bump_preset in 0usize..3,
        steps in prop::collection::vec((0u64..40_000, prop::option::of(-3i64..50)), 1..60),
    ) {
        let interval = Duration::from_secs(10);
        let decay = match preset {
            0 => Decay::None,
            1 => Decay::Fixed(3),
            2 => Decay::Linear(0.7),
            3 => Decay::ExpireWhenInactive(Duration::from_secs(25)),
            _ => Decay::Custom(std::sync::Arc::new(|v| v - v / 4 - 1)),
        };
        let bump = match bump_preset {
            0 => Bump::SumUnbounded,
            1 => Bump::SumBounded { min: 0, max: 40 },
            _ => Bump::Overwrite,
        };
        let mut m = manager();
        let start = t(0);
        m.register_decaying_tag(start, "d", interval, decay.clone(), bump.clone()).expect("valid");
        m.protect(start, peer(1), "keep").expect("budget"); // keeps the entry alive
        // Reference: (value, last bump) or None; ticks at start + k·interval.
        let mut reference: Option<(i64, Time)> = None;
        let mut now = start;
        for (dt, bump_by) in steps {
            let later = now.saturating_add(Duration::from_millis(dt));
            let first = now.saturating_duration_since(start).as_millis() / interval.as_millis() + 1;
            let last = later.saturating_duration_since(start).as_millis() / interval.as_millis();
            for k in first..=last {
                let tick = start.saturating_add(interval * k as u32);
                if let Some((v, last_bump)) = reference {
                    reference = match &decay {
                        Decay::None => Some((v, last_bump)),
                        Decay::Fixed(d) => Some((v - d, last_bump)),
                        Decay::Linear(c) => Some((decay::linear_step(v, *c), last_bump)),
                        Decay::ExpireWhenInactive(after) => {
                            if tick.saturating_duration_since(last_bump) >= *after { None } else { Some((v, last_bump)) }
                        }
                        Decay::Custom(f) => Some((f(v), last_bump)),
                    }.filter(|(v, _)| *v > 0 || matches!(decay, Decay::None | Decay::ExpireWhenInactive(_)));
                }
            }
            now = later;
            if let Some(delta) = bump_by {
                let current = reference.map_or(0, |r| r.0);
                let v = match &bump {
                    Bump::SumUnbounded => current + delta,
                    Bump::SumBounded { min, max } => (current + delta).clamp(*min, *max),
                    Bump::Overwrite => delta,
                    Bump::Custom(f) => f(current, delta),
                };
                reference = Some((v, now));
                m.bump(now, peer(1), "d", delta).expect("registered");
            }
            let got = m.tag_info(now, &peer(1)).and_then(|i| i.tags.get("d").copied());
            prop_assert_eq!(got, reference.map(|r| r.0), "at {:?}", now);
        }
    }
}

#[derive(Debug, Clone)]
enum IxOp {
    Base(Op),
    Rtt(u8, u64),
    Useful(u8),
    Trust(u8, bool),
    Bump(u8, usize, i64),
    Choose(usize),
}

fn ix_op() -> impl Strategy<Value = IxOp> {
    prop_oneof![
        10 => op().prop_map(IxOp::Base),
        1 => (0u8..30, 1u64..500).prop_map(|(p, ms)| IxOp::Rtt(p, ms)),
        1 => (0u8..30).prop_map(IxOp::Useful),
        1 => (0u8..30, any::<bool>()).prop_map(|(p, t)| IxOp::Trust(p, t)),
        3 => (0u8..30, 0usize..4, -3i64..15).prop_map(|(p, tag, d)| IxOp::Bump(p, tag, d)),
        3 => (1usize..20).prop_map(IxOp::Choose),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The index (kept up to date as things change) chooses exactly what ranking every
    /// candidate from scratch chooses: the same victims in the same order, with the same
    /// rules, for trims, "too many" steps and evictions, through connections opening and
    /// closing, tags, decaying tags, protection, trust, round-trip times, usefulness and
    /// time passing (grace ending, decay ticks).
    #[test]
    fn the_index_chooses_what_the_full_ranking_chooses(ops in prop::collection::vec(ix_op(), 1..150)) {
        let mut m = manager();
        let tags = ["fixed", "linear", "expire", "custom"];
        m.register_decaying_tag(t(0), tags[0], Duration::from_secs(7), Decay::Fixed(2), Bump::SumUnbounded)
            .expect("valid");
        m.register_decaying_tag(t(0), tags[1], Duration::from_secs(11), Decay::Linear(0.5), Bump::SumUnbounded)
            .expect("valid");
        m.register_decaying_tag(t(0), tags[2], Duration::from_secs(5), Decay::ExpireWhenInactive(Duration::from_secs(20)), Bump::Overwrite)
            .expect("valid");
        // A custom decay that rises and falls (it cannot be bounded, so it is applied when due).
        m.register_decaying_tag(t(0), tags[3], Duration::from_secs(13), Decay::Custom(std::sync::Arc::new(|v| if v % 2 == 0 { v + 3 } else { v - 4 })), Bump::SumUnbounded)
            .expect("valid");
        let mut now = t(0);
        let mut live: Vec<ConnectionId> = Vec::new();
        let mut next = 1u64;
        for op in ops {
            match op {
                IxOp::Base(Op::Connect { peer: p, group, incoming }) => {
                    let ip = IpAddr::from(Ipv4Addr::new(10, group, p, 1));
                    let dir = if incoming { Direction::Incoming } else { Direction::Outgoing };
                    m.connection_opened(now, ConnectionId(next), peer(p), ip, dir, false);
                    live.push(ConnectionId(next));
                    next += 1;
                }
                IxOp::Base(Op::Disconnect(i)) => {
                    if !live.is_empty() {
                        let id = live.remove(i % live.len());
                        m.connection_closed(now, id);
                    }
                }
                IxOp::Base(Op::Tag { peer: p, value }) => { m.tag_peer(now, peer(p), "v", value).expect("open"); }
                IxOp::Base(Op::Protect(p)) => { let _ = m.protect(now, peer(p), "app"); }
                IxOp::Base(Op::Unprotect(p)) => { m.unprotect(now, &peer(p), "app"); }
                IxOp::Base(Op::Advance(ms)) => now = now.saturating_add(Duration::from_millis(ms)),
                IxOp::Base(Op::Trim) | IxOp::Choose(_) => {
                    let count = live.len();
                    let wanted = match op { IxOp::Choose(k) => k, _ => count.saturating_sub(m.limits().low) };
                    let must = count.saturating_sub(m.limits().high).min(wanted);
                    // The index first: the full ranking refreshes every value it reads,
                    // which would hide an index that missed a change.
                    let fast_evict = m.choose_evictable(now);
                    let fast = m.choose(now, wanted, must);
                    let slow = m.choose_by_full_ranking(now, wanted, must);
                    prop_assert_eq!(&fast, &slow, "wanted {} must {}", wanted, must);
                    let slow = m.choose_evictable_by_full_ranking(now);
                    prop_assert_eq!(fast_evict, slow);
                }
                IxOp::Rtt(p, ms) => m.record_rtt(&peer(p), Duration::from_millis(ms)),
                IxOp::Useful(p) => m.record_useful(now, &peer(p)),
                IxOp::Trust(p, tr) => m.set_trusted(&peer(p), tr),
                IxOp::Bump(p, tag, d) => { m.bump(now, peer(p), tags[tag], d).expect("registered"); }
            }
        }
    }
}
