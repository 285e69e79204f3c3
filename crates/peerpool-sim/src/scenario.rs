//! A [`Scenario`]: N real peerpool nodes as turmoil hosts, each with its own address, its
//! own seeded identity and RNG, its peers file in a [`MemoryStore`] that survives its
//! crashes, run for a simulated duration with latency, loss, partitions and churn. The
//! run gives a [`Report`]: a trace of every node's events stamped with simulated time (the
//! same seed gives the same trace, byte for byte), each node's connection count over
//! time, and how much real time the simulated time cost.

use crate::transport::SimTransport;
use peerpool::clock::WallClock;
use peerpool::persist::MemoryStore;
use peerpool::{EventError, Node, NodeConfig, NodeEvent};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The port every simulated node listens on.
pub const PORT: u16 = 9732;

/// The simulated date at which every scenario starts (2026-01-01T00:00:00Z): fixed, so
/// runs do not depend on the day they happen.
pub const EPOCH_SECS: u64 = 1_767_225_600;

/// Who knows whom at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Each node trusts `degree` other nodes chosen at random (the sandbox's wiring).
    Random {
        /// Peers given to each node.
        degree: usize,
    },
    /// Every node trusts the first `bootstrap` nodes only, and learns the others.
    Bootstrap {
        /// Number of bootstrap nodes.
        bootstrap: usize,
    },
}

/// Hosts going down and coming back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// A round of churn every this often.
    pub every: Duration,
    /// Share of the nodes crashed in a round (at least one).
    pub fraction: f64,
    /// How long a crashed host stays down before it restarts with its data.
    pub down_for: Duration,
}

/// A network split: from `at` to `heal_at`, the first `split` nodes cannot reach the
/// others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partition {
    /// When it starts.
    pub at: Duration,
    /// When it heals.
    pub heal_at: Duration,
    /// Nodes `0..split` on one side, the rest on the other.
    pub split: usize,
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed of everything: identities, wiring, churn, the network's randomness, each
    /// node's RNG.
    pub seed: u64,
    /// Simulated time to run.
    pub duration: Duration,
    /// Simulation step: how far time moves per step (message delivery granularity).
    pub tick: Duration,
    /// Who knows whom at start.
    pub topology: Topology,
    /// Each node's `min_connections` and `max_connections`.
    pub min_connections: usize,
    /// See `min_connections`.
    pub max_connections: usize,
    /// Largest one-way latency of a message (exponentially distributed below it).
    pub max_latency: Duration,
    /// Probability that a link starts dropping messages (turmoil's fail rate).
    pub fail_rate: f64,
    /// Hosts crashing and restarting.
    pub churn: Option<Churn>,
    /// Network splits.
    pub partitions: Vec<Partition>,
    /// Every node broadcasts a small message this often.
    pub traffic: Option<Duration>,
    /// How often each node saves its peers file (what a crashed host finds on restart).
    pub peers_file_interval: Duration,
}

impl Scenario {
    /// The 16-node sandbox: each node trusts 3 others, 20 simulated seconds.
    pub fn sandbox(seed: u64) -> Self {
        Scenario {
            nodes: 16,
            seed,
            duration: Duration::from_secs(20),
            tick: Duration::from_millis(5),
            topology: Topology::Random { degree: 3 },
            min_connections: 4,
            max_connections: 12,
            max_latency: Duration::from_millis(50),
            fail_rate: 0.0,
            churn: None,
            partitions: Vec::new(),
            traffic: Some(Duration::from_millis(500)),
            peers_file_interval: Duration::from_secs(30),
        }
    }
}

/// A node's connection count at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Simulated time.
    pub at: Duration,
    /// Node index.
    pub node: usize,
    /// Its connections then.
    pub connections: usize,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every node's events, in the order they happened, each line stamped with simulated
    /// milliseconds and the node index.
    pub trace: Vec<String>,
    /// Each node's connection count at the end.
    pub connections: Vec<usize>,
    /// Connection counts whenever they changed.
    pub samples: Vec<Sample>,
    /// Application messages received, per node.
    pub received: Vec<u64>,
    /// Hosts crashed and restarted.
    pub restarts: usize,
    /// Simulated time run.
    pub simulated: Duration,
    /// Real time it took.
    pub real: Duration,
}

impl Report {
    /// Simulated seconds per real second.
    pub fn speed(&self) -> f64 {
        self.simulated.as_secs_f64() / self.real.as_secs_f64().max(1e-9)
    }

    /// The trace as one text.
    pub fn trace_text(&self) -> String {
        self.trace.join("\n")
    }
}

/// The address of node `i`: `10.(i % 250 + 1).(i / 250).1`, so the first 250 nodes each
/// have a netgroup (IPv4 /16) of their own, as hosts of a real network mostly do.
pub fn address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        (i % 250 + 1) as u8,
        ((i / 250) % 256) as u8,
        1,
    ))
}

