//! The node's side: one `Node<RawMessage>` over TCP on 127.0.0.1, the peer processes it
//! waits on, and the measurement phases (establish, idle, broadcast, shutdown).

use crate::peers::ChildOptions;
use crate::procfs::{self, Cpu};
use peerpool::{Node, NodeConfig, NodeEvent, ValidConfig};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::RawMessage;
use std::error::Error;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, Notify};

/// The chain name both sides announce.
pub const CHAIN: &str = "PEERPOOL_MANY_CONNECTIONS";
/// Connection slots above the count asked for.
const SLACK: usize = 64;
/// A non-control application tag for the broadcast message.
const APP_TAG: u16 = 0x1000;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections to hold.
    pub count: usize,
    /// Peer processes.
    pub children: usize,
    /// Handshakes in flight in each child.
    pub in_flight: usize,
    /// Worker threads of each child's runtime.
    pub child_threads: usize,
    /// The idle window, seconds.
    pub idle_secs: u64,
    /// Broadcasts, one after the other.
    pub rounds: usize,
    /// Body of the broadcast message, bytes.
    pub body_len: usize,
}

/// One broadcast.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// The `Node::broadcast` call itself.
    pub call: Duration,
    /// From the call until every peer has decrypted the message.
    pub total: Duration,
    /// CPU of the node's process over `total`, seconds (threads' run times).
    pub cpu_s: f64,
    /// The kernel's share of it (from the ticks).
    pub sys_share: f64,
    /// Connections that queued it.
    pub sent: usize,
    /// Connections that refused it.
    pub refused: usize,
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Connections the node held once the peers were done.
    pub reached: usize,
    /// Establishment: time until the node registered the last connection.
    pub establish: Duration,
    /// Establishment: time until the last peer finished its handshake.
    pub peers_done: Duration,
    /// `(connections, time)` when the node's count passed each tenth of the target.
    pub deciles: Vec<(usize, Duration)>,
    /// Peers that gave up, and retries of the others.
    pub failed: usize,
    /// Retries.
    pub retries: usize,
    /// The node's failed handshakes and pre-handshake refusals (events).
    pub node_failures: usize,
    /// A sample failure reason.
    pub failure_sample: Option<String>,
    /// Events the counter missed (lag).
    pub lagged: u64,
    /// VmRSS, KiB: at process start, before the first connection, once all are
    /// established, after the idle window, after the broadcasts, after the gather.
    pub rss_kib: [u64; 6],
    /// VmData (heap and anonymous mappings, resident or not), KiB: before the first
    /// connection, once all are established, after the gather.
    pub data_kib: [u64; 3],
    /// Gather: every peer sends one message at once; time until the application has
    /// taken the last with `recv_any`, and the node's CPU seconds.
    pub gather: Option<(Duration, f64)>,
    /// RssAnon, KiB, before the first connection and once all are established.
    pub anon_kib: [u64; 2],
    /// VmHWM at the end, KiB.
    pub hwm_kib: u64,
    /// Machine-wide TCP socket buffer memory before and after establishment, KiB.
    pub tcp_mem_kib: [Option<u64>; 2],
    /// Node CPU during establishment, seconds, and the kernel's share of it.
    pub establish_cpu_s: f64,
    /// The kernel's share of `establish_cpu_s`.
    pub establish_sys_share: f64,
    /// The idle window: wall seconds, CPU seconds (ticks, run time), context switches.
    pub idle: (f64, f64, f64, u64),
    /// Threads of the node process once established.
    pub threads: usize,
    /// The broadcasts.
    pub rounds: Vec<Round>,
    /// `Node::shutdown` with every connection open.
    pub shutdown: Duration,
}

/// What the node's events said, counted by a task of their own.
#[derive(Default)]
struct Counter {
    established: AtomicUsize,
    closed: AtomicUsize,
    failures: AtomicUsize,
    lagged: AtomicU64,
    wake: Notify,
    milestones: Mutex<Vec<(usize, Instant)>>,
    failure_sample: Mutex<Option<String>>,
}

