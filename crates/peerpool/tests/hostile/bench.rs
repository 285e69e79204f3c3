//! The bench every hostile test runs on: the node under test (small buffer budget,
//! room for a few hundred connections), honest peers that keep exchanging messages with
//! it (their throughput and round-trip times measured before and during the attack), a
//! tally of the node's events, a sampler of its buffered bytes, and the process's memory
//! figures from `/proc/self/status`.
//!
//! Tests run one at a time (a lock), so each one's throughput and peak RSS are its own.

use crate::common::*;
use crate::events::EventLog;
use crate::raw::{attacker_ip, session};
use peerpool::socket::Established;
use peerpool::{Connection, NodeConfig};
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The node-wide buffer budget of the node under test: small, so a violation shows.
pub const BUDGET: usize = 8 << 20;
/// Its message share (three quarters of the budget).
pub const SHARE: usize = BUDGET - BUDGET / 4;
/// The largest application message it accepts.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Tag of the honest peers' messages, echoed by the node's application.
pub const ECHO_TAG: u16 = 0x100;
/// Body of an honest message.
const ECHO_BODY: usize = 1024;
/// Each honest peer sends at most one message per this interval (an offered load, so the
/// figures measure what the node delivers, not how much CPU the test can burn).
const PACE: Duration = Duration::from_millis(5);
/// How long the "before" throughput is measured.
const BEFORE: Duration = Duration::from_secs(1);
/// The shortest window of a "during" figure.
const MIN_DURING: Duration = Duration::from_secs(1);
/// Safety net for every wait on a condition.
pub const LIMIT: Duration = Duration::from_secs(30);

/// One hostile test at a time in this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Panics anywhere in the process (any thread, any task).
static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

