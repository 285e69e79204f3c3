//! Connection manager benchmark with a baseline measured in the same run (STYLE.md): the
//! time to choose victims (one victim for evict-to-admit, 16 victims, a full trim) among
//! N = 1 000, 10 000 and 100 000 connections, against go-libp2p's method of sorting every
//! connection by its peer's value; and the cost of a tag update and of a (decayed) value
//! read against a plain `HashMap<PeerId, HashMap<String, i64>>`.
//!
//! Individual timings are needed for p50/p99, so this is a plain `main` timing each call
//! with `Instant` (`harness = false`), not criterion. Run with
//! `cargo bench -p peerpool-proto --bench connmgr`.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use peerpool_proto::connmgr::{Bump, ConnManager, ConnManagerConfig, Decay};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::policy::{Bounds, ConnectionId};
use peerpool_proto::pool::Time;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Sizes and repetitions of the victim choices (per size).
const SIZES: [(usize, usize); 3] = [(1_000, 200), (10_000, 200), (100_000, 100)];
/// Repetitions of the full trim per size.
const TRIM_REPS: [usize; 3] = [20, 20, 10];
/// Victims asked of `victims(now, K)`.
const K: usize = 16;
/// Plain tag values are drawn from `0..TAG_RANGE` (many ties, on purpose).
const TAG_RANGE: i64 = 10;
/// Share of peers with a decaying tag.
const DECAYING_SHARE: f64 = 0.2;
/// The decaying tag ticks every second (`Decay::Fixed(1)`).
const TICK: Duration = Duration::from_secs(1);
/// `now` advances this much between two repetitions of a choice: one repetition in 40
/// crosses a tick, so every decaying value is brought up to date in it.
const STEP: Duration = Duration::from_millis(25);
/// Operations per timed batch, and batches, for the tag/read costs.
const OP_BATCH: usize = 10_000;
const OP_ROUNDS: usize = 30;
const GRACE: Duration = Duration::from_secs(60);
const T0: u64 = 1_700_000_000;
const DECAYING: &str = "bench-decaying";
const TAG: &str = "score";

/// One connection of the generated population.
#[derive(Debug, Clone, Copy)]
struct Conn {
    id: ConnectionId,
    peer: PeerId,
    ip: IpAddr,
    direction: Direction,
    opened: Time,
    tag: i64,
    /// The bump of its peer's decaying tag, if any.
    decaying: Option<i64>,
}

fn peer_id(i: usize) -> PeerId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b[8..].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    PeerId(b)
}

/// `n` connections, one per peer, opened over the hour before `start` (5 % of them within
/// the grace period), sorted by opening time.
fn population(n: usize, start: Time, rng: &mut ChaCha8Rng) -> Vec<Conn> {
    let mut conns: Vec<Conn> = (0..n)
        .map(|i| {
            // 10 % in four crowded /16s (10.0–10.3), the rest over 64 × 256 = 16 384 /16s.
            let ip = if rng.random_bool(0.1) {
                Ipv4Addr::new(10, rng.random_range(0..4), rng.random(), rng.random())
            } else {
                Ipv4Addr::new(
                    rng.random_range(11..75),
                    rng.random(),
                    rng.random(),
                    rng.random(),
                )
            };
            let age_ms = if rng.random_bool(0.05) {
                rng.random_range(0..GRACE.as_millis() as u64)
            } else {
                rng.random_range(GRACE.as_millis() as u64 + 1_000..3_600_000)
            };
            Conn {
                id: ConnectionId(i as u64),
                peer: peer_id(i),
                ip: IpAddr::V4(ip),
                direction: if rng.random_bool(2.0 / 3.0) {
                    Direction::Incoming
                } else {
                    Direction::Outgoing
                },
                opened: Time::from_unix(
                    start
                        .as_unix()
                        .saturating_sub(Duration::from_millis(age_ms)),
                ),
                tag: rng.random_range(0..TAG_RANGE),
                decaying: rng
                    .random_bool(DECAYING_SHARE)
                    .then(|| rng.random_range(1_000..2_000)),
            }
        })
        .collect();
    conns.sort_by_key(|c| (c.opened, c.id));
    conns
}

