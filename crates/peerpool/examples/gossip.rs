//! A small application on peerpool: nodes on 127.0.0.x that gossip lines of text.
//!
//! `cargo run --release -p peerpool --example gossip [NODES] [MESSAGES]` (default 6 and 3).
//!
//! It shows the whole embedding API: an application message type ([`AppMessage`]), the
//! configuration and the node's start over TCP, the maintenance finding peers from one
//! bootstrap point, the event stream, receiving from every connection (`recv_any`),
//! flooding with `broadcast`, the connection manager (tagging the peers that bring news,
//! protecting the bootstrap node), queries (stats, peers, tag info) and a clean shutdown.
//!
//! Every node announces `MESSAGES` lines; each node forwards a line it has not seen to
//! every peer but the one it came from. The run ends when every node has every line.

use peerpool::{Node, NodeConfig, NodeEvent};
use peerpool_proto::encoding::DecodeError;
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One line of gossip: who first said it, its number there, the text. Tag 0x2000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gossip {
    /// The node that said it first.
    pub origin: u16,
    /// Its number at that node.
    pub seq: u32,
    /// The text.
    pub text: String,
}

impl AppMessage for Gossip {
    const MAX_SIZE: usize = 4096;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0x2000u16.to_be_bytes());
        out.extend_from_slice(&self.origin.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.text.as_bytes());
    }

    fn decode(tag: u16, body: &[u8]) -> Result<Self, DecodeError> {
        if tag != 0x2000 {
            return Err(DecodeError::UnknownTag {
                what: "gossip",
                tag,
            });
        }
        if body.len() < 6 {
            return Err(DecodeError::TooShort {
                what: "gossip",
                len: body.len(),
                min: 6,
            });
        }
        let (head, text) = body.split_at(6);
        Ok(Gossip {
            origin: u16::from_be_bytes([head[0], head[1]]),
            seq: u32::from_be_bytes([head[2], head[3], head[4], head[5]]),
            text: String::from_utf8(text.to_vec())
                .map_err(|_| DecodeError::InvalidUtf8("gossip text"))?,
        })
    }
}

/// How a run went.
#[derive(Debug)]
pub struct Report {
    /// Lines each node received (its own included), by node.
    pub delivered: Vec<usize>,
    /// Lines every node should have: nodes × messages.
    pub expected: usize,
    /// From the first line sent to the last one delivered.
    pub elapsed: Duration,
    /// Connections of each node at the end.
    pub connections: Vec<usize>,
}

fn address(i: usize) -> SocketAddr {
    // 127.0.0.2, 127.0.0.3, …: each node its own address; the OS picks the port.
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)), 0)
}

async fn start(i: usize) -> Result<Node<Gossip>, Box<dyn std::error::Error>> {
    let pow = PowTarget::new(0.0)?;
    let identity = Identity::generate(&pow, &mut rand::rng());
    let mut config = NodeConfig::new(Arc::new(identity), "GOSSIP");
    config.listen_addr = Some(address(i));
    config.pow_target = pow;
    // About four peers each; the maintenance finds them.
    config.set_connections(4);
    Ok(Node::<Gossip>::start(config.validate()?).await?)
}

/// Receives, counts and forwards lines on `node` until it stops; `seen` holds what it has
/// had, `progress` tells the count.
fn serve(
    node: Node<Gossip>,
    seen: Arc<Mutex<HashSet<(u16, u32)>>>,
    progress: watch::Sender<usize>,
) {
    tokio::spawn(async move {
        let cm = node.conn_manager();
        while let Some(got) = node.recv_any().await {
            let key = (got.message.origin, got.message.seq);
            let new = seen.lock().map(|mut s| s.insert(key)).unwrap_or(false);
            if !new {
                continue;
            }
            // Peers that bring news are worth keeping: the manager trims the others first.
            let _ = cm.upsert_tag(got.peer_id, "news", |v| v + 1).await;
            cm.record_useful(got.peer_id).await;
            let from = got.peer_id;
            node.broadcast(&got.message, |p: &PeerId| *p == from);
            progress.send_modify(|n| *n += 1);
        }
    });
}

