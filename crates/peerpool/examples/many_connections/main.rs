//! One node holding many authenticated, encrypted, idle connections: what it costs.
//!
//! `cargo run --release -p peerpool --example many_connections -- --count 10000`
//! (or a positional count; default 10 000). Results: docs/BENCHMARKS-scale.md.
//!
//! The node is a real `Node<RawMessage>` started with the public API over TCP on
//! 127.0.0.1:0. The peers live in child processes (this binary again, `--peers-child`), so
//! the node's process holds only its own sockets (the open-file hard limit is per
//! process): each peer is one TCP stream from its own address 127.1.x.y that runs the real
//! handshake (`peerpool::socket`) and then only reads, decrypting the node's chunks.
//!
//! Measured, in the node's process:
//! 1. establishment: seconds from "go" until the node has registered the last connection
//!    (its `ConnectionEstablished` events), connections per second, and the time at each
//!    tenth of the count (does it slow down as the count grows?); CPU seconds used;
//! 2. memory: VmRSS (`/proc/self/status`, KiB) before the first connection and once all
//!    are established, and the difference per connection (bytes). The workspace forbids
//!    `unsafe`, so `malloc_trim` cannot return freed heap first: RSS is an upper bound of
//!    the live heap. Kernel socket buffers are not in RSS; `/proc/net/sockstat` gives the
//!    machine's (both ends);
//! 3. idle CPU: the process's CPU time (threads' run times from `/proc/self/task/*/
//!    schedstat`, and utime + stime from `/proc/self/stat`) over an idle window (default
//!    10 s), as a percentage of one core, and the threads' context switches per second;
//! 4. broadcast: `Node::broadcast` of one `RawMessage` (1 KiB body) to every connection,
//!    seconds from the call until the last peer has decrypted it (the peers print their
//!    counts; the parent reads them), the call alone, and the node's CPU time, over
//!    several rounds; beside it, the time to seal the same message once per connection
//!    (the encryption alone, same run), as a floor;
//! 5. gather: every peer sends the node one message at once; seconds until the
//!    application has taken the last with `Node::recv_any`, and the memory after (a
//!    connection that has read data may keep read buffers an idle one has not touched);
//! 6. `Node::shutdown` with every connection open, seconds.
//!
//! The node is configured for the run: `max_connections` and `max_incoming_connections`
//! the count + 64, the known peer ids table twice that, the incoming handshake caps (total,
//! per netgroup) above what the peers keep in flight, no maintenance, no Bootstrap on
//! connect, and the connection manager's watermarks at `max_connections`.
//!
//! Flags: `--count N`, `--children K` (peer processes; default the fewest the open-file
//! limit allows), `--in-flight H` (handshakes in flight per child, 64), `--child-threads T`
//! (1), `--idle-secs S` (10), `--rounds R` (5), `--body BYTES` (1024).

mod parent;
mod peers;
mod procfs;

use peerpool_proto::crypto::{ChannelKey, Nonce};
use peerpool_proto::framing::{ChunkSealer, MAX_CHUNK_PAYLOAD};
use peers::ChildOptions;
use std::error::Error;
use std::time::{Duration, Instant};

