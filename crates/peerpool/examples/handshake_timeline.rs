//! Where the time of one sequential connect goes: the median time from the `connect` call
//! to each event on both sides, over 300 connects on loopback.
//! `cargo run --release -p peerpool --example handshake_timeline` (`EXTRA=3` adds idle nodes,
//! as in the connection benchmark).
#![allow(clippy::unwrap_used)]

use peerpool::{Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use peerpool_proto::pool::P2pEvent;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn node(listen: bool) -> Node<RawMessage> {
    let target = PowTarget::new(0.0).unwrap();
    let identity = Arc::new(Identity::generate(&target, &mut rand::rng()));
    let mut config = NodeConfig::new(identity, "BENCH");
    config.pow_target = target;
    config.policy.bootstrap_on_connect = false;
    config.pool.min_connections = 0;
    config.listen_addr = listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let n = Node::start(config.validate().unwrap()).await.unwrap();
    n.activate().await;
    n
}

type Log = Arc<Mutex<Vec<(Instant, String)>>>;

fn record(node: &Node<RawMessage>, side: &'static str, log: Log) {
    let mut events = node.events();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            let name = match e {
                NodeEvent::Pool(P2pEvent::OutgoingConnection { .. }) => "outgoing",
                NodeEvent::Pool(P2pEvent::IncomingConnection { .. }) => "incoming",
                NodeEvent::Pool(P2pEvent::AcceptingRequest { .. }) => "accepting",
                NodeEvent::ConnectionEstablished { .. } => "established",
                NodeEvent::ConnectionClosed { .. } => "closed",
                _ => continue,
            };
            log.lock()
                .unwrap()
                .push((Instant::now(), format!("{side} {name}")));
        }
    });
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = node(true).await;
        let dialer = node(false).await;
        // EXTRA idle nodes, as in the connection benchmark.
        let extra = std::env::var("EXTRA")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut idle = Vec::new();
        for _ in 0..extra {
            idle.push(node(false).await);
        }
        let point = Point::from(listener.local_addr().unwrap());
        let log: Log = Arc::default();
        record(&listener, "listener", log.clone());
        record(&dialer, "dialer", log.clone());
        let mut deltas: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for _ in 0..300 {
            log.lock().unwrap().clear();
            let t0 = Instant::now();
            dialer.connect(point, None).await.unwrap();
            let t1 = Instant::now();
            deltas
                .entry("~connect returned".into())
                .or_default()
                .push(t1 - t0);
            // Let both sides settle, then close and wait for both closes.
            loop {
                let n = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, s)| s.ends_with("established"))
                    .count();
                if n == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            for c in dialer.connections() {
                c.close();
            }
            loop {
                let n = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, s)| s.ends_with("closed"))
                    .count();
                if n == 2 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            for (t, s) in log.lock().unwrap().iter() {
                if !s.ends_with("closed") {
                    deltas
                        .entry(s.clone())
                        .or_default()
                        .push(t.saturating_duration_since(t0));
                }
            }
        }
        let mut rows: Vec<(Duration, String)> = deltas
            .into_iter()
            .map(|(k, mut v)| {
                v.sort();
                (v[v.len() / 2], k)
            })
            .collect();
        rows.sort();
        for (d, k) in rows {
            println!("{:>8.1} µs  {k}", d.as_secs_f64() * 1e6);
        }
    });
}
