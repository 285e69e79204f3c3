//! A long run of many real nodes with churn, partitions and healing, checked against the
//! node's invariants all along (issue 11, "soak"). It runs on a [`Cluster`] (virtual time:
//! hours cost minutes), seeded: the same [`Soak`] gives the same run.
//!
//! Every `check_every`, each node that is up is audited ([`peerpool::Node::audit`]: no
//! more connections than `max_connections`, no point or peer Running without a
//! connection, no stuck attempt, no dial to a greylisted address, the connections one can
//! send on are the policy's). Every `churn_every`, a share of the nodes crash (their
//! connections break with no Disconnect; they lose what they had not saved) and come back
//! `down_for` later on what they had saved. Every `partition_every`, the network splits
//! in two random halves for `partition_for`, then heals.

use crate::cluster::Cluster;
use peerpool::NodeConfig;
use peerpool_proto::message::RawMessage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Soak {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Virtual time to run.
    pub duration: Duration,
    /// How often every node is audited.
    pub check_every: Duration,
    /// A round of crashes every this often.
    pub churn_every: Duration,
    /// Share of the nodes crashed in a round (at least one).
    pub churn_fraction: f64,
    /// How long a crashed node stays down.
    pub down_for: Duration,
    /// A partition starts this often …
    pub partition_every: Duration,
    /// … and lasts this long.
    pub partition_for: Duration,
    /// Each node broadcasts a 64-byte message this often (`None`: no traffic).
    pub traffic_every: Option<Duration>,
    /// Every node's `min_connections` and `max_connections`.
    pub connections: (usize, usize),
    /// No crash nor partition in the last stretch of the run, so the network can settle
    /// before the end (nodes isolated at the end are counted).
    pub settle: Duration,
}

