//! How fast a network started from 3 bootstrap nodes gets every node within its bounds,
//! and how many dials it spends per connection, with peerpool's maintenance and with
//! octez's (every candidate dialled at once, a fixed 5 s between rounds, woken only below
//! `min_connections`), in the same run. Real node code on the in-memory network, virtual
//! time (see `Cluster`).
//!
//! `cargo run --release -p peerpool-sim --example convergence [nodes...] [--connections N]
//! [--seeds K]`

use peerpool::{EventError, NodeConfig, NodeEvent};
use peerpool_proto::handshake::Direction;
use peerpool_proto::policy::MaintenanceConfig;
use peerpool_proto::pool::P2pEvent;
use peerpool_sim::Cluster;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a network gets to settle (virtual).
const LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Counts {
    dials: AtomicU64,
    outgoing_established: AtomicU64,
    outgoing_failed: AtomicU64,
    lagged: AtomicU64,
}

struct Outcome {
    converged: Option<Duration>,
    dials: u64,
    established: u64,
    failed: u64,
    connections: (usize, usize, f64),
    real: Duration,
}

async fn count(mut events: peerpool::Events, counts: Arc<Counts>) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(EventError::Lagged(n)) => {
                counts.lagged.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(_) => return,
        };
        let counter = match event {
            NodeEvent::Pool(P2pEvent::OutgoingConnection { .. }) => &counts.dials,
            NodeEvent::ConnectionEstablished {
                direction: Direction::Outgoing,
                ..
            } => &counts.outgoing_established,
            NodeEvent::HandshakeFailed {
                direction: Direction::Outgoing,
                ..
            } => &counts.outgoing_failed,
            _ => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run(
    nodes: usize,
    n: usize,
    octez: bool,
    seed: u64,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut cl = Cluster::new(seed);
    let counts = Arc::new(Counts::default());
    let configure = move |c: &mut NodeConfig| {
        c.set_connections(n);
        c.policy.maintenance = if octez {
            MaintenanceConfig::octez()
        } else {
            MaintenanceConfig::default()
        };
        c.policy.maintenance.expected_connections = Some(n);
    };
    for _ in 0..nodes {
        let idx = cl.spawn(configure).await?;
        tokio::spawn(count(cl.node(idx).events(), counts.clone()));
    }
    let t0 = tokio::time::Instant::now();
    for i in 0..nodes {
        for b in (0..3.min(nodes)).filter(|b| *b != i) {
            let point = cl.member(b).point();
            let id = cl.member(b).peer_id();
            cl.node(i).add_peer(point, Some(id)).await;
        }
    }
    let bounds = cl.node(0).bounds().await.ok_or("node 0 stopped")?;
    // A node alone (or with fewer others than its minimum) cannot reach min_threshold.
    let low = bounds.min_threshold.min(nodes - 1);
    let converged = cl
        .run_until(Duration::from_millis(100), LIMIT, |cl| {
            cl.connections()
                .iter()
                .all(|c| (low..=bounds.max_threshold).contains(c))
        })
        .await
        .map(|_| t0.elapsed());
    let conns = cl.connections();
    let summary = (
        conns.iter().copied().min().unwrap_or(0),
        conns.iter().copied().max().unwrap_or(0),
        conns.iter().sum::<usize>() as f64 / conns.len().max(1) as f64,
    );
    cl.shutdown().await;
    let lagged = counts.lagged.load(Ordering::Relaxed);
    if lagged > 0 {
        return Err(format!("{lagged} events lost: the counts would be wrong").into());
    }
    Ok(Outcome {
        converged,
        dials: counts.dials.load(Ordering::Relaxed),
        established: counts.outgoing_established.load(Ordering::Relaxed),
        failed: counts.outgoing_failed.load(Ordering::Relaxed),
        connections: summary,
        real: started.elapsed(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = Vec::new();
    let mut n = 8;
    let mut seeds = 3u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connections" => {
                n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--connections N")?;
            }
            "--seeds" => {
                seeds = it.next().and_then(|v| v.parse().ok()).ok_or("--seeds K")?;
            }
            other => sizes.push(other.parse().map_err(|_| format!("not a size: {other}"))?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![100, 500];
    }
    println!("--connections {n}");
    println!(
        "| nodes | policy | seed | all within bounds after (virtual) | dials | failed | \
         outgoing established | dials per connection | connections min / max / mean | real time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for nodes in sizes {
        for seed in 1..=seeds {
            for octez in [false, true] {
                let rt = Cluster::runtime()?;
                let o = rt.block_on(run(nodes, n, octez, seed))?;
                println!(
                    "| {nodes} | {} | {seed} | {} | {} | {} | {} | {:.2} | {} / {} / {:.1} | {:.1} s |",
                    if octez { "octez" } else { "peerpool" },
                    o.converged.map_or(format!("not within {} s", LIMIT.as_secs()), |d| {
                        format!("{:.1} s", d.as_secs_f64())
                    }),
                    o.dials,
                    o.failed,
                    o.established,
                    o.dials as f64 / o.established.max(1) as f64,
                    o.connections.0,
                    o.connections.1,
                    o.connections.2,
                    o.real.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