/// Descriptors a process keeps besides its connections (runtime, pipes, listener, slack).
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns the soft limit in force.
fn raise_nofile() -> u64 {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

/// The command line of a child.
pub fn child_args(c: &ChildOptions) -> Vec<String> {
    [
        ("--peers-child", String::new()),
        ("--node", c.node.to_string()),
        ("--first", c.first.to_string()),
        ("--count", c.count.to_string()),
        ("--in-flight", c.in_flight.to_string()),
        ("--chain", c.chain.clone()),
        ("--child-threads", c.threads.to_string()),
        ("--body", c.body_len.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .filter(|s| !s.is_empty())
    .collect()
}

/// The parsed command line: the parent's options, the child's when `--peers-child`.
struct Args {
    options: parent::Options,
    children_set: bool,
    child: Option<ChildOptions>,
}

fn parse() -> Result<Args, Box<dyn Error>> {
    let mut o = parent::Options {
        count: 10_000,
        children: 1,
        in_flight: 64,
        child_threads: 1,
        idle_secs: 10,
        rounds: 5,
        body_len: 1024,
    };
    let (mut children_set, mut is_child) = (false, false);
    let (mut node, mut first, mut chain) = (None, 0, parent::CHAIN.to_string());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--peers-child" => is_child = true,
            "--count" => o.count = value()?.parse()?,
            "--children" => {
                o.children = value()?.parse()?;
                children_set = true;
            }
            "--in-flight" => o.in_flight = value()?.parse()?,
            "--child-threads" => o.child_threads = value()?.parse()?,
            "--idle-secs" => o.idle_secs = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--body" => o.body_len = value()?.parse()?,
            "--node" => node = Some(value()?.parse()?),
            "--first" => first = value()?.parse()?,
            "--chain" => chain = value()?,
            n if !n.starts_with('-') => o.count = n.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if o.count == 0 || o.count > peers::MAX_PEERS || o.children == 0 {
        return Err(format!("count must be 1..={}, children >= 1", peers::MAX_PEERS).into());
    }
    let child = match (is_child, node) {
        (false, _) => None,
        (true, Some(node)) => Some(ChildOptions {
            node,
            first,
            count: o.count,
            in_flight: o.in_flight,
            chain,
            threads: o.child_threads,
            body_len: o.body_len,
        }),
        (true, None) => return Err("--peers-child needs --node".into()),
    };
    Ok(Args {
        options: o,
        children_set,
        child,
    })
}

/// Seconds to seal the broadcast's envelope once per connection, best of three.
fn seal_floor(count: usize, body_len: usize) -> f64 {
    let envelope = vec![0xAB; 4 + 2 + body_len];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut sealer = ChunkSealer::new(ChannelKey([7; 32]), Nonce([1; 24]), MAX_CHUNK_PAYLOAD);
        let mut out = Vec::with_capacity(envelope.len() + 64);
        let t = Instant::now();
        for _ in 0..count {
            out.clear();
            sealer.seal_message(&envelope, &mut out);
            std::hint::black_box(&out);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(o: &parent::Options, r: &parent::Results, nofile: u64, floor: f64) {
    let n = r.reached.max(1) as f64;
    println!("== many_connections: {} asked, {} held", o.count, r.reached);
    println!(
        "setup: {} peer process(es), {} handshakes in flight each, {} thread(s) each; \
         node runtime 2 workers; open-file limit {nofile}; node threads {}",
        o.children, o.in_flight, o.child_threads, r.threads
    );
    let secs = r.establish.as_secs_f64();
    println!(
        "establish: {:.3} s until the node registered all ({:.0} conn/s); peers done at \
         {:.3} s; node CPU {:.2} s ({:.0} µs per connection, {:.0}% in the kernel)",
        secs,
        n / secs,
        r.peers_done.as_secs_f64(),
        r.establish_cpu_s,
        r.establish_cpu_s * 1e6 / n,
        r.establish_sys_share * 100.0
    );
    let mut prev = (0usize, Duration::ZERO);
    let tenths: Vec<String> = r
        .deciles
        .iter()
        .map(|&(k, t)| {
            let rate = (k - prev.0) as f64 / (t - prev.1).as_secs_f64().max(1e-9);
            prev = (k, t);
            format!("{k}@{:.2}s({rate:.0}/s)", t.as_secs_f64())
        })
        .collect();
    println!("  by tenths: {}", tenths.join(" "));
    println!(
        "  peer retries {}, peers failed {}, node handshake failures/refusals {}{}, events \
         lost {}",
        r.retries,
        r.failed,
        r.node_failures,
        r.failure_sample
            .as_ref()
            .map(|s| format!(" (first: {s})"))
            .unwrap_or_default(),
        r.lagged
    );
    let [start, before, est, idle, bcast, gather] = r.rss_kib;
    let per = |a: u64, b: u64| (b.saturating_sub(a) as f64 * 1024.0 / n).round();
    println!(
        "memory: VmRSS start {start} KiB, before {before} KiB, established {est} KiB, after \
         idle {idle} KiB, after broadcasts {bcast} KiB, after the gather {gather} KiB, peak \
         {} KiB",
        r.hwm_kib
    );
    println!(
        "  per connection: {} B (RSS established - before), {} B (RssAnon), {} B (after the \
         broadcasts); machine TCP buffers {:?} -> {:?} KiB",
        per(before, est),
        per(r.anon_kib[0], r.anon_kib[1]),
        per(before, bcast),
        r.tcp_mem_kib[0],
        r.tcp_mem_kib[1]
    );
    println!(
        "  after every peer sent one message: {} B per connection (RSS after the gather - \
         before); VmData {} -> {} -> {} KiB ({} B, then {} B per connection: heap reserved, \
         resident or not)",
        per(before, gather),
        r.data_kib[0],
        r.data_kib[1],
        r.data_kib[2],
        per(r.data_kib[0], r.data_kib[1]),
        per(r.data_kib[0], r.data_kib[2])
    );
    let (wall, ticks, run, switches) = r.idle;
    println!(
        "idle: {:.1} s, CPU {:.3}% of one core (run time), {:.2}% (ticks), {:.0} context \
         switches/s",
        wall,
        run / wall * 100.0,
        ticks / wall * 100.0,
        switches as f64 / wall
    );
    let mut totals: Vec<f64> = r.rounds.iter().map(|x| ms(x.total)).collect();
    for (i, x) in r.rounds.iter().enumerate() {
        println!(
            "broadcast {}: {:.1} ms to the last peer (call {:.2} ms, sent {}, refused {}), \
             node CPU {:.1} ms ({:.1} µs per peer, {:.0}% in the kernel)",
            i + 1,
            ms(x.total),
            ms(x.call),
            x.sent,
            x.refused,
            x.cpu_s * 1e3,
            x.cpu_s * 1e6 / n,
            x.sys_share * 100.0
        );
    }
    totals.sort_by(f64::total_cmp);
    if let Some(median) = totals.get(totals.len() / 2) {
        println!(
            "  median {median:.1} ms ({:.1} µs per peer); sealing it {} times alone: {:.1} ms \
             (ratio {:.1})",
            median * 1e3 / n,
            r.reached,
            floor * 1e3,
            median / (floor * 1e3)
        );
    }
    match r.gather {
        Some((t, cpu)) => println!(
            "gather: every peer sent one message at once: {:.1} ms until the application \
             took the last (recv_any), node CPU {:.1} ms ({:.1} µs per message)",
            ms(t),
            cpu * 1e3,
            cpu * 1e6 / n
        ),
        None => println!("gather: not every message arrived"),
    }
    println!(
        "shutdown: {:.0} ms with every connection open",
        ms(r.shutdown)
    );
}

fn main() -> Result<(), Box<dyn Error>> {
    let rss_start = procfs::status_kib("VmRSS").unwrap_or(0);
    let nofile = raise_nofile();
    let mut args = parse()?;
    if let Some(child) = args.child {
        return peers::run(child);
    }
    // The node's warnings (refusals, connections still closing at shutdown) on stderr.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let o = &mut args.options;
    let usable = nofile.saturating_sub(RESERVED_FDS).max(1);
    if o.count as u64 > usable {
        return Err(format!(
            "{} connections need more than the open-file limit {nofile} allows the node \
             ({usable} after {RESERVED_FDS} kept)",
            o.count
        )
        .into());
    }
    let fewest = (o.count as u64).div_ceil(usable) as usize;
    if !args.children_set || o.children < fewest {
        o.children = o.children.max(fewest);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let results = rt.block_on(parent::run(o, rss_start))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let floor = seal_floor(results.reached, o.body_len);
    report(o, &results, nofile, floor);
    Ok(())
}