/// The manager fed with `conns` (opened in time order, each peer tagged, some bumped, a
/// round-trip time for every peer, a recent useful message for 10 %).
fn manager(n: usize, conns: &[Conn], rng: &mut ChaCha8Rng) -> ConnManager {
    let bounds = Bounds {
        min_threshold: n / 10,
        min_target: n / 5,
        max_target: n * 8 / 10,
        max_threshold: n - 1,
    };
    // `ConnManagerConfig` is `#[non_exhaustive]`: no struct expression outside the crate.
    let mut config = ConnManagerConfig::default();
    config.low_water = Some(n * 8 / 10);
    config.high_water = Some(n - 1);
    config.max_incoming_per_netgroup = Some((n / 100).max(2));
    let limits = config.limits(&bounds, n).unwrap();
    let mut m = ConnManager::new(limits, 0x5eed);
    let registered = Time::from_secs(T0 - 4_000);
    m.register_decaying_tag(
        registered,
        DECAYING,
        TICK,
        Decay::Fixed(1),
        Bump::SumUnbounded,
    )
    .unwrap();
    for c in conns {
        m.connection_opened(c.opened, c.id, c.peer, c.ip, c.direction, false);
        m.tag_peer(c.opened, c.peer, TAG, c.tag).unwrap();
        if let Some(b) = c.decaying {
            m.bump(c.opened, c.peer, DECAYING, b).unwrap();
        }
        m.record_rtt(&c.peer, Duration::from_millis(rng.random_range(5..300)));
        if rng.random_bool(0.1) {
            m.record_useful(c.opened, &c.peer);
        }
    }
    while m.poll_event().is_some() {}
    m
}

/// go-libp2p's side: per peer, the sum of its plain tags and its decaying values as
/// go-libp2p keeps them (the value stored, brought down by the decayer's own sweep, so a
/// read applies nothing).
#[derive(Debug, Clone, Default)]
struct BasePeer {
    tags: i64,
    decaying: HashMap<&'static str, i64>,
}

#[derive(Debug)]
struct Baseline {
    peers: HashMap<PeerId, BasePeer>,
    conns: Vec<(ConnectionId, PeerId, Time)>,
}

impl Baseline {
    fn new(conns: &[Conn]) -> Self {
        let mut peers: HashMap<PeerId, BasePeer> = HashMap::new();
        for c in conns {
            let p = peers.entry(c.peer).or_default();
            p.tags += c.tag;
            if let Some(b) = c.decaying {
                p.decaying.insert(DECAYING, b);
            }
        }
        Baseline {
            peers,
            conns: conns.iter().map(|c| (c.id, c.peer, c.opened)).collect(),
        }
    }

    /// "Sort everything": every connection out of its grace period with its peer's value,
    /// sorted by (value, youngest first, id), the first `k` taken.
    fn choose(&self, now: Time, k: usize) -> Vec<ConnectionId> {
        let mut all: Vec<(i64, Reverse<Time>, ConnectionId)> = self
            .conns
            .iter()
            .filter(|(_, _, opened)| now.saturating_duration_since(*opened) >= GRACE)
            .map(|(id, peer, opened)| {
                let p = &self.peers[peer];
                let value = p.tags + p.decaying.values().sum::<i64>();
                (value, Reverse(*opened), *id)
            })
            .collect();
        all.sort_unstable();
        all.truncate(k);
        all.into_iter().map(|(_, _, id)| id).collect()
    }
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[Duration], p: usize) -> Duration {
    let rank = (v.len() * p).div_ceil(100).max(1);
    v[rank - 1]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Median, 99th percentile and maximum of a set of timings.
struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Stats {
            p50: pct(&v, 50),
            p99: pct(&v, 99),
            max: pct(&v, 100),
            n: v.len(),
        }
    }
}

fn row(n: usize, what: &str, k: usize, mgr: &Stats, base: &Stats) -> String {
    let r50 = mgr.p50.as_secs_f64() / base.p50.as_secs_f64();
    let r99 = mgr.p99.as_secs_f64() / base.p99.as_secs_f64();
    format!(
        "| {n:>7} | {what:<20} | {k:>6} | {:>4} | {:>9} | {:>9} | {:>9} | {:>9} | {r50:>6.3} | {r99:>6.3} |",
        mgr.n,
        us(mgr.p50),
        us(mgr.p99),
        us(base.p50),
        us(base.p99),
    )
}

