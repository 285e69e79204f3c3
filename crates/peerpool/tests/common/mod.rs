//! Shared test harness: nodes on 127.0.0.x with cheap identities, and waiting for events.
#![allow(dead_code, clippy::unwrap_used)]

use peerpool::transport::MemoryNetwork;
use peerpool::{CloseReason, ConnectError, EventError, Events, Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Difficulty used between test nodes.
pub const TEST_POW: f64 = 4.0;

/// A deterministic identity with `TEST_POW` bits.
pub fn identity(seed: u64) -> Arc<Identity> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Arc::new(Identity::generate(
        &PowTarget::new(TEST_POW).unwrap(),
        &mut rng,
    ))
}

/// A config listening on `ip:0`, chain `TEZOS`, seeded.
pub fn config(seed: u64, ip: &str) -> NodeConfig {
    let mut c = NodeConfig::new(identity(seed), "TEZOS");
    c.listen_addr = Some(format!("{ip}:0").parse().unwrap());
    c.pow_target = PowTarget::new(TEST_POW).unwrap();
    c.policy.bootstrap_on_connect = false;
    c.seed = Some(seed);
    // No maintenance (no automatic dialing) and no swaps: tests dial explicitly; those
    // about the maintenance turn it on.
    c.pool.min_connections = 0;
    c.policy.maintenance.enabled = false;
    c.policy.swap_linger = None;
    c
}

#[derive(Debug)]
pub struct TestNode {
    pub handle: Node<RawMessage>,
    pub addr: SocketAddr,
}

/// Starts and activates a node over TCP.
pub async fn start(config: NodeConfig) -> TestNode {
    let handle = Node::<RawMessage>::start(config.validate().unwrap())
        .await
        .unwrap();
    handle.activate().await;
    let addr = handle.local_addr().unwrap();
    TestNode { handle, addr }
}

/// Starts and activates a node on an in-memory network (for paused-clock tests).
pub async fn start_in(net: &MemoryNetwork, config: NodeConfig) -> TestNode {
    let handle = Node::<RawMessage>::builder(config.validate().unwrap())
        .transport(net.clone())
        .start()
        .await
        .unwrap();
    handle.activate().await;
    let addr = handle.local_addr().unwrap();
    TestNode { handle, addr }
}

/// Waits (at most 10 s, a safety net) for the first event matching `pred`.
pub async fn wait_for<T>(events: &mut Events, pred: impl FnMut(&NodeEvent) -> Option<T>) -> T {
    wait_for_within(events, Duration::from_secs(10), pred).await
}

/// Waits at most `limit` (a safety net; under a paused clock, virtual time) for the first
/// event matching `pred`.
pub async fn wait_for_within<T>(
    events: &mut Events,
    limit: Duration,
    mut pred: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pred(&e) {
                        return t;
                    }
                }
                Err(EventError::Lagged(_)) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected event did not come within {limit:?}"))
}

/// Sends one app message from `a` to `b` over their connection and checks it arrives.
pub async fn assert_exchange(a: &Node<RawMessage>, b: &Node<RawMessage>, tag: u16) {
    let to_b = connected(a, b.peer_id()).await;
    let from_a = connected(b, a.peer_id()).await;
    let msg = RawMessage {
        tag,
        body: vec![7; 100],
    };
    to_b.send(&msg).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), from_a.recv())
        .await
        .expect("message within 10 s");
    assert_eq!(got, Some(msg));
}

/// The reason of the next `ConnectionClosed` event.
pub async fn next_close_reason(events: &mut Events) -> CloseReason {
    wait_for(events, |e| match e {
        NodeEvent::ConnectionClosed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await
}

/// The peer of the next `ConnectionEstablished` event.
pub async fn next_established_peer(events: &mut Events) -> PeerId {
    wait_for(events, |e| match e {
        NodeEvent::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
        _ => None,
    })
    .await
}

/// Waits until `node` has a connection with `peer`: already, or by its event.
pub async fn connected(node: &Node<RawMessage>, peer: PeerId) -> peerpool::Connection<RawMessage> {
    // Subscribed before looking, so the event cannot slip between the two.
    let mut events = node.events();
    loop {
        if let Some(c) = node.connection(&peer) {
            return c;
        }
        wait_for(&mut events, |e| match e {
            NodeEvent::ConnectionEstablished { peer_id, .. } if *peer_id == peer => Some(()),
            _ => None,
        })
        .await;
    }
}

/// Waits until `node` has a connection with `peer` (by its event, or already).
pub async fn wait_connected(node: &Node<RawMessage>, events: &mut Events, peer: PeerId) {
    if node.connection(&peer).is_some() {
        return;
    }
    wait_for(events, |e| match e {
        NodeEvent::ConnectionEstablished { peer_id, .. } if *peer_id == peer => Some(()),
        _ => None,
    })
    .await
}

/// The error of the next `HandshakeFailed` event.
pub async fn next_handshake_error(events: &mut Events) -> ConnectError {
    wait_for(events, |e| match e {
        NodeEvent::HandshakeFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await
}

/// Handshake settings of a raw test client on chain `TEZOS` that demands no proof of work.
pub fn client_config(identity: Arc<Identity>) -> peerpool_proto::handshake::HandshakeConfig {
    peerpool_proto::handshake::HandshakeConfig {
        identity,
        versions: peerpool_proto::connection_message::SupportedVersions::octez("TEZOS"),
        listening_port: None,
        metadata: Default::default(),
        pow_target: PowTarget::new(0.0).unwrap(),
        chunk_payload_size: 65517,
    }
}
