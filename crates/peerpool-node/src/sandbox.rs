//! `peerpool sandbox`: N nodes in one process on 127.0.0.1 … 127.0.0.N, each with its own
//! identity (low proof of work), chain `TEZOS`, started from `--bootstrap` bootstrap nodes
//! only: every node knows the bootstrap nodes' points and finds the others through them
//! (Nack referrals, Bootstrap/Advertise, swaps), kept within its bounds by its maintenance
//! (`--connections N`: min N/2, expected N, max 3N/2), over real
//! TCP and the real handshake. A live table shows each node's connections and traffic;
//! at the end (`--duration` or Ctrl-C) a summary, and a non-zero exit if a node ended
//! with no connection.

use crate::node_cmd::{spawn_app_drain, stop_signal, BinaryNode};
use clap::Args;
use comfy_table::{presets::NOTHING, CellAlignment, Table};
use peerpool::NodeConfig;
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use rand::SeedableRng;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `peerpool sandbox` options.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Number of nodes (at most 254: one per 127.0.0.x address).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(2..=254))]
    pub nodes: u16,
    /// How long to run, e.g. `20s`, `2m` or `20` (seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Port every node listens on (each on its own 127.0.0.x); 0 picks free ports.
    #[arg(long, default_value_t = 19732)]
    pub base_port: u16,
    /// How many of the nodes are bootstrap nodes, whose points every node is given.
    #[arg(long, default_value_t = 3)]
    pub bootstrap: usize,
    /// Connections per node, as octez's `--connections N`: min N/2, expected N, max 3N/2.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// Proof of work of the sandbox identities (and required between them).
    #[arg(long, default_value_t = 8.0)]
    pub expected_pow: f64,
    /// Seed of the nodes' identities.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Size of the application message each node broadcasts every 500 ms, bytes (0: none).
    #[arg(long, default_value_t = 1024)]
    pub traffic: usize,
    /// Each node's download cap, KiB/s (octez config unit).
    #[arg(long)]
    pub max_download_speed: Option<u64>,
    /// Each node's upload cap, KiB/s (octez config unit).
    #[arg(long)]
    pub max_upload_speed: Option<u64>,
    /// Where node 1 serves its admin RPC and `/metrics` (explore the network with
    /// `peerpool admin`); when the address is taken, any free port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:8732")]
    pub rpc_addr: std::net::SocketAddr,
    /// Where to write `topology.svg` and `connections.svg` at the end.
    #[arg(long, default_value = "sandbox")]
    pub pictures: std::path::PathBuf,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m)")),
    };
    if !(0.0..=1e7).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

struct SandboxNode {
    addr: SocketAddr,
    handle: BinaryNode,
    received: Arc<AtomicU64>,
}