/// The node index of an address made by [`address`].
pub fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            (a == 10 && b >= 1).then(|| usize::from(b - 1) + 250 * usize::from(c))
        }
        IpAddr::V6(_) => None,
    }
}

/// The identity of node `i` of a scenario seeded `seed` (no proof of work).
pub fn identity(seed: u64, i: usize) -> Arc<Identity> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
    // invariant: a difficulty of 0 is always valid.
    let target = PowTarget::new(0.0).unwrap_or_else(|_| unreachable!());
    Arc::new(Identity::generate(&target, &mut rng))
}

/// Wall-clock time of the simulation (its fixed start plus simulated time), so a node that
/// restarts reads the simulated date, not the day the test runs.
#[derive(Debug, Clone, Copy)]
struct SimClock;

impl WallClock for SimClock {
    fn since_epoch(&self) -> Duration {
        turmoil::since_epoch().unwrap_or(Duration::from_secs(EPOCH_SECS))
    }
}

/// State shared by the hosts and the runner (one thread runs everything, in a fixed order).
#[derive(Debug, Default)]
struct Shared {
    trace: Vec<String>,
    connections: Vec<usize>,
    samples: Vec<Sample>,
    received: Vec<u64>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// One line of trace for an event, or `None` for events too chatty to keep.
fn describe(event: &NodeEvent) -> Option<String> {
    Some(match event {
        NodeEvent::ConnectionEstablished {
            peer_id,
            remote_addr,
            direction,
            ..
        } => format!("established {peer_id} {remote_addr} {direction:?}"),
        NodeEvent::ConnectionClosed {
            peer_id, reason, ..
        } => format!("closed {peer_id}: {reason}"),
        NodeEvent::HandshakeFailed {
            remote_addr,
            direction,
            error,
        } => format!("failed {remote_addr} {direction:?}: {error}"),
        NodeEvent::IncomingRefused {
            remote_addr,
            reason,
        } => format!("refused {remote_addr}: {reason}"),
        NodeEvent::Pool(e) => format!("pool {e:?}"),
        other => format!("{other:?}"),
    })
}

fn node_config(s: &Scenario, i: usize) -> NodeConfig {
    let mut c = NodeConfig::new(identity(s.seed, i), "SIMNET");
    c.listen_addr = Some(SocketAddr::new(address(i), PORT));
    // invariant: 0 is a valid difficulty.
    c.pow_target = PowTarget::new(0.0).unwrap_or_else(|_| unreachable!());
    c.seed = Some(s.seed.wrapping_add(i as u64 + 1));
    c.pool.min_connections = s.min_connections;
    c.pool.max_connections = s.max_connections;
    // A sandbox's backoff: retries within seconds, not days.
    c.pool.reconnection.increase_cap = Duration::from_secs(10);
    c.pool.reconnection.disconnection_delay = Duration::from_secs(5);
    c.policy.peers_file_interval = Some(s.peers_file_interval);
    c.close_timeout = Duration::from_secs(1);
    c.event_capacity = 4096;
    c
}

/// Whom node `i` trusts at start.
fn wiring(s: &Scenario) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    (0..s.nodes)
        .map(|i| match s.topology {
            Topology::Random { degree } => {
                let mut others: Vec<usize> = (0..s.nodes).filter(|j| *j != i).collect();
                others.shuffle(&mut rng);
                others.truncate(degree.min(s.nodes.saturating_sub(1)));
                others
            }
            Topology::Bootstrap { bootstrap } => {
                (0..bootstrap.min(s.nodes)).filter(|j| *j != i).collect()
            }
        })
        .collect()
}

/// The software of host `i`: a node that runs until the host crashes or the run ends.
async fn host(
    s: Arc<Scenario>,
    i: usize,
    peers: Vec<usize>,
    store: MemoryStore,
    shared: Arc<Mutex<Shared>>,
) -> turmoil::Result {
    let config = node_config(&s, i).validate()?;
    let node = Node::<RawMessage>::builder(config)
        .transport(SimTransport)
        .store(Arc::new(store))
        .clock(Arc::new(SimClock))
        .start()
        .await?;
    let mut events = node.events();
    // What it found in its peers file (a restarted host finds what it saved).
    let known = node.stats().await.known_peer_ids;
    for j in peers {
        let point = Point::new(address(j), PORT);
        node.add_peer(point, Some(identity(s.seed, j).peer_id))
            .await;
    }
    node.activate().await;
    {
        let mut sh = lock(&shared);
        sh.connections[i] = 0;
        let line = format!(
            "{:>9} n{i:03} started, {known} peers known",
            sim_now().as_millis()
        );
        sh.trace.push(line);
    }
    let receiver = {
        let (node, shared) = (node.clone(), shared.clone());
        tokio::spawn(async move {
            while node.recv_any().await.is_some() {
                lock(&shared).received[i] += 1;
            }
        })
    };
    let traffic = s.traffic.map(|every| {
        let node = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let body = vec![i as u8; 64];
                node.broadcast(&RawMessage { tag: 0x7f00, body }, |_| false);
            }
        })
    });
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(EventError::Lagged(n)) => {
                lock(&shared)
                    .trace
                    .push(format!("{:>9} n{i:03} lagged {n}", sim_now().as_millis()));
                continue;
            }
            Err(_) => break,
        };
        let mut sh = lock(&shared);
        let delta: isize = match event {
            NodeEvent::ConnectionEstablished { .. } => 1,
            NodeEvent::ConnectionClosed { .. } => -1,
            _ => 0,
        };
        if delta != 0 {
            let n = sh.connections[i].saturating_add_signed(delta);
            sh.connections[i] = n;
            sh.samples.push(Sample {
                at: sim_now(),
                node: i,
                connections: n,
            });
        }
        if let Some(d) = describe(&event) {
            let mut line = String::new();
            let _ = write!(line, "{:>9} n{i:03} {d}", sim_now().as_millis());
            sh.trace.push(line);
        }
    }
    receiver.abort();
    if let Some(t) = traffic {
        t.abort();
    }
    Ok(())
}