/// Times `mgr` on `m` and `base` alternately `reps` times (after 3 untimed warm-up calls
/// each), advancing `now` by `STEP` before each repetition; `drain` runs after each `mgr`
/// call, outside the timing.
fn compare(
    m: &mut ConnManager,
    now: &mut Time,
    reps: usize,
    mut mgr: impl FnMut(&mut ConnManager, Time),
    mut base: impl FnMut(Time),
    drain: impl Fn(&mut ConnManager),
) -> (Stats, Stats) {
    for _ in 0..3 {
        mgr(m, *now);
        drain(m);
        base(*now);
    }
    let mut tm = Vec::with_capacity(reps);
    let mut tb = Vec::with_capacity(reps);
    for _ in 0..reps {
        *now = now.saturating_add(STEP);
        let t = Instant::now();
        mgr(m, *now);
        tm.push(t.elapsed());
        drain(m);
        let t = Instant::now();
        base(*now);
        tb.push(t.elapsed());
    }
    (Stats::of(tm), Stats::of(tb))
}

fn drain_events(m: &mut ConnManager) {
    while m.poll_event().is_some() {}
}

/// The three choices at size `n`, then the per-operation costs; returns the table rows.
fn bench_size(n: usize, reps: usize, trim_reps: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Time::from_secs(T0);
    let conns = population(n, start, &mut rng);
    let t = Instant::now();
    let mut m = manager(n, &conns, &mut rng);
    let setup = t.elapsed();
    let base = Baseline::new(&conns);
    let mut now = start;
    // First use after set-up: drops the set-up's expired temporary entries (one-time).
    black_box(m.victims(now, K));
    eprintln!(
        "N = {n}: set-up {:.0} ms ({} connections, {} peers with a decaying tag)",
        setup.as_secs_f64() * 1e3,
        m.connection_count(),
        conns.iter().filter(|c| c.decaying.is_some()).count()
    );
    let fresh = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut rows = Vec::new();

    // (a) One victim to admit a newcomer from a netgroup the node has no connection in.
    // `evict_for` queues one event per call: drained after each call, outside the timing.
    let (a, b) = compare(
        &mut m,
        &mut now,
        reps,
        |m, now| {
            let v = m.evict_for(now, fresh);
            assert!(v.is_some(), "no evictable connection");
            black_box(v);
        },
        |now| {
            black_box(base.choose(now, 1));
        },
        drain_events,
    );
    rows.push(row(n, "evict_for", 1, &a, &b));

    // (b) 16 victims (no event).
    let (a, b) = compare(
        &mut m,
        &mut now,
        reps,
        |m, now| {
            let v = m.victims(now, K);
            assert_eq!(v.len(), K);
            black_box(v);
        },
        |now| {
            black_box(base.choose(now, K));
        },
        |_| {},
    );
    rows.push(row(n, "victims(now, 16)", K, &a, &b));

    // (c) The full trim when the count (n) is just above the high watermark (n - 1): down
    // to the low watermark, 0.2 n victims. Its events are drained outside the timing.
    let excess = n - n * 8 / 10;
    let (a, b) = compare(
        &mut m,
        &mut now,
        trim_reps,
        |m, now| {
            let v = m.trim(now, n);
            assert_eq!(v.len(), excess);
            black_box(v);
        },
        |now| {
            black_box(base.choose(now, excess));
        },
        drain_events,
    );
    rows.push(row(n, "trim(now, N)", excess, &a, &b));

    let op_rows = ops(n, &mut m, &conns, &mut now, &mut rng);
    (rows, op_rows)
}

/// ns per operation of each batch.
fn per_op(d: Duration, ops: usize) -> Duration {
    d / u32::try_from(ops).unwrap()
}

fn ns(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e9)
}

fn op_row(n: usize, what: &str, mgr: &Stats, base: &Stats) -> String {
    format!(
        "| {n:>7} | {what:<28} | {:>6} | {:>6} | {:>6} | {:>6} | {:>5.1} |",
        ns(mgr.p50),
        ns(mgr.max),
        ns(base.p50),
        ns(base.max),
        mgr.p50.as_secs_f64() / base.p50.as_secs_f64(),
    )
}

