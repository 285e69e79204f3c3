//! Scenarios of the swap (BEHAVIOUR.md §7.4), without any runtime.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{drain, t};
use super::tests_maintenance::{dials, known, peer_of, policy, succeed};
use super::*;
use crate::pool::P2pEvent;
use std::time::Duration;

/// A node with three public connections in bounds.
fn swapper(linger: Option<Duration>) -> (ConnectionPolicy<()>, Vec<ConnectionId>) {
    let config = PolicyConfig {
        swap_linger: linger,
        ..PolicyConfig::default()
    };
    let mut p = policy(0, 0, 10, config);
    let mut ids = Vec::new();
    for n in 1..=3u16 {
        p.pool.register_point(t(0), known(n), None, None);
        let id = p.connect(t(0), known(n), None, false).unwrap();
        succeed(&mut p, t(0), id, known(n));
        ids.push(id);
    }
    drain(&mut p);
    (p, ids)
}

#[test]
fn in_bounds_the_maintenance_proposes_one_swap() {
    let (mut p, _) = swapper(Some(Duration::from_secs(30)));
    p.activate(t(1));
    let actions = drain(&mut p);
    let requests: Vec<_> = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    message: ControlMessage::SwapRequest(..),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(requests.len(), 1, "{actions:?}");
    if let Action::Send {
        id,
        message: ControlMessage::SwapRequest(proposed, proposed_peer),
    } = requests[0]
    {
        // The proposal is one of our other peers, with its point.
        let to = p.connections().find(|c| c.id == *id).unwrap().peer_id;
        assert_ne!(to, *proposed_peer);
        assert_eq!(
            p.connection_of(proposed_peer).unwrap().point,
            Some(*proposed)
        );
    }
    // Swap disabled: nothing proposed.
    let (mut q, _) = swapper(None);
    q.activate(t(1));
    assert!(!drain(&mut q).iter().any(|a| matches!(
        a,
        Action::Send {
            message: ControlMessage::SwapRequest(..),
            ..
        }
    )));
}

#[test]
fn a_swap_request_is_answered_dialled_and_the_proposed_peer_dropped() {
    let (mut p, ids) = swapper(Some(Duration::from_secs(30)));
    let from = ids[0];
    let target = known(50);
    p.handle_control(t(5), from, ControlMessage::SwapRequest(target, peer_of(50)));
    let actions = drain(&mut p);
    let ack = actions.iter().find_map(|a| match a {
        Action::Send {
            id,
            message: ControlMessage::SwapAck(pt, pr),
        } if *id == from => Some((*pt, *pr)),
        _ => None,
    });
    let (_, dropped_peer) = ack.expect("an ack with one of our other peers");
    let (dial, pt) = dials(&actions)[0];
    assert_eq!(pt, target);
    succeed(&mut p, t(6), dial, target);
    let actions = drain(&mut p);
    let dropped = p.connection_of(&dropped_peer).unwrap().id;
    assert!(actions.contains(&Action::Close {
        id: dropped,
        reason: DisconnectReason::Swapped
    }));
    assert!(
        actions.contains(&Action::Event(PolicyEvent::Pool(P2pEvent::SwapSuccess {
            source: peer_of(1)
        })))
    );
    // Another request within the linger is ignored.
    p.handle_control(
        t(20),
        ids[1],
        ControlMessage::SwapRequest(known(51), peer_of(51)),
    );
    let actions = drain(&mut p);
    assert!(dials(&actions).is_empty());
    assert!(actions.contains(&Action::Event(PolicyEvent::Pool(
        P2pEvent::SwapRequestIgnored { source: peer_of(2) }
    ))));
}

#[test]
fn a_swap_ack_counts_only_for_a_recent_request_of_ours_once() {
    let (mut p, ids) = swapper(Some(Duration::from_secs(30)));
    // An ack nobody asked for is ignored.
    p.handle_control(
        t(1),
        ids[0],
        ControlMessage::SwapAck(known(60), peer_of(60)),
    );
    assert!(dials(&drain(&mut p)).is_empty());
    // Our request, then its ack: dialled once.
    p.activate(t(2));
    let to = drain(&mut p)
        .iter()
        .find_map(|a| match a {
            Action::Send {
                id,
                message: ControlMessage::SwapRequest(..),
            } => Some(*id),
            _ => None,
        })
        .unwrap();
    p.handle_control(t(3), to, ControlMessage::SwapAck(known(61), peer_of(61)));
    assert_eq!(dials(&drain(&mut p)).len(), 1);
    p.handle_control(t(4), to, ControlMessage::SwapAck(known(62), peer_of(62)));
    assert!(
        dials(&drain(&mut p)).is_empty(),
        "a request authorizes one ack"
    );
    // A late ack (past the linger) is ignored too.
    let (mut q, _) = swapper(Some(Duration::from_secs(30)));
    q.activate(t(2));
    let to = drain(&mut q)
        .iter()
        .find_map(|a| match a {
            Action::Send {
                id,
                message: ControlMessage::SwapRequest(..),
            } => Some(*id),
            _ => None,
        })
        .unwrap();
    q.handle_control(t(40), to, ControlMessage::SwapAck(known(63), peer_of(63)));
    assert!(dials(&drain(&mut q)).is_empty());
}
