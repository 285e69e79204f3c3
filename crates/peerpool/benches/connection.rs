//! Connection costs over loopback, each against a plain-TCP baseline measured in the same
//! run (docs/BENCHMARKS.md):
//!
//! - `transfer_64k/peerpool`: two `Node<RawMessage>`, one connection, `MESSAGES` app
//!   messages with a 64 KiB body sent one way with `Connection::send`, timed until
//!   the last is returned by `Connection::recv`.
//! - `transfer_64k/tcp`: the same number of bytes over a plain `tokio::net::TcpStream`.
//! - `handshake/peerpool_connect`: `Node::connect` to a listening node (TCP connect
//!   and the whole handshake), sequential; each connection is closed, and both nodes have
//!   seen it close, before the next one (outside the timing).
//! - `handshake/peerpool_connect_x4`: four dialer nodes connect at once.
//! - `handshake/tcp_connect`: a plain TCP connect to a listener on the same machine.
//!
//! `cargo bench -p peerpool --bench connection`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peerpool::{Events, Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Body bytes of one application message.
const BODY_LEN: usize = 64 * 1024;
/// Messages per criterion iteration (2 MiB of bodies).
const MESSAGES: u64 = 32;
/// Concurrent dialers in `peerpool_connect_x4`.
const DIALERS: usize = 4;
/// A non-control application tag.
const APP_TAG: u16 = 0x0100;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn start_node(listen: bool) -> Node<RawMessage> {
    let target = PowTarget::new(0.0).unwrap();
    let identity = Arc::new(Identity::generate(&target, &mut rand::rng()));
    let mut config = NodeConfig::new(identity, "PEERPOOL_BENCH");
    config.pow_target = target;
    config.policy.bootstrap_on_connect = false;
    config.pool.max_connections = 1000;
    config.pool.min_connections = 0;
    // Only the connections the bench makes: no maintenance dials, Bootstraps or swaps.
    config.policy.maintenance.enabled = false;
    // Every dialer connects from 127.0.0.1: let the 4 concurrent handshakes in.
    config.policy.max_incoming_handshakes_per_ip = 8;
    config.listen_addr = listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let node = Node::start(config.validate().unwrap()).await.unwrap();
    node.activate().await;
    node
}

/// Waits (at most 10 s) for an event matching `pred`.
async fn wait_for(events: &mut Events, pred: impl Fn(&NodeEvent) -> bool) -> NodeEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => {}
                Err(e) => panic!("node events: {e}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a node event")
}

fn is_established(ev: &NodeEvent, peer: PeerId) -> bool {
    matches!(ev, NodeEvent::ConnectionEstablished { peer_id, .. } if *peer_id == peer)
}

fn is_closed(ev: &NodeEvent, peer: PeerId) -> bool {
    matches!(ev, NodeEvent::ConnectionClosed { peer_id, .. } if *peer_id == peer)
}

fn transfer(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("transfer_64k");
    group.throughput(Throughput::Bytes(MESSAGES * BODY_LEN as u64));

    // Encrypted: node B dials node A, B sends, A receives.
    {
        let (a, b, tx, rx) = rt.block_on(async {
            let a = start_node(true).await;
            let b = start_node(false).await;
            let point = Point::from(a.local_addr().unwrap());
            let mut a_events = a.events();
            b.connect(point, None).await.unwrap();
            let tx = b.connections().pop().unwrap();
            if a.connections().is_empty() {
                wait_for(&mut a_events, |ev| is_established(ev, b.peer_id())).await;
            }
            let rx = a.connections().pop().unwrap();
            (a, b, tx, rx)
        });
        let message = Arc::new(RawMessage {
            tag: APP_TAG,
            body: (0..BODY_LEN).map(|i| i as u8).collect(),
        });
        group.bench_function("peerpool", |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let total = iters * MESSAGES;
                    let start = Instant::now();
                    let sender = {
                        let (tx, message) = (tx.clone(), message.clone());
                        tokio::spawn(async move {
                            for _ in 0..total {
                                tx.send(&message).await.expect("connection closed");
                            }
                        })
                    };
                    for _ in 0..total {
                        let got = rx.recv().await.expect("connection closed");
                        assert_eq!(got.body.len(), BODY_LEN);
                    }
                    let elapsed = start.elapsed();
                    sender.await.unwrap();
                    elapsed
                })
            })
        });
        rt.block_on(async {
            b.shutdown().await;
            a.shutdown().await;
        });
    }

    // Plain TCP, same bytes.
    {
        let (writer, mut reader) = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (client, (server, _)) = (client.unwrap(), server.unwrap());
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            (client, server)
        });
        let mut writer = Some(writer);
        let body: Vec<u8> = (0..BODY_LEN).map(|i| i as u8).collect();
        let body = Arc::new(body);
        let mut buf = vec![0u8; BODY_LEN];
        group.bench_function("tcp", |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let total = iters * MESSAGES;
                    let start = Instant::now();
                    let sender = {
                        let (mut w, body) = (writer.take().unwrap(), body.clone());
                        tokio::spawn(async move {
                            for _ in 0..total {
                                w.write_all(&body).await.unwrap();
                            }
                            w
                        })
                    };
                    for _ in 0..total {
                        reader.read_exact(&mut buf).await.unwrap();
                    }
                    let elapsed = start.elapsed();
                    writer = Some(sender.await.unwrap());
                    elapsed
                })
            })
        });
    }
    group.finish();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// One dialer: its node, its peer id, its event subscription.
