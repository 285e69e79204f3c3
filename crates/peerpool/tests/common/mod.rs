//! Shared test harness: nodes on 127.0.0.x with cheap identities, and waiting for events.
#![allow(dead_code, clippy::unwrap_used)]

use peerpool::node::{Node, NodeConfig, NodeEvent, NodeHandle};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::RawMessage;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

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

/// A config listening on `ip:0`, chain `TEZOS`.
pub fn config(seed: u64, ip: &str) -> NodeConfig {
    let mut c = NodeConfig::new(identity(seed), "TEZOS");
    c.listen_addr = Some(format!("{ip}:0").parse().unwrap());
    c.pow_target = PowTarget::new(TEST_POW).unwrap();
    c.bootstrap_on_connect = false;
    // No automatic dialing: tests dial explicitly.
    c.pool.min_connections = 0;
    c
}

#[derive(Debug)]
pub struct TestNode {
    pub node: Node<RawMessage>,
    pub handle: NodeHandle<RawMessage>,
    pub addr: SocketAddr,
}

pub async fn start(config: NodeConfig) -> TestNode {
    let node = Node::<RawMessage>::start(config).await.unwrap();
    let handle = node.handle();
    let addr = node.local_addr().unwrap();
    TestNode { node, handle, addr }
}

/// Waits (at most 10 s, a safety net) for the first event matching `pred`.
pub async fn wait_for<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    mut pred: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pred(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("expected event did not come within 10 s")
}

/// Sends one app message from `a` to `b` over their connection and checks it arrives.
pub async fn assert_exchange(a: &NodeHandle<RawMessage>, b: &NodeHandle<RawMessage>, tag: u16) {
    let to_b = a
        .connections()
        .await
        .into_iter()
        .find(|c| c.info.peer_id == b.peer_id())
        .expect("a is connected to b");
    let from_a = b
        .connections()
        .await
        .into_iter()
        .find(|c| c.info.peer_id == a.peer_id())
        .expect("b is connected to a");
    let msg = RawMessage {
        tag,
        body: vec![7; 100],
    };
    assert!(to_b.send(&msg).await);
    let got = tokio::time::timeout(Duration::from_secs(10), from_a.recv())
        .await
        .expect("message within 10 s");
    assert_eq!(got, Some(msg));
}

/// The reason of the next `ConnectionClosed` event.
pub async fn next_close_reason(
    events: &mut broadcast::Receiver<NodeEvent>,
) -> peerpool::connection::CloseReason {
    wait_for(events, |e| match e {
        NodeEvent::ConnectionClosed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await
}

/// The peer of the next `ConnectionEstablished` event.
pub async fn next_established_peer(
    events: &mut broadcast::Receiver<NodeEvent>,
) -> peerpool_proto::identity::PeerId {
    wait_for(events, |e| match e {
        NodeEvent::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
        _ => None,
    })
    .await
}

/// The error of the next `HandshakeFailed` event.
pub async fn next_handshake_error(
    events: &mut broadcast::Receiver<NodeEvent>,
) -> Arc<peerpool::node::ConnectError> {
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