/// Runs `scenario` to its end.
///
/// Errors: a host's software failed (a node did not start), as turmoil reports it.
pub fn run(scenario: &Scenario) -> Result<Report, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let s = Arc::new(scenario.clone());
    let shared = Arc::new(Mutex::new(Shared {
        connections: vec![0; s.nodes],
        received: vec![0; s.nodes],
        ..Shared::default()
    }));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(s.duration + Duration::from_secs(1))
        .tick_duration(s.tick)
        .max_message_latency(s.max_latency)
        .fail_rate(s.fail_rate)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .rng_seed(s.seed)
        .build();
    let wiring = wiring(&s);
    let stores: Vec<MemoryStore> = (0..s.nodes).map(|_| MemoryStore::new()).collect();
    for i in 0..s.nodes {
        let (s, peers, store, shared) = (
            s.clone(),
            wiring[i].clone(),
            stores[i].clone(),
            shared.clone(),
        );
        sim.host(address(i), move || {
            host(s.clone(), i, peers.clone(), store.clone(), shared.clone())
        });
    }
    let duration = s.duration;
    sim.client("driver", async move {
        tokio::time::sleep(duration).await;
        Ok(())
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed ^ 0xc4a1);
    let mut next_churn = s.churn.map(|c| c.every);
    let mut down: Vec<(Duration, usize)> = Vec::new();
    let mut restarts = 0;
    let mut partitioned = vec![false; s.partitions.len()];
    let mut healed = vec![false; s.partitions.len()];
    loop {
        let now = sim.elapsed();
        // Partitions and their healing.
        for (k, p) in s.partitions.iter().enumerate() {
            let (a, b): (Vec<IpAddr>, Vec<IpAddr>) = (
                (0..p.split.min(s.nodes)).map(address).collect(),
                (p.split.min(s.nodes)..s.nodes).map(address).collect(),
            );
            if !partitioned[k] && now >= p.at {
                partitioned[k] = true;
                for x in &a {
                    for y in &b {
                        sim.partition(*x, *y);
                    }
                }
                lock(&shared)
                    .trace
                    .push(format!("{:>9} partition {k}", now.as_millis()));
            }
            if partitioned[k] && !healed[k] && now >= p.heal_at {
                healed[k] = true;
                for x in &a {
                    for y in &b {
                        sim.repair(*x, *y);
                    }
                }
                lock(&shared)
                    .trace
                    .push(format!("{:>9} heal {k}", now.as_millis()));
            }
        }
        // Churn: crash some hosts, restart those whose time is up.
        if let (Some(c), Some(at)) = (s.churn, next_churn) {
            if now >= at {
                next_churn = Some(at + c.every);
                let count = ((s.nodes as f64 * c.fraction).round() as usize).max(1);
                let mut up: Vec<usize> = (0..s.nodes)
                    .filter(|i| !down.iter().any(|(_, d)| d == i))
                    .collect();
                up.shuffle(&mut rng);
                for i in up.into_iter().take(count) {
                    sim.crash(address(i));
                    down.push((now + c.down_for, i));
                    let mut sh = lock(&shared);
                    sh.connections[i] = 0;
                    sh.trace
                        .push(format!("{:>9} n{i:03} crashed", now.as_millis()));
                }
            }
        }
        down.retain(|(back_at, i)| {
            if now >= *back_at {
                sim.bounce(address(*i));
                restarts += 1;
                false
            } else {
                true
            }
        });
        if sim.step()? {
            break;
        }
    }
    let simulated = sim.elapsed();
    drop(sim);
    let sh = lock(&shared);
    Ok(Report {
        trace: sh.trace.clone(),
        connections: sh.connections.clone(),
        samples: sh.samples.clone(),
        received: sh.received.clone(),
        restarts,
        simulated,
        real: started.elapsed(),
    })
}

/// The peer id of node `i` of a scenario seeded `seed`.
pub fn peer_id(seed: u64, i: usize) -> PeerId {
    identity(seed, i).peer_id
}