struct Dialer {
    node: Node<RawMessage>,
    peer_id: PeerId,
    events: Events,
}

/// Waits until `events` reported `kind` (established or closed) for every peer in `peers`.
async fn wait_all(events: &mut Events, kind: fn(&NodeEvent, PeerId) -> bool, peers: &[PeerId]) {
    let mut seen = vec![false; peers.len()];
    while !seen.iter().all(|s| *s) {
        let ev = wait_for(events, |ev| peers.iter().any(|p| kind(ev, *p))).await;
        for (i, p) in peers.iter().enumerate() {
            seen[i] |= kind(&ev, *p);
        }
    }
}

/// After `dialers` connected to the listener: waits until the listener has registered
/// every connection, closes them from the dialer side, and waits until both sides saw
/// them close, so the next connect is not refused as "already connected".
///
/// Closing before the listener registered the connection would hit a race in the node
/// (docs/BENCHMARKS.md, "Problem found"): the listener keeps a dead connection.
async fn close_and_wait(
    dialers: &mut [Dialer],
    listener_peer: PeerId,
    listener_events: &mut Events,
) {
    let peers: Vec<PeerId> = dialers.iter().map(|d| d.peer_id).collect();
    wait_all(listener_events, is_established, &peers).await;
    for d in dialers.iter_mut() {
        wait_for(&mut d.events, |ev| is_established(ev, listener_peer)).await;
        for c in d.node.connections() {
            c.close();
        }
    }
    for d in dialers.iter_mut() {
        wait_for(&mut d.events, |ev| is_closed(ev, listener_peer)).await;
    }
    wait_all(listener_events, is_closed, &peers).await;
}

fn median_and_spread(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        // The benchmark was filtered out.
        return "n = 0".to_string();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    format!(
        "n = {}, median = {:.1} µs, p10 = {:.1} µs, p90 = {:.1} µs",
        samples.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.1).as_secs_f64() * 1e6,
        at(0.9).as_secs_f64() * 1e6,
    )
}

fn handshake(c: &mut Criterion) {
    let rt = runtime();
    let (listener, mut listener_events, mut dialers) = rt.block_on(async {
        let listener = start_node(true).await;
        let events = listener.events();
        let mut dialers = Vec::new();
        for _ in 0..DIALERS {
            let node = start_node(false).await;
            let events = node.events();
            let peer_id = node.peer_id();
            dialers.push(Dialer {
                node,
                peer_id,
                events,
            });
        }
        (listener, events, dialers)
    });
    let point = Point::from(listener.local_addr().unwrap());
    let listener_peer = listener.peer_id();
    let mut group = c.benchmark_group("handshake");

    // Sequential: one dialer, one connect at a time.
    let samples = Mutex::new(Vec::new());
    group.throughput(Throughput::Elements(1));
    group.bench_function("peerpool_connect", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let dialer = &mut dialers[..1];
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let peer = dialer[0].node.connect(point, None).await.unwrap();
                    let took = start.elapsed();
                    assert_eq!(peer, listener_peer);
                    total += took;
                    samples.lock().unwrap().push(took);
                    close_and_wait(dialer, listener_peer, &mut listener_events).await;
                }
                total
            })
        })
    });

    // Concurrent: DIALERS nodes connect at once; the time until all are established.
    group.throughput(Throughput::Elements(DIALERS as u64));
    group.bench_function(format!("peerpool_connect_x{DIALERS}"), |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let tasks: Vec<_> = dialers
                        .iter()
                        .map(|d| {
                            let h = d.node.clone();
                            tokio::spawn(async move { h.connect(point, None).await.unwrap() })
                        })
                        .collect();
                    for t in tasks {
                        assert_eq!(t.await.unwrap(), listener_peer);
                    }
                    total += start.elapsed();
                    close_and_wait(&mut dialers, listener_peer, &mut listener_events).await;
                }
                total
            })
        })
    });

    // Baseline: a plain TCP connect to a listener that accepts and drops.
    let tcp_samples = Mutex::new(Vec::new());
    let (tcp_addr, acceptor) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                drop(s);
            }
        });
        (addr, acceptor)
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("tcp_connect", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let s = TcpStream::connect(tcp_addr).await.unwrap();
                    let took = start.elapsed();
                    total += took;
                    tcp_samples.lock().unwrap().push(took);
                    drop(s);
                }
                total
            })
        })
    });
    group.finish();
    acceptor.abort();

    println!(
        "handshake/peerpool_connect individual connects: {}",
        median_and_spread(&mut samples.lock().unwrap())
    );
    println!(
        "handshake/tcp_connect individual connects: {}",
        median_and_spread(&mut tcp_samples.lock().unwrap())
    );

    rt.block_on(async {
        for d in &dialers {
            d.node.shutdown().await;
        }
        listener.shutdown().await;
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = transfer, handshake
}
criterion_main!(benches);
