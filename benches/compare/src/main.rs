//! peerpool beside rust-libp2p (TCP + Noise + Yamux + one `libp2p-stream` substream) and
//! plain tokio TCP: one binary, one process, the three stacks in the same run on
//! 127.0.0.1, both ends of every connection on one 2-worker tokio runtime.
//!
//! Items, each run once per stack per round, the stacks in a rotating order:
//! - **throughput**: one connection, `--bytes` (default 1 GiB) in 64 KiB messages (peerpool)
//!   or 64 KiB writes (TCP, libp2p) one way; MiB/s (2^20 bytes per second) and the
//!   process's CPU time per byte moved (ns/B, both ends, user + system);
//! - **sequential**: `--cycles` dial → established → closed (both sides forgotten) cycles
//!   from one dialer: median time to established (µs) and cycles per second;
//! - **concurrent**: `--dialers` dialers (default 8) doing `--each` cycles at once:
//!   handshakes (whole cycles) per second;
//! - **memory**: resident bytes per idle established connection, both ends, after
//!   `malloc_trim`: a full mesh of `--nodes` nodes (default 46: 1 035 connections), so what
//!   a node costs by itself and its first connection's one-time allocations are spread
//!   out; each measure in a child process of its own so the allocator starts clean.
//!
//! Ratios are taken within each round (paired), and the table gives their median; the
//! spread column says how far apart the rounds were, and the load average how busy the
//! machine was. `cargo run --release -p compare -- --rounds 3` (docs/BENCHMARKS.md §8).
//!
//! Failures: every peer of every stack is an endpoint of this process (or of its own memory
//! child) on 127.0.0.1, so nothing here reads input from anyone else. A step that fails
//! (bind, connect, a handshake, a read) means the measurement cannot go on: it panics with
//! the step's name (`expect`), which is the benchmark's error report.

mod lp;
mod measure;
mod pp;
mod report;
mod tcp;

use clap::{Parser, ValueEnum};
use std::time::{Duration, Instant};

/// Bytes per message or write in the throughput item.
pub const MESSAGE_BYTES: usize = 64 * 1024;

/// One throughput measure.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Wall time, seconds.
    pub secs: f64,
    /// The process's CPU time over the same span, seconds.
    pub cpu_secs: f64,
    /// Bytes moved.
    pub bytes: u64,
}

impl Transfer {
    fn since(start: Instant, cpu: Duration, bytes: u64) -> Transfer {
        Transfer {
            secs: start.elapsed().as_secs_f64(),
            cpu_secs: (measure::cpu_time() - cpu).as_secs_f64(),
            bytes,
        }
    }
}

/// One sequential measure.
#[derive(Debug, Clone)]
pub struct Cycles {
    /// Wall time of all cycles, seconds.
    pub secs: f64,
    /// Each cycle's time to established, seconds.
    pub established: Vec<f64>,
}

impl Cycles {
    fn since(start: Instant, established: Vec<f64>) -> Cycles {
        Cycles {
            secs: start.elapsed().as_secs_f64(),
            established,
        }
    }
}

/// One concurrent measure.
#[derive(Debug, Clone, Copy)]
pub struct Concurrent {
    /// Wall time, seconds.
    pub secs: f64,
    /// Whole cycles completed.
    pub cycles: usize,
}

impl Concurrent {
    fn since(start: Instant, cycles: usize) -> Concurrent {
        Concurrent {
            secs: start.elapsed().as_secs_f64(),
            cycles,
        }
    }
}

/// Waits for the runtime's background work to finish, gives freed memory back and reads
/// the resident size, bytes.
pub fn settled_rss() -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    measure::malloc_trim();
    measure::rss_bytes()
}

/// The stacks compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stack {
    /// Plain tokio TCP: the floor.
    Tcp,
    /// peerpool through its public API.
    Peerpool,
    /// rust-libp2p: TCP + Noise + Yamux + libp2p-stream.
    Libp2p,
}

impl Stack {
    const ALL: [Stack; 3] = [Stack::Tcp, Stack::Peerpool, Stack::Libp2p];
}

/// What a memory child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MemoryOf {
    Tcp,
    Peerpool,
    /// libp2p connections without a substream.
    Libp2p,
    /// libp2p connections with one open substream each.
    Libp2pSubstream,
}

#[derive(Debug, Parser)]
#[command(about = "peerpool beside rust-libp2p and plain TCP, on loopback, in one run")]
struct Args {
    /// Rounds; every item runs once per stack per round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bytes moved in the throughput item.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Cycles in the sequential item.
    #[arg(long, default_value_t = 300)]
    cycles: usize,
    /// Dialers in the concurrent item.
    #[arg(long, default_value_t = 8)]
    dialers: usize,
    /// Cycles per dialer in the concurrent item.
    #[arg(long, default_value_t = 60)]
    each: usize,
    /// Nodes of the full mesh in the memory item (n·(n−1)/2 idle connections).
    #[arg(long, default_value_t = 46)]
    nodes: usize,
    /// Items to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    items: Vec<report::Item>,
    /// Stacks to run (default: all three); ratios need peerpool and the other one.
    #[arg(long, value_enum, value_delimiter = ',')]
    stacks: Vec<Stack>,
    /// Internal: measure memory in this process and print "before after" (bytes).
    #[arg(long, value_enum, hide = true)]
    memory_child: Option<MemoryOf>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    let args = Args::parse();
    if let Some(of) = args.memory_child {
        let (before, after) = runtime().block_on(async {
            match of {
                MemoryOf::Tcp => tcp::idle_memory(args.nodes).await,
                MemoryOf::Peerpool => pp::idle_memory(args.nodes).await,
                MemoryOf::Libp2p => lp::idle_memory(args.nodes, false).await,
                MemoryOf::Libp2pSubstream => lp::idle_memory(args.nodes, true).await,
            }
        });
        println!("{before} {after}");
        // The endpoints are not torn down: the process ends here.
        std::process::exit(0);
    }
    let items = if args.items.is_empty() {
        report::Item::ALL.to_vec()
    } else {
        args.items.clone()
    };
    report::run(&args, &items);
}

/// Connections of a full mesh of `nodes` nodes.
pub fn mesh_connections(nodes: usize) -> usize {
    nodes * nodes.saturating_sub(1) / 2
}

/// Runs the memory item for `of` in a child process; bytes per connection (both ends).
fn memory_in_child(of: MemoryOf, nodes: usize) -> f64 {
    let exe = std::env::current_exe().expect("the running binary");
    let name = of
        .to_possible_value()
        .expect("no skipped variants")
        .get_name()
        .to_owned();
    let out = std::process::Command::new(exe)
        .args(["--memory-child", &name, "--nodes", &nodes.to_string()])
        .output()
        .expect("the memory child runs");
    assert!(
        out.status.success(),
        "memory child {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|w| w.parse().expect("a number of bytes"))
        .collect();
    (v[1] - v[0]) / mesh_connections(nodes) as f64
}
