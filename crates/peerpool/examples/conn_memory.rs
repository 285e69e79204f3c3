//! Memory held by idle established connections, and by a node's event buffer
//! (docs/BENCHMARKS-memory.md).
//!
//! `K` nodes (`Node<RawMessage>`, TCP on 127.0.0.1, maintenance off, no Bootstrap on
//! connect) in one process, each connected to every other: `N = K(K−1)/2` connections,
//! two ends each. Measured when the connections are just established ("fresh") and again
//! after one burst on every connection, once quiet ("after a burst": each end sent a
//! 64 KiB message and ten 100-byte ones, all received). The nodes' own cost, measured
//! before any connection, is subtracted; figures are per connection, both ends together.
//!
//! Each measurement runs in a child process of its own (a heap profiler starts once per
//! process, and it inflates the RSS):
//! - `rss`: `VmRSS` from `/proc/self/status`, no profiler.
//! - `heap`: dhat's live heap bytes (`HeapStats::curr_bytes`), profiler on from the start.
//! - `sites-fresh`, `sites-burst`: the profiler starts once the nodes are up, so it sees
//!   only what the connections allocate; at the end (connections still up) the live bytes
//!   are grouped by owner: the kind of block (task, channel, other) and the first
//!   peerpool function of its allocation's backtrace.
//! - `events`: the live heap bytes of one node at `event_capacity` 1 024 and 100 000,
//!   against 1.
//!
//! `cargo run --release -p peerpool --example conn_memory [-- [MODE] [K]]` (default: every
//! mode, K = 46, so N = 1 035). Function names in the site table need line tables:
//! `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`.

#![allow(clippy::unwrap_used)] // an example: a panic is the error report

use peerpool::{Node, NodeConfig};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Default node count: 46 nodes, 1 035 connections.
const DEFAULT_NODES: usize = 46;
/// A non-control application tag.
const APP_TAG: u16 = 0x0100;
/// The burst's large message body, bytes.
const LARGE: usize = 64 * 1024;
/// The burst's small messages: count and body bytes.
const SMALL: (usize, usize) = (10, 100);
/// Where the `sites-*` modes write dhat's profile.
const PROFILE: &str = "conn_memory-dhat-heap.json";