/// Tag update and value reads, in batches, against `HashMap<PeerId, HashMap<String, i64>>`.
fn ops(
    n: usize,
    m: &mut ConnManager,
    conns: &[Conn],
    now: &mut Time,
    rng: &mut ChaCha8Rng,
) -> Vec<String> {
    let mut rows = Vec::new();
    let mut map: HashMap<PeerId, HashMap<String, i64>> = HashMap::new();
    for c in conns {
        let t = map.entry(c.peer).or_default();
        t.insert(TAG.to_owned(), c.tag);
        if let Some(b) = c.decaying {
            t.insert(DECAYING.to_owned(), b);
        }
    }
    let mut order: Vec<PeerId> = conns.iter().map(|c| c.peer).collect();
    let decaying: Vec<PeerId> = conns
        .iter()
        .filter(|c| c.decaying.is_some())
        .map(|c| c.peer)
        .collect();

    // tag_peer on an existing peer (random peers, random order).
    let (mut tm, mut tb) = (Vec::new(), Vec::new());
    for round in 0..=OP_ROUNDS {
        order.shuffle(rng);
        let batch = &order[..OP_BATCH.min(order.len())];
        let w: i64 = rng.random_range(0..TAG_RANGE);
        let t = Instant::now();
        for p in batch {
            m.tag_peer(*now, *p, TAG, w).unwrap();
        }
        let dm = per_op(t.elapsed(), batch.len());
        let t = Instant::now();
        for p in batch {
            map.get_mut(p).unwrap().insert(TAG.to_owned(), w);
        }
        let db = per_op(t.elapsed(), batch.len());
        if round > 0 {
            tm.push(dm);
            tb.push(db);
        }
    }
    rows.push(op_row(
        n,
        "tag_peer (existing peer)",
        &Stats::of(tm),
        &Stats::of(tb),
    ));

    // peer_value on the peers with a decaying tag: first just after a tick (every read
    // applies one tick), then at that same instant (nothing to apply). In both loops each
    // pass reads every such peer once in a new random order, the manager then the
    // baseline, so both find their data as warm (or cold) as each other.
    let mut batch = decaying.clone();
    let mut sum = 0i64;
    for ticked in [true, false] {
        let (mut tm, mut tb) = (Vec::new(), Vec::new());
        for round in 0..=OP_ROUNDS {
            batch.shuffle(rng);
            if ticked {
                *now = now.saturating_add(TICK);
            }
            let t = Instant::now();
            for p in &batch {
                sum = sum.wrapping_add(m.peer_value(*now, p).unwrap());
            }
            let dm = per_op(t.elapsed(), batch.len());
            let t = Instant::now();
            for p in &batch {
                sum = sum.wrapping_add(map.get(p).unwrap().values().sum::<i64>());
            }
            let db = per_op(t.elapsed(), batch.len());
            if round > 0 {
                tm.push(dm);
                tb.push(db);
            }
        }
        let what = if ticked {
            "peer_value, 1 tick to apply"
        } else {
            "peer_value, nothing to apply"
        };
        rows.push(op_row(n, what, &Stats::of(tm), &Stats::of(tb)));
    }
    black_box(sum);
    rows
}

fn main() {
    let started = Instant::now();
    let (mut choice_rows, mut op_rows) = (Vec::new(), Vec::new());
    for (i, &(n, reps)) in SIZES.iter().enumerate() {
        let (c, o) = bench_size(n, reps, TRIM_REPS[i], 42 + i as u64);
        choice_rows.extend(c);
        op_rows.extend(o);
    }
    println!();
    println!(
        "Choosing victims, µs per call (p50/p99, nearest rank: p99 is the maximum below 100 \
         reps), manager vs baseline \
         \"sort every connection by (value, youngest)\", alternated in the same run:"
    );
    println!();
    println!(
        "|       N | choice               | victims | reps | mgr p50   | mgr p99   | base p50  | base p99  | ×p50  | ×p99  |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &choice_rows {
        println!("{r}");
    }
    println!();
    println!(
        "Tag update and value read, ns per operation (p50 and maximum over {OP_ROUNDS} batches of up to \
         {OP_BATCH}), baseline HashMap<PeerId, HashMap<String, i64>> insert (tag) or get + sum \
         (reads):"
    );
    println!();
    println!("|       N | operation                    | mgr p50 | mgr max | base p50 | base max | ×p50 |");
    println!("|---|---|---|---|---|---|---|");
    for r in &op_rows {
        println!("{r}");
    }
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}
