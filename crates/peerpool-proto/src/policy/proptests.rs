//! Properties of the connection policy over random sequences of inputs, checked after every
//! step against the policy's own tables and the pool.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::tests::{auth, ip, peer, point, policy_with, pool_config, t};
use super::*;
use crate::connection_message::NackMotive;
use proptest::prelude::*;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
enum Op {
    Connect(u8),
    Incoming(u8),
    /// Authenticate the `i`-th attempt in flight as peer `p`, announcing port or not.
    Authenticate(usize, u8, bool),
    /// End the `i`-th attempt in flight: established, or failed in one of several ways.
    Finish(usize, u8),
    /// Close the `i`-th connection, by whom.
    Close(usize, u8),
    Control(usize, bool),
    Ban(u8),
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Connect),
        (0u8..6).prop_map(Op::Incoming),
        (0usize..8, 0u8..6, any::<bool>()).prop_map(|(i, p, a)| Op::Authenticate(i, p, a)),
        (0usize..8, 0u8..6).prop_map(|(i, k)| Op::Finish(i, k)),
        (0usize..8, 0u8..3).prop_map(|(i, k)| Op::Close(i, k)),
        (0usize..8, any::<bool>()).prop_map(|(i, b)| Op::Control(i, b)),
        (0u8..6).prop_map(Op::Ban),
        (1u8..120).prop_map(Op::Tick),
    ]
}

/// The invariants every state must keep ([`ConnectionPolicy::audit`]).
fn check(p: &ConnectionPolicy<()>) {
    let found = p.audit();
    assert!(found.is_empty(), "broken invariants: {found:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_over_random_inputs(ops in proptest::collection::vec(op(), 1..80)) {
        let mut pool = pool_config();
        pool.max_connections = 3;
        pool.min_connections = 2;
        let config = PolicyConfig {
            max_incoming_handshakes: 3,
            ..PolicyConfig::default()
        };
        let mut p = policy_with(pool, config, 100);
        p.activate(t(0));
        let mut now = 0u64;
        for op in ops {
            let at = t(now);
            match op {
                Op::Connect(n) => {
                    let _ = p.connect(at, point(n), None, n % 3 == 0);
                }
                Op::Incoming(n) => {
                    let _ = p.handle_incoming(at, SocketAddr::new(ip(n), 40_000 + u16::from(n)));
                }
                Op::Authenticate(i, n, announce) => {
                    let ids: Vec<ConnectionId> = p.attempts.keys().copied().collect();
                    if let Some(id) = ids.get(i % ids.len().max(1)).copied() {
                        if p.attempts[&id].peer_id.is_none() {
                            let port = announce.then_some(9732);
                            let _ = p.handle_authenticated(at, id, &auth(peer(n), port));
                        }
                    }
                }
                Op::Finish(i, kind) => {
                    let ids: Vec<ConnectionId> = p.attempts.keys().copied().collect();
                    if let Some(id) = ids.get(i % ids.len().max(1)).copied() {
                        let admitted = p.attempts[&id].peer_id.is_some();
                        match kind {
                            0 | 1 if admitted => {
                                if !p.handle_established(at, id) {
                                    // The runtime closes a refused duplicate; nothing more.
                                }
                            }
                            0 | 1 => p.handle_attempt_failed(at, id, AttemptFailure::RefusedByUs),
                            2 => p.handle_attempt_failed(at, id, AttemptFailure::Timeout),
                            3 => p.handle_attempt_failed(at, id, AttemptFailure::Garbage),
                            4 => p.handle_attempt_failed(
                                at,
                                id,
                                AttemptFailure::Nacked {
                                    motive: NackMotive::AlreadyConnected,
                                    points: vec![point(7)],
                                },
                            ),
                            _ => p.handle_attempt_failed(at, id, AttemptFailure::Closed),
                        }
                    }
                }
                Op::Close(i, by) => {
                    let ids: Vec<ConnectionId> = p.connections.keys().copied().collect();
                    if let Some(id) = ids.get(i % ids.len().max(1)).copied() {
                        let by = [ClosedBy::Us, ClosedBy::Peer, ClosedBy::PeerFault][usize::from(by)];
                        p.handle_closed(at, id, by);
                    }
                }
                Op::Control(i, bootstrap) => {
                    let ids: Vec<ConnectionId> = p.connections.keys().copied().collect();
                    if let Some(id) = ids.get(i % ids.len().max(1)).copied() {
                        let m = if bootstrap {
                            ControlMessage::Bootstrap
                        } else {
                            ControlMessage::Advertise(vec![point(5), point(6)])
                        };
                        p.handle_control(at, id, m);
                    }
                }
                Op::Ban(n) => p.ban_point(at, &point(n)),
                Op::Tick(s) => {
                    now += u64::from(s);
                    p.handle_timeout(t(now));
                }
            }
            // The runtime carries out closes: report them closed.
            while let Some(a) = p.poll_action() {
                if let Action::Close { id, .. } = a {
                    p.handle_closed(t(now), id, ClosedBy::Us);
                }
            }
            check(&p);
        }
    }
}