/// Runs the sandbox network.
pub async fn run(args: SandboxArgs) -> ExitCode {
    // Signals are caught from the start, so a Ctrl-C or SIGTERM while the nodes start
    // still stops them cleanly.
    let stop = stop_signal();
    let target = match PowTarget::new(args.expected_pow) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let n = args.nodes as usize;
    eprintln!(
        "starting {n} nodes on 127.0.0.1 … 127.0.0.{n} (chain TEZOS, proof of work {})",
        args.expected_pow
    );
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
        let identity = Arc::new(Identity::generate(&target, &mut rng));
        let mut config = NodeConfig::new(identity, "TEZOS");
        config.listen_addr = Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1)),
            args.base_port,
        ));
        config.pow_target = target;
        config.set_connections(usize::from(args.connections));
        config.pool.reconnection.increase_cap = Duration::from_secs(5);
        // A sandbox looks again for peers within seconds, not a minute.
        config.policy.maintenance.looking_for_peers = Duration::from_millis(500);
        config.policy.maintenance.looking_for_peers_max = Duration::from_secs(5);
        config.io_scheduler.max_download_speed =
            args.max_download_speed.map(|k| k.saturating_mul(1024));
        config.io_scheduler.max_upload_speed =
            args.max_upload_speed.map(|k| k.saturating_mul(1024));
        let started = match config.validate() {
            Ok(config) => BinaryNode::start(config).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let handle = match started {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: node {}: {e}", i + 1);
                return ExitCode::FAILURE;
            }
        };
        let Some(addr) = handle.local_addr() else {
            eprintln!("error: node {} has no listening address", i + 1);
            return ExitCode::FAILURE;
        };
        handle.activate().await;
        let received = spawn_app_drain(handle.clone());
        nodes.push(SandboxNode {
            addr,
            handle,
            received,
        });
    }
    // Node 1's RPC, and its metrics on a free port beside it.
    if let Some(first) = nodes.first() {
        let local = peerpool_proto::connection_message::ConnectionMetadata::default();
        let mut bound = crate::rpc::serve(args.rpc_addr, first.handle.clone(), local).await;
        if bound.is_err() {
            let any = std::net::SocketAddr::new(args.rpc_addr.ip(), 0);
            bound = crate::rpc::serve(any, first.handle.clone(), local).await;
        }
        match bound {
            Ok(addr) => {
                eprintln!("node 1's RPC: http://{addr}/network (peerpool admin --endpoint http://{addr} connections)");
                let metrics = std::net::SocketAddr::new(addr.ip(), 0);
                if let Ok(m) = crate::metrics::serve(metrics, first.handle.clone()).await {
                    eprintln!("node 1's metrics: http://{m}/metrics");
                }
            }
            Err(e) => eprintln!("warning: node 1's RPC not served: {e}"),
        }
    }
    // Every node is given the bootstrap nodes' points (the bootstrap nodes each other's),
    // as octez's `--peer` / bootstrap peers: trusted points, and nothing else.
    let bootstrap = args.bootstrap.clamp(1, n);
    for i in 0..n {
        for j in (0..bootstrap).filter(|j| *j != i) {
            nodes[i]
                .handle
                .add_peer(Point::from(nodes[j].addr), Some(nodes[j].handle.peer_id()))
                .await;
        }
    }
    if args.traffic > 0 {
        for node in &nodes {
            let handle = node.handle.clone();
            let body = vec![0x5a; args.traffic];
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    // Tag 0x7f00 is outside the Tezos distributed-db range: sandbox traffic.
                    if handle.is_stopped() {
                        return;
                    }
                    handle.broadcast(
                        &RawMessage {
                            tag: 0x7f00,
                            body: body.clone(),
                        },
                        |_| false,
                    );
                }
            });
        }
    }
    let live = std::io::stdout().is_terminal();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let mut samples: Vec<(f64, Vec<usize>)> = Vec::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                samples.push((
                    started.elapsed().as_secs_f64(),
                    nodes.iter().map(|n| n.handle.connections().len()).collect(),
                ));
                if live {
                    print!("\x1b[2J\x1b[H");
                    print_table(&nodes, "live").await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = &mut stop => break,
        }
    }
    let counts = print_table(&nodes, "summary").await;
    // The bounds of `--connections N`; a network of fewer than min + 1 nodes cannot give
    // anyone min connections, so the floor is then every other node.
    let c = usize::from(args.connections);
    let min = if c == 1 { 1 } else { c / 2 }.min(n - 1);
    let max = c * 3 / 2;
    let outside = counts.iter().filter(|k| !(min..=max).contains(*k)).count();
    println!("nodes outside [{min}, {max}] connections: {outside}");
    samples.push((started.elapsed().as_secs_f64(), counts.clone()));
    write_pictures(&args.pictures, &nodes, &samples, min, max);
    let mut stopping = tokio::task::JoinSet::new();
    for node in &nodes {
        let handle = node.handle.clone();
        stopping.spawn(async move { handle.shutdown().await });
    }
    while stopping.join_next().await.is_some() {}
    if outside > 0 {
        eprintln!("{outside} node(s) ended outside their bounds [{min}, {max}]");
        ExitCode::FAILURE
    } else {
        println!("every node is connected, within its bounds");
        ExitCode::SUCCESS
    }
}

/// Prints the table and returns each node's connection count.
async fn print_table(nodes: &[SandboxNode], title: &str) -> Vec<usize> {
    println!("peerpool sandbox ({title}): {} nodes", nodes.len());
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(vec![
        "node",
        "address",
        "peer id",
        "conns",
        "bytes in",
        "bytes out",
        "in B/s",
        "out B/s",
        "app msgs",
    ]);
    let mut counts = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let stats = node.handle.stats().await;
        counts.push(stats.connections);
        table.add_row(vec![
            (i + 1).to_string(),
            node.addr.to_string(),
            node.handle.peer_id().to_string(),
            stats.connections.to_string(),
            stats.io.total_recv.to_string(),
            stats.io.total_sent.to_string(),
            stats.io.current_inflow.to_string(),
            stats.io.current_outflow.to_string(),
            node.received.load(Ordering::Relaxed).to_string(),
        ]);
    }
    for column in [0, 3, 4, 5, 6, 7, 8] {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("{table}");
    let isolated = counts.iter().filter(|c| **c == 0).count();
    println!(
        "connections: {} (each counted at both ends), nodes with none: {isolated}",
        counts.iter().sum::<usize>() / 2
    );
    counts
}

/// Writes `topology.svg` and `connections.svg` into `dir` and says where; a failure is
/// reported, not fatal.
fn write_pictures(
    dir: &std::path::Path,
    nodes: &[SandboxNode],
    samples: &[(f64, Vec<usize>)],
    min: usize,
    max: usize,
) {
    let index: std::collections::HashMap<_, _> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.handle.peer_id(), i))
        .collect();
    let views: Vec<crate::pictures::NodeView> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let infos = n.handle.connection_infos();
            crate::pictures::NodeView {
                label: format!("{}", i + 1),
                dialled: infos
                    .iter()
                    .filter(|c| c.direction == peerpool_proto::handshake::Direction::Outgoing)
                    .filter_map(|c| index.get(&c.peer_id).copied())
                    .collect(),
                connections: infos.len(),
            }
        })
        .collect();
    let pictures = [
        (
            "topology.svg",
            crate::pictures::topology_svg(&views, min, max),
        ),
        (
            "connections.svg",
            crate::pictures::connections_svg(samples, min, max),
        ),
    ];
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("warning: no pictures: cannot create {}: {e}", dir.display());
        return;
    }
    for (name, svg) in pictures {
        let path = dir.join(name);
        match svg
            .map_err(|e| e.to_string())
            .and_then(|text| std::fs::write(&path, text).map_err(|e| e.to_string()))
        {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => eprintln!("warning: {}: {e}", path.display()),
        }
    }
}