fn count_events(node: &Node<RawMessage>, step: usize) -> Arc<Counter> {
    let counter = Arc::new(Counter::default());
    let mut events = node.events();
    let c = counter.clone();
    tokio::spawn(async move {
        loop {
            let event = events.recv().await;
            match event {
                Ok(NodeEvent::ConnectionEstablished { .. }) => {
                    let n = c.established.fetch_add(1, Ordering::AcqRel) + 1;
                    if n % step == 0 {
                        let mut m = c.milestones.lock().unwrap_or_else(|e| e.into_inner());
                        m.push((n, Instant::now()));
                    }
                }
                Ok(NodeEvent::ConnectionClosed { .. }) => {
                    c.closed.fetch_add(1, Ordering::AcqRel);
                }
                Ok(e @ (NodeEvent::HandshakeFailed { .. } | NodeEvent::IncomingRefused { .. })) => {
                    c.failures.fetch_add(1, Ordering::AcqRel);
                    let mut s = c.failure_sample.lock().unwrap_or_else(|e| e.into_inner());
                    s.get_or_insert_with(|| format!("{e:?}"));
                }
                Ok(_) => continue,
                Err(peerpool::EventError::Lagged(n)) => {
                    c.lagged.fetch_add(n, Ordering::AcqRel);
                }
                Err(_) => return,
            }
            c.wake.notify_one();
        }
    });
    counter
}

/// The node's configuration for `count` incoming connections (see the module doc of
/// `main.rs` for why each limit is raised).
pub fn node_config(o: &Options) -> Result<ValidConfig, Box<dyn Error>> {
    let target = PowTarget::new(0.0)?;
    let identity = Arc::new(Identity::generate(&target, &mut rand::rng()));
    let mut c = NodeConfig::new(identity, CHAIN);
    c.pow_target = target;
    c.listen_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let max = o.count + SLACK;
    c.pool.min_connections = 0;
    c.pool.max_connections = max;
    // Every peer is a known peer id while connected (default table: 400).
    let table = (2 * max).max(400);
    c.pool.max_known_peer_ids = (table, table / 4 * 3);
    c.pool.max_known_points = (table, table / 4 * 3);
    c.policy.max_incoming_connections = Some(max);
    let handshakes = (o.in_flight * o.children + SLACK).max(20);
    c.policy.max_incoming_handshakes = handshakes;
    c.policy.max_incoming_handshakes_per_netgroup = Some(handshakes);
    // One address per peer; a retry may overlap its previous attempt.
    c.policy.max_incoming_handshakes_per_ip = 4;
    // Only the peers' connections: no dials, no Bootstrap, no trims below `max`.
    c.policy.bootstrap_on_connect = false;
    c.policy.maintenance.enabled = false;
    c.policy.maintenance.expected_connections = Some(max);
    c.policy.conn_manager.low_water = Some(max);
    c.policy.conn_manager.high_water = Some(max);
    Ok(c.validate()?)
}

/// The peer processes and what their lines said.
struct Children {
    procs: Vec<Child>,
    stdins: Vec<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(usize, String)>,
    ready: Vec<bool>,
    established: Vec<usize>,
    done: Vec<bool>,
    received: Vec<u64>,
    failed: usize,
    retries: usize,
}