impl Soak {
    /// `nodes` nodes for `duration`: audits every 5 s, 5 % of the nodes crash every 2
    /// minutes for 30 s, a 2-minute partition every 30 minutes, a broadcast per node every
    /// 30 s, 4 to 12 connections per node, a quiet last minute.
    pub fn new(nodes: usize, duration: Duration, seed: u64) -> Self {
        Soak {
            nodes,
            seed,
            duration,
            check_every: Duration::from_secs(5),
            churn_every: Duration::from_secs(120),
            churn_fraction: 0.05,
            down_for: Duration::from_secs(30),
            partition_every: Duration::from_secs(1800),
            partition_for: Duration::from_secs(120),
            traffic_every: Some(Duration::from_secs(30)),
            connections: (4, 12),
            settle: Duration::from_secs(60),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Node audits made.
    pub audits: u64,
    /// Broken invariants found, in total.
    pub violations: u64,
    /// The first broken invariants, stamped with virtual time and node.
    pub first_violations: Vec<String>,
    /// Nodes crashed and restarted.
    pub restarts: u64,
    /// Partitions made (and healed).
    pub partitions: u64,
    /// The largest connection count any node had at an audit.
    pub most_connections: usize,
    /// Nodes up with no connection at the end.
    pub isolated_at_end: usize,
    /// Application messages received by all nodes.
    pub messages_received: u64,
    /// Virtual time run.
    pub simulated: Duration,
    /// Real time it took.
    pub real: Duration,
}

fn adjust(s: &Soak) -> impl Fn(&mut NodeConfig) + '_ {
    move |c: &mut NodeConfig| {
        c.pool.min_connections = s.connections.0;
        c.pool.max_connections = s.connections.1;
        c.policy.peers_file_interval = Some(Duration::from_secs(60));
    }
}

/// Runs `s` to its end. Call it inside a paused, single-threaded runtime
/// ([`Cluster::runtime`]).
///
/// Errors: a node could not start.
pub async fn run_soak(s: &Soak) -> Result<SoakReport, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let t0 = tokio::time::Instant::now();
    let mut cluster = Cluster::new(s.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed ^ 0x50a6);
    let mut report = SoakReport::default();
    // Each node knows three others at start, chosen at random.
    for _ in 0..s.nodes {
        cluster.spawn(adjust(s)).await?;
    }
    for i in 0..s.nodes {
        for _ in 0..3 {
            let j = rng.random_range(0..s.nodes);
            if j != i {
                let m = cluster.member(j);
                cluster.node(i).add_peer(m.point(), Some(m.peer_id())).await;
            }
        }
    }
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut up = vec![true; s.nodes];
    let mut back_at: Vec<(Duration, usize)> = Vec::new();
    let mut receivers: Vec<Option<tokio::task::JoinHandle<()>>> = Vec::new();
    for i in 0..s.nodes {
        receivers.push(Some(spawn_receiver(&cluster, i, received.clone())));
    }
    let mut next_check = Duration::ZERO;
    let mut next_churn = s.churn_every;
    let mut next_partition = s.partition_every;
    let mut heal_at: Option<Duration> = None;
    let mut next_traffic = s.traffic_every;
    let step = [s.check_every, s.churn_every, s.down_for, s.partition_for]
        .into_iter()
        .chain(s.traffic_every)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        let now = t0.elapsed();
        if now >= s.duration {
            break;
        }
        if now >= next_check {
            next_check += s.check_every;
            for i in (0..s.nodes).filter(|i| up[*i]) {
                let node = cluster.node(i);
                report.audits += 1;
                report.most_connections = report.most_connections.max(node.connections().len());
                for v in node.audit().await {
                    report.violations += 1;
                    if report.first_violations.len() < 20 {
                        report
                            .first_violations
                            .push(format!("{:>7} s n{i:03}: {v}", now.as_secs()));
                    }
                }
            }
        }
        if let Some(every) = s.traffic_every {
            if next_traffic.is_some_and(|t| now >= t) {
                next_traffic = Some(now + every);
                for i in (0..s.nodes).filter(|i| up[*i]) {
                    let body = vec![i as u8; 64];
                    cluster
                        .node(i)
                        .broadcast(&RawMessage { tag: 0x7f00, body }, |_| false);
                }
            }
        }
        let faults = now + s.settle < s.duration;
        if faults && now >= next_churn {
            next_churn += s.churn_every;
            let count = ((s.nodes as f64 * s.churn_fraction).round() as usize).max(1);
            let mut candidates: Vec<usize> = (0..s.nodes).filter(|i| up[*i]).collect();
            candidates.shuffle(&mut rng);
            for i in candidates.into_iter().take(count) {
                if let Some(r) = receivers[i].take() {
                    r.abort();
                }
                cluster.crash(i).await;
                up[i] = false;
                back_at.push((now + s.down_for, i));
            }
        }
        let mut due = Vec::new();
        back_at.retain(|(at, i)| {
            let ready = now >= *at;
            if ready {
                due.push(*i);
            }
            !ready
        });
        for i in due {
            cluster.recover(i, adjust(s)).await?;
            receivers[i] = Some(spawn_receiver(&cluster, i, received.clone()));
            up[i] = true;
            report.restarts += 1;
        }
        if heal_at.is_some_and(|t| now >= t) {
            cluster.heal();
            heal_at = None;
        }
        if faults && heal_at.is_none() && now >= next_partition {
            next_partition += s.partition_every;
            let mut all: Vec<usize> = (0..s.nodes).collect();
            all.shuffle(&mut rng);
            let (a, b) = all.split_at(s.nodes / 2);
            cluster.partition(a, b);
            heal_at = Some(now + s.partition_for);
            report.partitions += 1;
        }
        tokio::time::sleep(step).await;
    }
    report.isolated_at_end = (0..s.nodes)
        .filter(|i| up[*i] && cluster.node(*i).connections().is_empty())
        .count();
    report.messages_received = received.load(std::sync::atomic::Ordering::Relaxed);
    for r in receivers.into_iter().flatten() {
        r.abort();
    }
    cluster.shutdown().await;
    report.simulated = t0.elapsed();
    report.real = started.elapsed();
    Ok(report)
}

fn spawn_receiver(
    cluster: &Cluster,
    i: usize,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let node = cluster.node(i).clone();
    tokio::spawn(async move {
        while node.recv_any().await.is_some() {
            received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
}