fn config(listen: bool, event_capacity: usize) -> peerpool::ValidConfig {
    let target = PowTarget::new(0.0).unwrap();
    let identity = Arc::new(Identity::generate(&target, &mut rand::rng()));
    let mut config = NodeConfig::new(identity, "PEERPOOL_MEMORY");
    config.pow_target = target;
    config.policy.bootstrap_on_connect = false;
    config.policy.maintenance.enabled = false;
    config.pool.max_connections = 1000;
    config.pool.min_connections = 0;
    // Every node dials from 127.0.0.1, many at once.
    config.policy.max_incoming_handshakes = 1000;
    config.policy.max_incoming_handshakes_per_ip = 1000;
    config.policy.max_incoming_handshakes_per_netgroup = Some(1000);
    config.event_capacity = event_capacity;
    config.listen_addr = listen.then(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    config.validate().unwrap()
}

async fn start_node(event_capacity: usize) -> Node<RawMessage> {
    let node = Node::start(config(true, event_capacity)).await.unwrap();
    node.activate().await;
    node
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Live heap bytes (the profiler must run).
fn heap() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Connects every node to every other (node i dials nodes i+1..K), then waits until every
/// node has its K−1 connections registered. Returns the connection count.
async fn connect_all(nodes: &[Node<RawMessage>]) -> usize {
    let points: Vec<Point> = nodes
        .iter()
        .map(|n| Point::from(n.local_addr().unwrap()))
        .collect();
    let mut dials = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (node, targets) = (node.clone(), points[i + 1..].to_vec());
        dials.push(tokio::spawn(async move {
            for point in targets {
                node.connect(point, None).await.unwrap();
            }
        }));
    }
    for d in dials {
        d.await.unwrap();
    }
    let want = nodes.len() - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.iter().any(|n| n.connections().len() != want) {
        assert!(Instant::now() < deadline, "connections not all registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes.len() * want / 2
}

/// Every end of every connection sends a 64 KiB message and ten small ones; returns once
/// each node has received all it was sent.
async fn burst(nodes: &[Node<RawMessage>]) {
    let per_node = (nodes.len() - 1) * (1 + SMALL.0);
    let mut receivers = Vec::new();
    for node in nodes {
        let node = node.clone();
        receivers.push(tokio::spawn(async move {
            for _ in 0..per_node {
                node.recv_any().await.unwrap();
            }
        }));
    }
    let large = RawMessage {
        tag: APP_TAG,
        body: vec![7; LARGE],
    };
    let small = RawMessage {
        tag: APP_TAG,
        body: vec![1; SMALL.1],
    };
    for node in nodes {
        for c in node.connections() {
            c.send(&large).await.unwrap();
            for _ in 0..SMALL.0 {
                c.send(&small).await.unwrap();
            }
        }
    }
    for r in receivers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Lets the last writes, wake-ups and frees happen: longer than the quiet time after which
/// a connection's reader lets its buffers go (500 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn shutdown(nodes: Vec<Node<RawMessage>>) {
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Prints `label: total bytes, per connection`.
fn report(label: &str, before: u64, after: u64, n: usize) {
    let delta = after as i64 - before as i64;
    println!(
        "  {label:<24} {delta:>12} B total, {:>8.0} B per connection ({:.1} KiB), {:>7.0} B per end",
        delta as f64 / n as f64,
        delta as f64 / n as f64 / 1024.0,
        delta as f64 / n as f64 / 2.0,
    );
}

/// One measurement of the connections' cost: `measure` is RSS or live heap bytes.
async fn run_totals(k: usize, what: &str, measure: fn() -> u64) {
    let mut nodes = Vec::new();
    for _ in 0..k {
        nodes.push(start_node(1024).await);
    }
    settle().await;
    let base = measure();
    let n = connect_all(&nodes).await;
    settle().await;
    let fresh = measure();
    burst(&nodes).await;
    settle().await;
    let after_burst = measure();
    println!("{what}: {k} nodes, {n} connections (nodes alone: {base} B)");
    report("fresh", base, fresh, n);
    report("after a burst", base, after_burst, n);
    shutdown(nodes).await;
}

/// The live bytes the connections allocated, by owner (see the module docs).
async fn run_sites(k: usize, with_burst: bool) {
    let mut nodes = Vec::new();
    for _ in 0..k {
        nodes.push(start_node(1024).await);
    }
    settle().await;
    let profiler = dhat::Profiler::builder()
        .file_name(PROFILE)
        .trim_backtraces(Some(64))
        .build();
    let n = connect_all(&nodes).await;
    if with_burst {
        burst(&nodes).await;
    }
    settle().await;
    let live = heap();
    drop(profiler);
    let state = if with_burst { "after a burst" } else { "fresh" };
    println!("sites ({state}): {k} nodes, {n} connections, {live} B allocated and live");
    print_sites(n);
    shutdown(nodes).await;
}

/// What kind of block a backtrace allocated: the library code between the allocator and
/// the first peerpool frame tells (a task, a channel, a stream split, a socket, or else a
/// plain heap block).
fn kind(frames: &[&str]) -> &'static str {
    let library: Vec<&str> = frames
        .iter()
        .map(|f| location(f).1)
        .take_while(|l| !ours(l))
        .collect();
    let has = |s: &str| library.iter().any(|l| l.contains(s));
    if has("runtime/task/") {
        "task"
    } else if has("sync/mpsc/") {
        "mpsc"
    } else if has("sync/watch") {
        "watch"
    } else if has("sync/broadcast") {
        "broadcast"
    } else if has("io/split.rs") {
        "io::split"
    } else if has("runtime/io/") || has("net/tcp/") {
        "socket"
    } else {
        "heap"
    }
}

/// A frame as dhat prints it, `0x…: function<generics> (file:line:column)`, as its
/// function (generics dropped) and location.
fn location(frame: &str) -> (&str, &str) {
    let rest = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    match rest.rsplit_once(" (") {
        Some((function, location)) => (
            function.split('<').next().unwrap_or(function),
            location.trim_end_matches(')'),
        ),
        None => (rest, ""),
    }
}

/// Whether a frame's source location (as dhat prints it: `src/…` or `crate/src/…`) is a
/// file of peerpool or peerpool-proto.
fn ours(location: &str) -> bool {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = location.split(':').next().unwrap_or("");
    if file.starts_with("peerpool/src/") || file.starts_with("peerpool-proto/src/") {
        return true;
    }
    file.starts_with("src/")
        && file != "src/lib.rs"
        && (crates.join("peerpool").join(file).exists()
            || crates.join("peerpool-proto").join(file).exists())
}

/// The first peerpool frame of a backtrace: `function (file:line)`.
fn owner(frames: &[&str]) -> String {
    for f in frames {
        let (function, location) = location(f);
        if ours(location) {
            let location = location.rsplit_once(':').map_or(location, |(l, _)| l);
            return format!("{function} ({location})");
        }
    }
    "(outside peerpool)".to_string()
}

/// Reads dhat's profile and prints the bytes live at its end, grouped by kind and owner.
fn print_sites(n: usize) {
    let text = std::fs::read_to_string(PROFILE).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ftbl: Vec<&str> = json["ftbl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut groups: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for pp in json["pps"].as_array().unwrap() {
        let (bytes, blocks) = (pp["eb"].as_u64().unwrap(), pp["ebk"].as_u64().unwrap());
        if bytes == 0 {
            continue;
        }
        let frames: Vec<&str> = pp["fs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| ftbl[i.as_u64().unwrap() as usize])
            .collect();
        let e = groups
            .entry((kind(&frames).to_string(), owner(&frames)))
            .or_default();
        e.0 += bytes;
        e.1 += blocks;
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by_key(|(_, (bytes, _))| std::cmp::Reverse(*bytes));
    let total: u64 = rows.iter().map(|(_, (b, _))| b).sum();
    println!(
        "  {:>9} {:>8} {:>7}  {:<10} owner",
        "B/conn", "blk/conn", "B/blk", "kind"
    );
    for ((kind, owner), (bytes, blocks)) in rows {
        if bytes < n as u64 / 2 {
            continue;
        }
        println!(
            "  {:>9.1} {:>8.2} {:>7.0}  {:<10} {owner}",
            bytes as f64 / n as f64,
            blocks as f64 / n as f64,
            bytes as f64 / blocks.max(1) as f64,
            kind
        );
    }
    println!(
        "  {:>9.1} total (profile kept in {PROFILE})",
        total as f64 / n as f64
    );
}

/// The live heap bytes of one idle node (with one subscriber) at `capacity`.
async fn event_cost(capacity: usize) -> u64 {
    let before = heap();
    let node = start_node(capacity).await;
    let events = node.events();
    settle().await;
    let bytes = heap() - before;
    drop(events);
    node.shutdown().await;
    bytes
}

/// The live heap bytes of one idle node by event capacity.
async fn run_events() {
    println!("event buffer: live heap bytes of one idle node, against event_capacity 1");
    let one = event_cost(1).await;
    for capacity in [1024, 100_000] {
        let bytes = event_cost(capacity).await;
        println!(
            "  event_capacity {capacity:>7}: {:>10} B more than capacity 1 ({} B)",
            bytes as i64 - one as i64,
            bytes
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, k) = match args.as_slice() {
        [] => ("all".to_string(), DEFAULT_NODES),
        [m] => match m.parse() {
            Ok(k) => ("all".to_string(), k),
            Err(_) => (m.clone(), DEFAULT_NODES),
        },
        [m, k, ..] => (m.clone(), k.parse().unwrap()),
    };
    assert!(k >= 2, "at least two nodes");
    if mode == "all" {
        let exe = std::env::current_exe().unwrap();
        for m in ["rss", "heap", "sites-fresh", "sites-burst", "events"] {
            let status = std::process::Command::new(&exe)
                .args([m, &k.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "mode {m} failed");
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match mode.as_str() {
            "rss" => run_totals(k, "rss", rss).await,
            "heap" => {
                let _profiler = dhat::Profiler::builder().testing().build();
                run_totals(k, "heap", heap).await;
            }
            "sites-fresh" => run_sites(k, false).await,
            "sites-burst" => run_sites(k, true).await,
            "events" => {
                let _profiler = dhat::Profiler::builder().testing().build();
                run_events().await;
            }
            other => panic!("unknown mode {other}: rss, heap, sites-fresh, sites-burst, events"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}