impl Children {
    fn spawn(o: &Options, node: SocketAddr) -> Result<Self, Box<dyn Error>> {
        let exe = std::env::current_exe()?;
        let (tx, lines) = mpsc::unbounded_channel();
        let (mut procs, mut stdins) = (Vec::new(), Vec::new());
        let per = o.count.div_ceil(o.children);
        for i in 0..o.children {
            let first = i * per;
            let count = per.min(o.count - first);
            let child = ChildOptions {
                node,
                first,
                count,
                in_flight: o.in_flight,
                chain: CHAIN.to_string(),
                threads: o.child_threads,
                body_len: o.body_len,
            };
            let mut proc = Command::new(&exe)
                .args(crate::child_args(&child))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = proc.stdout.take().ok_or("child stdout")?;
            stdins.push(proc.stdin.take().ok_or("child stdin")?);
            procs.push(proc);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((i, line)).is_err() {
                        return;
                    }
                }
            });
        }
        let n = procs.len();
        Ok(Children {
            procs,
            stdins,
            lines,
            ready: vec![false; n],
            established: vec![0; n],
            done: vec![false; n],
            received: vec![0; n],
            failed: 0,
            retries: 0,
        })
    }

    async fn send_all(&mut self, line: &str) -> Result<(), Box<dyn Error>> {
        for s in &mut self.stdins {
            s.write_all(format!("{line}\n").as_bytes()).await?;
            s.flush().await?;
        }
        Ok(())
    }

    /// Waits for the next line and applies it. Errors: every child has exited.
    async fn next(&mut self) -> Result<(), Box<dyn Error>> {
        let (i, line) = self.lines.recv().await.ok_or("every peer process exited")?;
        let mut words = line.split_whitespace();
        let num = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
        match words.next() {
            Some("ready") => self.ready[i] = true,
            Some("established") => self.established[i] = num(words.next()) as usize,
            Some("done") => {
                self.established[i] = num(words.next()) as usize;
                self.failed += num(words.next()) as usize;
                self.retries += num(words.next()) as usize;
                self.done[i] = true;
            }
            Some("received") => self.received[i] = num(words.next()),
            Some("failed") => eprintln!("peers {i}: {line}"),
            Some("closed") => eprintln!("peers {i}: node closed connections: {line}"),
            _ => eprintln!("peers {i}: {line}"),
        }
        Ok(())
    }

    fn total_established(&self) -> usize {
        self.established.iter().sum()
    }

    fn received_round(&self, round: u64) -> bool {
        (0..self.procs.len()).all(|i| self.received[i] >= self.established[i] as u64 * round)
    }

    async fn stop(mut self) {
        self.stdins.clear();
        for p in &mut self.procs {
            let _ = p.wait().await;
        }
    }
}

fn rss() -> u64 {
    procfs::status_kib("VmRSS").unwrap_or(0)
}