/// Runs `nodes` nodes that each announce `messages` lines; returns when every node has
/// every line, or after `limit`.
///
/// Errors: a node cannot start (address in use, …).
pub async fn run(
    nodes: usize,
    messages: usize,
    limit: Duration,
) -> Result<Report, Box<dyn std::error::Error>> {
    let mut all = Vec::new();
    for i in 0..nodes {
        all.push(start(i).await?);
    }
    let bootstrap = Point::from(all[0].local_addr().ok_or("node 0 does not listen")?);
    let mut states = Vec::new();
    for (i, node) in all.iter().enumerate() {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let (tx, rx) = watch::channel(0usize);
        serve(node.clone(), seen.clone(), tx.clone());
        let events = node.events();
        if i > 0 {
            // Everyone knows the bootstrap node, and keeps it (a trusted point, protected).
            node.add_peer(bootstrap, None).await;
            let _ = node
                .conn_manager()
                .protect(all[0].peer_id(), "bootstrap")
                .await;
        }
        node.activate().await;
        states.push((seen, tx, rx, events));
    }
    // Wait until every node but the bootstrap has a connection (to node 0 at least, so
    // the graph is connected).
    for (_, _, _, events) in states.iter_mut().skip(1) {
        loop {
            match events.recv().await {
                Ok(NodeEvent::ConnectionEstablished { .. }) => break,
                Ok(_) | Err(peerpool::EventError::Lagged(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let started = Instant::now();
    for (i, node) in all.iter().enumerate() {
        for seq in 0..messages {
            let line = Gossip {
                origin: i as u16,
                seq: seq as u32,
                text: format!("line {seq} from node {i}"),
            };
            let (seen, tx, _, _) = &states[i];
            if seen
                .lock()
                .map(|mut s| s.insert((line.origin, line.seq)))
                .unwrap_or(false)
            {
                tx.send_modify(|n| *n += 1);
            }
            node.broadcast(&line, |_| false);
        }
    }
    let expected = nodes * messages;
    let wait_all = async {
        for (_, _, rx, _) in states.iter_mut() {
            let _ = rx.wait_for(|n| *n >= expected).await;
        }
    };
    let _ = tokio::time::timeout(limit, wait_all).await;
    let elapsed = started.elapsed();
    let delivered = states.iter().map(|(_, _, rx, _)| *rx.borrow()).collect();
    let connections = all.iter().map(|n| n.connections().len()).collect();
    // What the embedding API tells about a node.
    let stats = all[0].stats().await;
    let peers = all[0].peers().await.len();
    println!(
        "node 0: {} connections, {} known peers, {} bytes sent, {} received",
        stats.connections, peers, stats.io.total_sent, stats.io.total_recv
    );
    if let Some(node1) = all.get(1) {
        if let Some(info) = node1.conn_manager().tag_info(all[0].peer_id()).await {
            println!(
                "node 1's view of node 0: tags {:?}, protected by {:?}",
                info.tags, info.protected_by
            );
        }
    }
    for node in &all {
        node.shutdown().await;
    }
    Ok(Report {
        delivered,
        expected,
        elapsed,
        connections,
    })
}

#[allow(dead_code)] // the test of this example calls `run` only
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(6)
        .clamp(2, 200);
    let messages = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let report = run(nodes, messages, Duration::from_secs(30)).await?;
    println!(
        "{} nodes, {} lines each: delivered {:?} of {} in {:.1} ms; connections {:?}",
        nodes,
        messages,
        report.delivered,
        report.expected,
        report.elapsed.as_secs_f64() * 1e3,
        report.connections
    );
    if report.delivered.iter().all(|d| *d == report.expected) {
        println!("every node has every line");
        Ok(())
    } else {
        Err("some lines were not delivered".into())
    }
}