fn count_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Resident memory of this process, KiB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    /// `VmRSS`: now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak since the last reset.
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/self/status`.
pub fn mem() -> Mem {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// Resets `VmHWM` to the current RSS (Linux: `clear_refs` 5), so the peak is this test's.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Counters of the honest traffic.
#[derive(Default)]
struct Counters {
    echoes: AtomicU64,
    /// Longest round trip since the last window, nanoseconds.
    max_rtt: AtomicU64,
    /// Per honest peer: when its message still waiting for an echo was sent (nanoseconds
    /// since `base`, plus one), or 0.
    outstanding: Vec<AtomicU64>,
}

/// A measuring window over the honest traffic.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    at: Instant,
    echoes: u64,
}

/// Honest throughput over a window.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Round trips (message to the node and its echo back) per second, all honest peers.
    pub per_sec: f64,
    /// Application bytes per second, both directions.
    pub bytes_per_sec: f64,
    /// Longest round trip in the window, including a message still waiting at its end.
    pub max_rtt: Duration,
    pub elapsed: Duration,
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} msg/s ({:.0} KiB/s), max rtt {:.1} ms over {:.1} s",
            self.per_sec,
            self.bytes_per_sec / 1024.0,
            self.max_rtt.as_secs_f64() * 1000.0,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The node under test and its honest peers.
pub struct Bench {
    pub name: &'static str,
    pub node: TestNode,
    pub log: EventLog,
    pub honest: Vec<TestNode>,
    counters: Arc<Counters>,
    base: Instant,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    max_buffered: Arc<AtomicUsize>,
    mem_start: Mem,
    panics_at_start: usize,
    before: Option<Throughput>,
    started: Instant,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// The node under test's settings: a budget of 8 MiB, messages up to 1 MiB, room for a
/// few hundred connections without trims, events enough to count every one.
fn node_config(seed: u64) -> NodeConfig {
    let mut c = config(seed, "127.0.0.1");
    c.buffer_budget_bytes = BUDGET;
    c.queues.max_message_bytes = MAX_MESSAGE;
    c.pool.max_connections = 400;
    c.policy.maintenance.expected_connections = Some(300);
    c.event_capacity = 1 << 15;
    c
}

impl Bench {
    /// Starts the node under test (its config changed by `tweak`) and `honest` peers
    /// connected to it, exchanging messages from now on.
    pub async fn start(
        name: &'static str,
        seed: u64,
        honest: usize,
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> Bench {
        let serial = SERIAL.lock().await;
        let started = Instant::now();
        count_panics();
        reset_peak();
        let mem_start = mem();
        let panics_at_start = PANICS.load(Ordering::SeqCst);
        let mut c = node_config(seed);
        tweak(&mut c);
        let node = start(c).await;
        let stop = CancellationToken::new();
        let (log, log_task) = EventLog::spawn(node.handle.events(), stop.clone());
        let mut tasks = vec![log_task];
        let mut peers = Vec::new();
        for i in 0..honest {
            let peer = start(config(seed * 1000 + i as u64, &honest_ip(i))).await;
            peer.handle
                .connect(Point::from(node.addr), None)
                .await
                .unwrap();
            peers.push(peer);
        }
        let ids: Vec<PeerId> = peers.iter().map(|p| p.handle.peer_id()).collect();
        log.wait("honest peers established", |t| {
            ids.iter()
                .all(|id| t.established.iter().any(|(p, _)| p == id))
        })
        .await;
        // The node's application: echoes honest messages, drops everything else.
        let echo = {
            let node = node.handle.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let r = tokio::select! {
                        r = node.recv_any() => r,
                        _ = stop.cancelled() => return,
                    };
                    let Some(r) = r else { return };
                    if r.message.tag == ECHO_TAG {
                        let _ = node.send(&r.peer_id, &r.message).await;
                    }
                }
            })
        };
        tasks.push(echo);
        let counters = Arc::new(Counters {
            outstanding: (0..honest).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        });
        let base = Instant::now();
        for (i, peer) in peers.iter().enumerate() {
            let conn = connected(&peer.handle, node.handle.peer_id()).await;
            tasks.push(tokio::spawn(honest_loop(
                conn,
                i,
                counters.clone(),
                base,
                stop.clone(),
            )));
        }
        let max_buffered = Arc::new(AtomicUsize::new(0));
        {
            let node = node.handle.clone();
            let max = max_buffered.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    max.fetch_max(node.buffered_bytes(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Bench {
            name,
            node,
            log,
            honest: peers,
            counters,
            base,
            stop,
            tasks,
            max_buffered,
            mem_start,
            panics_at_start,
            before: None,
            started,
            _serial: serial,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    pub fn honest_ids(&self) -> Vec<PeerId> {
        self.honest.iter().map(|p| p.handle.peer_id()).collect()
    }

    /// Opens a measuring window.
    pub fn window(&self) -> Window {
        self.counters.max_rtt.store(0, Ordering::SeqCst);
        Window {
            at: Instant::now(),
            echoes: self.counters.echoes.load(Ordering::SeqCst),
        }
    }

    /// The honest throughput since `w`.
    pub fn since(&self, w: Window) -> Throughput {
        let now = Instant::now();
        let elapsed = now - w.at;
        let echoes = self.counters.echoes.load(Ordering::SeqCst) - w.echoes;
        let now_nanos = (now - self.base).as_nanos() as u64 + 1;
        let waiting = self
            .counters
            .outstanding
            .iter()
            .map(|o| o.load(Ordering::SeqCst))
            .filter(|&t| t != 0)
            .map(|t| now_nanos.saturating_sub(t))
            .max()
            .unwrap_or(0);
        let max_rtt = self.counters.max_rtt.load(Ordering::SeqCst).max(waiting);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let per_sec = echoes as f64 / secs;
        Throughput {
            per_sec,
            bytes_per_sec: per_sec * 2.0 * ECHO_BODY as f64,
            max_rtt: Duration::from_nanos(max_rtt),
            elapsed,
        }
    }

    /// The honest throughput since `w`, over at least a second: an attack shorter than
    /// that is measured with its aftermath.
    pub async fn during(&self, w: Window) -> Throughput {
        tokio::time::sleep_until(w.at + MIN_DURING).await;
        self.since(w)
    }

    /// Measures the honest throughput before the attack (one second).
    pub async fn measure_before(&mut self) -> Throughput {
        let w = self.window();
        tokio::time::sleep(BEFORE).await;
        let t = self.since(w);
        eprintln!("[{}] honest throughput before: {t}", self.name);
        assert!(t.per_sec > 0.0, "no honest traffic before the attack");
        self.before = Some(t);
        t
    }

    /// Checks the honest throughput during the attack against the one before: at least
    /// a tenth of it, and no honest message waited more than `max_rtt`.
    pub fn check_during(&self, during: Throughput, max_rtt: Duration) {
        let before = self.before.expect("measure_before first");
        eprintln!(
            "[{}] honest throughput during: {during} ({:.0} % of before)",
            self.name,
            100.0 * during.per_sec / before.per_sec
        );
        assert!(
            during.per_sec >= before.per_sec / 10.0,
            "honest throughput fell from {:.0} to {:.0} msg/s",
            before.per_sec,
            during.per_sec
        );
        assert!(
            during.max_rtt <= max_rtt,
            "an honest message waited {:?} for its echo (allowed {max_rtt:?})",
            during.max_rtt
        );
    }

    /// The largest `buffered_bytes` sampled so far.
    pub fn max_buffered(&self) -> usize {
        self.max_buffered
            .load(Ordering::Relaxed)
            .max(self.node.handle.buffered_bytes())
    }

    /// Prints the memory figures and asserts the peak RSS grew by less than `rss_growth`.
    pub fn check_memory(&self, rss_growth: usize) -> Mem {
        let m = mem();
        let grown = (m.hwm_kib.saturating_sub(self.mem_start.rss_kib) * 1024) as usize;
        eprintln!(
            "[{}] memory: RSS at start {} KiB, peak {} KiB (+{} KiB), now {} KiB; node buffered at most {} KiB (budget {} KiB, message share {} KiB)",
            self.name,
            self.mem_start.rss_kib,
            m.hwm_kib,
            grown / 1024,
            m.rss_kib,
            self.max_buffered() / 1024,
            BUDGET / 1024,
            SHARE / 1024,
        );
        assert!(
            self.max_buffered() <= SHARE,
            "the node buffered {} bytes, above its message share {SHARE}",
            self.max_buffered()
        );
        assert!(
            grown <= rss_growth,
            "peak RSS grew by {grown} bytes (allowed {rss_growth})"
        );
        m
    }

    /// `n` real sessions with the node, from `attacker_ip(group, i)` with identities
    /// `seed + i`, ten at a time (the node's per-netgroup cap on handshakes in flight),
    /// each batch established on the node's side before the next.
    pub async fn sessions(&self, group: u8, seed: u64, n: usize) -> Vec<Attacker> {
        let mut out: Vec<Attacker> = Vec::new();
        let ids: Vec<usize> = (0..n).collect();
        for batch in ids.chunks(10) {
            let made = futures_util::future::join_all(batch.iter().map(|&i| async move {
                let ip = attacker_ip(group, i);
                let est = session(self.addr(), ip, seed + i as u64).await;
                Attacker {
                    peer_id: identity(seed + i as u64).peer_id,
                    ip,
                    est,
                }
            }))
            .await;
            let wanted: Vec<PeerId> = made.iter().map(|a| a.peer_id).collect();
            self.log
                .wait("attackers' sessions established", |t| {
                    wanted
                        .iter()
                        .all(|id| t.established.iter().any(|(p, _)| p == id))
                })
                .await;
            out.extend(made);
        }
        out
    }

    /// The node is up and well: the honest peers are still connected (none closed), its
    /// invariants hold, it accepts a newcomer that exchanges messages both ways, and
    /// nothing panicked anywhere in the process. Then everything is shut down.
    pub async fn finish(self) {
        let node = &self.node.handle;
        assert!(!node.is_stopped(), "the node stopped");
        let honest: HashSet<PeerId> = self.honest_ids().into_iter().collect();
        self.log.with(|t| {
            let lost: Vec<_> = t
                .closed
                .iter()
                .filter(|(p, _)| honest.contains(p))
                .collect();
            assert!(lost.is_empty(), "honest connections closed: {lost:?}");
        });
        for id in &honest {
            assert!(
                node.connection(id).is_some(),
                "honest peer {id} disconnected"
            );
        }
        let audit = node.audit().await;
        assert!(audit.is_empty(), "broken invariants: {audit:?}");
        // The test's own tasks stop (the echo would take the newcomer's messages).
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let newcomer = start(config(999_999, "127.0.0.250")).await;
        newcomer
            .handle
            .connect(Point::from(self.node.addr), None)
            .await
            .expect("a newcomer is accepted after the attack");
        assert_exchange(&newcomer.handle, node, 0x10).await;
        assert_exchange(node, &newcomer.handle, 0x11).await;
        let panics = PANICS.load(Ordering::SeqCst) - self.panics_at_start;
        assert_eq!(panics, 0, "{panics} panics during the test");
        newcomer.handle.shutdown().await;
        for p in &self.honest {
            p.handle.shutdown().await;
        }
        self.node.handle.shutdown().await;
        eprintln!(
            "[{}] passed in {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A raw client with an established session.
pub struct Attacker {
    pub peer_id: PeerId,
    pub ip: Ipv4Addr,
    pub est: Established<TcpStream>,
}

/// The address of honest peer `i`: 127.0.0.2 onwards.
pub fn honest_ip(i: usize) -> String {
    format!("127.0.0.{}", 2 + i)
}

/// One honest peer: sends a message and waits for its echo, at most one per `PACE`;
/// reads whatever else the node sends meanwhile (its application's broadcasts).
async fn honest_loop(
    conn: Connection<RawMessage>,
    i: usize,
    c: Arc<Counters>,
    base: Instant,
    stop: CancellationToken,
) {
    let mut seq = 0u32;
    let mut next = Instant::now();
    // The message waiting for its echo, and when it was sent.
    let mut waiting: Option<(RawMessage, Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next), if waiting.is_none() => {
                let mut body = vec![0u8; ECHO_BODY];
                body[..4].copy_from_slice(&seq.to_be_bytes());
                let msg = RawMessage { tag: ECHO_TAG, body };
                let sent = Instant::now();
                c.outstanding[i].store((sent - base).as_nanos() as u64 + 1, Ordering::SeqCst);
                tokio::select! {
                    r = conn.send(&msg) => if r.is_err() { return },
                    _ = stop.cancelled() => return,
                }
                next = sent + PACE;
                waiting = Some((msg, sent));
            }
            m = conn.recv() => {
                let Some(m) = m else { return };
                if m.tag != ECHO_TAG {
                    continue;
                }
                let Some((msg, sent)) = waiting.take() else {
                    panic!("an echo nobody waited for");
                };
                assert!(m == msg, "echo {seq} out of order");
                c.max_rtt.fetch_max(sent.elapsed().as_nanos() as u64, Ordering::SeqCst);
                c.outstanding[i].store(0, Ordering::SeqCst);
                c.echoes.fetch_add(1, Ordering::SeqCst);
                seq = seq.wrapping_add(1);
            }
            _ = stop.cancelled() => return,
        }
    }
}
