//! The peerpool stack, through its public API only: `Node<RawMessage>` over TCP on
//! 127.0.0.1, identities with a zero proof-of-work target, no automatic dialing.

use crate::{Concurrent, Cycles, Transfer, MESSAGE_BYTES};
use peerpool::{Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Per peer: connections established so far, as one node's events report them.
type Counts = HashMap<PeerId, u64>;

/// A node and what its events said.
struct Peer {
    node: Node<RawMessage>,
    counts: watch::Receiver<Counts>,
}

impl Peer {
    async fn start(listen: bool, max_connections: usize) -> Peer {
        let target = PowTarget::new(0.0).expect("0 is a valid target");
        let identity = Arc::new(Identity::generate(&target, &mut rand::rng()));
        let mut config = NodeConfig::new(identity, "PEERPOOL_COMPARE");
        config.pow_target = target;
        config.listen_addr = listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        config.pool.max_connections = max_connections;
        config.pool.min_connections = 0;
        // Only the connections the benchmark makes: no maintenance, Bootstrap or trimming.
        config.policy.bootstrap_on_connect = false;
        config.policy.maintenance.enabled = false;
        config.policy.conn_manager.enabled = false;
        // Every dialer connects from 127.0.0.1.
        config.policy.max_incoming_handshakes = 64;
        config.policy.max_incoming_handshakes_per_ip = 32;
        config.policy.max_incoming_handshakes_per_netgroup = Some(32);
        let config = config.validate().expect("a valid benchmark configuration");
        let node = Node::start(config).await.expect("the node starts");
        node.activate().await;
        let (tx, counts) = watch::channel(Counts::new());
        let mut events = node.events();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if let NodeEvent::ConnectionEstablished { peer_id, .. } = ev {
                    tx.send_modify(|c| *c.entry(peer_id).or_default() += 1);
                }
            }
        });
        Peer { node, counts }
    }

    fn point(&self) -> Point {
        Point::from(self.node.local_addr().expect("a listening node"))
    }

    /// Waits until this node has seen a connection with `peer` established.
    async fn established(&self, peer: PeerId) {
        let mut counts = self.counts.clone();
        counts
            .wait_for(|c| c.get(&peer).is_some_and(|n| *n > 0))
            .await
            .expect("the node's event task ended");
    }
}

/// One connect → established → closed on both sides cycle (`disconnect_and_wait`: both
/// nodes have forgotten the connection when it returns). Returns the time to established
/// (the dialer's `connect` returned).
async fn cycle(listener: &Peer, dialer: &Peer) -> f64 {
    let start = Instant::now();
    let peer = dialer
        .node
        .connect(listener.point(), None)
        .await
        .expect("connect");
    let established = start.elapsed().as_secs_f64();
    dialer
        .node
        .disconnect_and_wait(peer)
        .await
        .expect("the listener closes its end");
    established
}

/// One connection, `bytes` of 64 KiB messages one way.
pub async fn throughput(bytes: u64) -> Transfer {
    let listener = Peer::start(true, 100).await;
    let dialer = Peer::start(false, 100).await;
    let peer = dialer
        .node
        .connect(listener.point(), None)
        .await
        .expect("connect");
    listener.established(dialer.node.peer_id()).await;
    let tx = dialer.node.connection(&peer).expect("connected");
    let rx = listener
        .node
        .connection(&dialer.node.peer_id())
        .expect("connected");
    let message = Arc::new(RawMessage {
        tag: 0x0100,
        body: vec![0x5a; MESSAGE_BYTES - 2],
    });
    let count = bytes.div_ceil(MESSAGE_BYTES as u64);
    let (start, cpu) = (Instant::now(), crate::measure::cpu_time());
    let sender = tokio::spawn(async move {
        for _ in 0..count {
            tx.send(&message).await.expect("connection open");
        }
    });
    for _ in 0..count {
        rx.recv().await.expect("connection open");
    }
    let t = Transfer::since(start, cpu, count * MESSAGE_BYTES as u64);
    sender.await.expect("sender");
    dialer.node.shutdown().await;
    listener.node.shutdown().await;
    t
}

/// `n` cycles from one dialer.
pub async fn sequential(n: usize) -> Cycles {
    let listener = Peer::start(true, 100).await;
    let dialer = Peer::start(false, 100).await;
    let start = Instant::now();
    let mut established = Vec::with_capacity(n);
    for _ in 0..n {
        established.push(cycle(&listener, &dialer).await);
    }
    let c = Cycles::since(start, established);
    dialer.node.shutdown().await;
    listener.node.shutdown().await;
    c
}

/// `dialers` dialers at once, `each` cycles each.
pub async fn concurrent(dialers: usize, each: usize) -> Concurrent {
    let listener = Arc::new(Peer::start(true, 100).await);
    let mut nodes = Vec::new();
    for _ in 0..dialers {
        nodes.push(Arc::new(Peer::start(false, 100).await));
    }
    let start = Instant::now();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|d| {
            let (l, d) = (listener.clone(), d.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    cycle(&l, &d).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("dialer");
    }
    let c = Concurrent::since(start, dialers * each);
    for d in nodes {
        d.node.shutdown().await;
    }
    listener.node.shutdown().await;
    c
}

/// Resident bytes before and after the idle connections of a full mesh of `nodes` nodes
/// (`nodes·(nodes−1)/2` connections, both ends in this process; the nodes are started
/// before the first measure, so what a node costs by itself is not counted).
pub async fn idle_memory(nodes: usize) -> (u64, u64) {
    let mut mesh = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        mesh.push(Peer::start(true, nodes + 10).await);
    }
    let before = crate::settled_rss();
    for (i, a) in mesh.iter().enumerate() {
        for b in &mesh[i + 1..] {
            a.node.connect(b.point(), None).await.expect("connect");
            b.established(a.node.peer_id()).await;
        }
    }
    let after = crate::settled_rss();
    for p in &mesh {
        assert_eq!(p.node.connections().len(), nodes - 1);
    }
    (before, after)
}