/// Runs every phase and returns the figures.
///
/// Errors: the node does not start, a peer process cannot be started or exits early.
pub async fn run(o: &Options, rss_start: u64) -> Result<Results, Box<dyn Error>> {
    let mut r = Results::default();
    let node = Node::<RawMessage>::start(node_config(o)?).await?;
    node.activate().await;
    let addr = node.local_addr().ok_or("the node does not listen")?;
    let counter = count_events(&node, (o.count / 10).max(1));
    let mut children = Children::spawn(o, addr)?;
    while !children.ready.iter().all(|r| *r) {
        children.next().await?;
    }

    // 1. Establishment.
    let limit = Duration::from_secs(60 + o.count as u64 / 50);
    r.rss_kib[0] = rss_start;
    r.rss_kib[1] = rss();
    r.anon_kib[0] = procfs::status_kib("RssAnon").unwrap_or(0);
    r.data_kib[0] = procfs::status_kib("VmData").unwrap_or(0);
    r.tcp_mem_kib[0] = procfs::tcp_socket_mem_kib();
    let cpu0 = Cpu::now();
    let start = Instant::now();
    children.send_all("go").await?;
    let deadline = tokio::time::Instant::from_std(start + limit);
    let mut peers_done = None;
    loop {
        let node_count = || {
            let c = &counter;
            c.established.load(Ordering::Acquire) - c.closed.load(Ordering::Acquire)
        };
        if children.done.iter().all(|d| *d) {
            let target = children.total_established();
            peers_done.get_or_insert_with(|| start.elapsed());
            // With lost events the count is low: ask the node itself.
            let lagged = counter.lagged.load(Ordering::Acquire) > 0;
            if node_count() >= target || (lagged && node.connections().len() >= target) {
                r.establish = start.elapsed();
                break;
            }
        }
        tokio::select! {
            biased;
            line = children.next() => line?,
            _ = counter.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("establishment timed out after {limit:?}");
                r.establish = start.elapsed();
                break;
            }
        }
    }
    let cpu1 = Cpu::now();
    r.establish_cpu_s = cpu1.since(&cpu0).1;
    r.establish_sys_share = cpu1.sys_share(&cpu0);
    r.peers_done = peers_done.unwrap_or(r.establish);
    r.reached = node.connections().len();
    r.failed = children.failed;
    r.retries = children.retries;
    r.node_failures = counter.failures.load(Ordering::Acquire);
    r.failure_sample = counter
        .failure_sample
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    r.lagged = counter.lagged.load(Ordering::Acquire);
    r.deciles = counter
        .milestones
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(n, t)| (*n, t.saturating_duration_since(start)))
        .collect();
    r.rss_kib[2] = rss();
    r.anon_kib[1] = procfs::status_kib("RssAnon").unwrap_or(0);
    r.data_kib[1] = procfs::status_kib("VmData").unwrap_or(0);
    r.tcp_mem_kib[1] = procfs::tcp_socket_mem_kib();
    r.threads = procfs::threads();
    let audit = node.audit().await;
    if !audit.is_empty() {
        eprintln!("audit: {audit:?}");
    }

    // 2. Idle: a measurement window, nothing is awaited.
    let (cpu_a, t_a) = (Cpu::now(), Instant::now());
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let (cpu_b, wall) = (Cpu::now(), t_a.elapsed().as_secs_f64());
    let (ticks_s, run_s) = cpu_b.since(&cpu_a);
    r.idle = (
        wall,
        ticks_s,
        run_s,
        cpu_b.switches.saturating_sub(cpu_a.switches),
    );
    r.rss_kib[3] = rss();

    // 3. Broadcasts, one at a time: each until every peer has it.
    let message = RawMessage {
        tag: APP_TAG,
        body: vec![0xAB; o.body_len],
    };
    for round in 1..=o.rounds as u64 {
        let cpu0 = Cpu::now();
        let t = Instant::now();
        let b = node.broadcast(&message, |_| false);
        let call = t.elapsed();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !children.received_round(round) {
            tokio::select! {
                line = children.next() => line?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("broadcast {round}: not every peer got it in 60 s").into())
                }
            }
        }
        let total = t.elapsed();
        let cpu1 = Cpu::now();
        r.rounds.push(Round {
            call,
            total,
            cpu_s: cpu1.since(&cpu0).1,
            sys_share: cpu1.sys_share(&cpu0),
            sent: b.sent,
            refused: b.refused,
        });
    }
    r.rss_kib[4] = rss();

    // 4. Gather: every peer sends one message; the application takes them all.
    let cpu0 = Cpu::now();
    let t = Instant::now();
    children.send_all("ping").await?;
    let mut got = 0;
    while got < r.reached {
        match tokio::time::timeout(Duration::from_secs(60), node.recv_any()).await {
            Ok(Some(m)) if m.message.body.len() == o.body_len => got += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                eprintln!("gather: {got} of {} messages arrived", r.reached);
                break;
            }
        }
    }
    if got == r.reached {
        r.gather = Some((t.elapsed(), Cpu::now().since(&cpu0).1));
    }
    r.rss_kib[5] = rss();
    r.data_kib[2] = procfs::status_kib("VmData").unwrap_or(0);
    r.hwm_kib = procfs::status_kib("VmHWM").unwrap_or(0);

    // 5. Shutdown with every connection open.
    let t = Instant::now();
    node.shutdown().await;
    r.shutdown = t.elapsed();
    children.stop().await;
    Ok(r)
}
