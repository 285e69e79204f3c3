//! I/O scheduler benchmarks over real loopback TCP (127.0.0.1) and real time; each figure is
//! reported against a baseline measured in the same run. Results go to
//! docs/BENCHMARKS-scheduler.md.
//!
//! - accuracy and fairness, octez's "trivial-quota" scenario: 8 clients, 1 MiB/s download
//!   cap, 256 KiB/s upload cap, 16 KiB buffers and queues, 5 s;
//! - accuracy and fairness, 100 connections under a 10 MiB/s download cap with unequal
//!   demand (Jain's index against the max-min fair allocation);
//! - overhead: one uncapped connection through the scheduler versus raw `TcpStream`.
//!
//! Run: `cargo bench -p peerpool --bench io_scheduler_sched` (`SCHED_BENCH=overhead` runs only
//! the overhead part, `SCHED_BENCH_ROUNDS=n` sets its number of rounds, default 9).

use bytes::Bytes;
use peerpool::io_scheduler::{IoScheduler, IoSchedulerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

async fn tcp_pair(listener: &TcpListener) -> BenchResult<(TcpStream, TcpStream)> {
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client?;
    let (server, _) = accepted?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if sq == 0.0 {
        return 0.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

/// Max-min fair allocation of `cap` between `demands` (None = unlimited), bytes per second.
fn max_min_fair(cap: f64, demands: &[Option<f64>]) -> Vec<f64> {
    let mut alloc = vec![0.0; demands.len()];
    let mut open: Vec<usize> = (0..demands.len()).collect();
    let mut left = cap;
    while !open.is_empty() {
        let share = left / open.len() as f64;
        let (sat, rest): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&i| demands[i].is_some_and(|d| d <= share));
        if sat.is_empty() {
            for i in rest {
                alloc[i] = share;
            }
            break;
        }
        for i in sat {
            let d = demands[i].unwrap_or(0.0);
            alloc[i] = d;
            left -= d;
        }
        open = rest;
    }
    alloc
}

fn counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

fn snapshot(cs: &[Arc<AtomicU64>]) -> Vec<u64> {
    cs.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn delta(after: &[u64], before: &[u64], secs: f64) -> Vec<f64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a - b) as f64 / secs)
        .collect()
}

/// Raw sender: writes 16 KiB buffers, at most `rate` bytes per second when given.
fn spawn_sender(mut w: tokio::net::tcp::OwnedWriteHalf, rate: Option<u64>, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let buf = vec![0xa5u8; 16 * 1024];
        match rate {
            None => while !stop.load(Ordering::Relaxed) && w.write_all(&buf).await.is_ok() {},
            Some(rate) => {
                let tick = Duration::from_millis(10);
                let per_tick = (rate / 100) as usize;
                let mut iv = tokio::time::interval(tick);
                while !stop.load(Ordering::Relaxed) {
                    iv.tick().await;
                    if w.write_all(&buf[..per_tick.min(buf.len())]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Raw receiver counting bytes.
fn spawn_raw_counter(mut r: tokio::net::tcp::OwnedReadHalf, count: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
}

/// Scheduled receiver counting bytes.
fn spawn_sched_counter<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    count: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
}

struct Flow {
    rates: Vec<f64>,
}

impl Flow {
    fn total(&self) -> f64 {
        self.rates.iter().sum()
    }
}

fn report(name: &str, cap: u64, flow: &Flow, fair: Option<&[f64]>) {
    let total = flow.total();
    let norm: Vec<f64> = match fair {
        Some(f) => flow.rates.iter().zip(f).map(|(x, f)| x / f).collect(),
        None => flow.rates.clone(),
    };
    let (min, max) = flow
        .rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), x| (a.min(*x), b.max(*x)));
    println!(
        "| {name} | {:.1} KiB/s | {:.1} KiB/s | {:+.2} % | {:.4} | {:.1}..{:.1} KiB/s |",
        cap as f64 / 1024.0,
        total / 1024.0,
        (total / cap as f64 - 1.0) * 100.0,
        jain(&norm),
        min / 1024.0,
        max / 1024.0
    );
}

/// Octez's trivial-quota scenario, through the scheduler (`scheduled = true`) or raw.
async fn octez_scenario(scheduled: bool) -> BenchResult<(Flow, Flow, Flow, Flow)> {
    let (down_cap, up_cap) = (MIB, 256 * KIB);
    let sched = IoScheduler::new(IoSchedulerConfig {
        max_download_speed: Some(down_cap),
        max_upload_speed: Some(up_cap),
        read_buffer_size: 16 * 1024,
        read_queue_size: 16 * 1024,
        write_queue_size: 16 * 1024,
        ..IoSchedulerConfig::default()
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let mut conns = Vec::new();
    for _ in 0..8 {
        let (client, server) = tcp_pair(&listener).await?;
        let (cr, cw) = client.into_split();
        spawn_sender(cw, None, stop.clone());
        let (d, u) = (counter(), counter());
        spawn_raw_counter(cr, u.clone());
        if scheduled {
            let conn = sched.register(server)?;
            let (r, w) = conn.split();
            spawn_sched_counter(r, d.clone());
            let stop = stop.clone();
            let w2 = w.clone();
            tokio::spawn(async move {
                let buf = Bytes::from(vec![0x3cu8; 16 * 1024]);
                while !stop.load(Ordering::Relaxed) && w2.write(buf.clone()).await.is_ok() {}
            });
            conns.push(w);
        } else {
            let (sr, sw) = server.into_split();
            spawn_raw_counter(sr, d.clone());
            spawn_sender(sw, None, stop.clone());
        }
        down.push(d);
        up.push(u);
    }
    let t0 = Instant::now();
    let (d0, u0) = (snapshot(&down), snapshot(&up));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    let (d1, u1) = (snapshot(&down), snapshot(&up));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t2 = Instant::now();
    let (d2, u2) = (snapshot(&down), snapshot(&up));
    stop.store(true, Ordering::Relaxed);
    sched.shutdown(Duration::from_millis(100)).await;
    let full = (t2 - t0).as_secs_f64();
    let steady = (t2 - t1).as_secs_f64();
    Ok((
        Flow {
            rates: delta(&d2, &d0, full),
        },
        Flow {
            rates: delta(&u2, &u0, full),
        },
        Flow {
            rates: delta(&d2, &d1, steady),
        },
        Flow {
            rates: delta(&u2, &u1, steady),
        },
    ))
}

/// 100 connections, 10 MiB/s download cap, unequal demand: a quarter each at 32 KiB/s,
/// 64 KiB/s, 128 KiB/s and unlimited. Measured from 1 s to 5 s.
async fn unequal_scenario(scheduled: bool) -> BenchResult<(Flow, Vec<f64>)> {
    let cap = 10 * MIB;
    let sched = IoScheduler::new(IoSchedulerConfig {
        max_download_speed: Some(cap),
        ..IoSchedulerConfig::default()
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut counts = Vec::new();
    let mut demands = Vec::new();
    let mut keep = Vec::new();
    let mut raw_writers = Vec::new();
    for i in 0..100 {
        let demand = [Some(32 * KIB), Some(64 * KIB), Some(128 * KIB), None][i % 4];
        demands.push(demand.map(|d| d as f64));
        let (client, server) = tcp_pair(&listener).await?;
        let (cr, cw) = client.into_split();
        spawn_sender(cw, demand, stop.clone());
        keep.push(cr);
        let c = counter();
        if scheduled {
            let conn = sched.register(server)?;
            let (r, w) = conn.split();
            spawn_sched_counter(r, c.clone());
            keep_writer(w);
        } else {
            let (sr, sw) = server.into_split();
            spawn_raw_counter(sr, c.clone());
            raw_writers.push(sw);
        }
        counts.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    let c1 = snapshot(&counts);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let secs = t1.elapsed().as_secs_f64();
    let c2 = snapshot(&counts);
    stop.store(true, Ordering::Relaxed);
    sched.shutdown(Duration::from_millis(100)).await;
    drop((keep, raw_writers));
    let fair = max_min_fair(cap as f64, &demands);
    Ok((
        Flow {
            rates: delta(&c2, &c1, secs),
        },
        fair,
    ))
}

fn keep_writer(w: peerpool::io_scheduler::ScheduledWriter) {
    // Keep the connection open until the scheduler shuts it down.
    tokio::spawn(async move {
        let _w = w;
        std::future::pending::<()>().await;
    });
}

/// Moves `total` bytes over one loopback connection; returns bytes per second.
/// `mode`: 0 raw → raw, 1 scheduled sender → raw, 2 raw → scheduled receiver, 3 raw read
/// task → channel → consumer, 4 producer → channel → raw write task (3 and 4 have the same
/// task hop as the scheduler, without the scheduler).
async fn transfer(mode: u8, total: u64, read_buffer_size: usize) -> BenchResult<f64> {
    let sched = IoScheduler::new(IoSchedulerConfig {
        read_buffer_size,
        ..IoSchedulerConfig::default()
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (client, server) = tcp_pair(&listener).await?;
    let block = Bytes::from(vec![0x42u8; 64 * 1024]);
    let start = Instant::now();
    let received = match mode {
        1 => {
            let conn = sched.register(client)?;
            let recv = tokio::spawn(read_all_raw(server));
            let mut sent = 0;
            while sent < total {
                conn.write(block.clone()).await?;
                sent += block.len() as u64;
            }
            conn.close(Duration::from_secs(60)).await;
            recv.await??
        }
        2 => {
            let mut conn = sched.register(server)?;
            let send = tokio::spawn(write_all_raw(client, block.clone(), total));
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            send.await??;
            got
        }
        3 => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(512);
            let send = tokio::spawn(write_all_raw(client, block.clone(), total));
            let mut server = server;
            let rbs = read_buffer_size;
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                loop {
                    if buf.capacity() - buf.len() < rbs {
                        buf = bytes::BytesMut::with_capacity(4 * rbs);
                    }
                    match (&mut server).take(rbs as u64).read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send(buf.split_to(n).freeze()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let mut out = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            while let Some(chunk) = rx.recv().await {
                // The same copy into the consumer's buffer as `AsyncRead` does.
                out[..chunk.len()].copy_from_slice(&chunk);
                got += chunk.len() as u64;
            }
            send.await??;
            got
        }
        4 => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(128);
            let recv = tokio::spawn(read_all_raw(server));
            let mut client = client;
            let writer = tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    client.write_all(&b).await?;
                }
                client.shutdown().await
            });
            let mut sent = 0;
            while sent < total {
                tx.send(block.clone()).await?;
                sent += block.len() as u64;
            }
            drop(tx);
            writer.await??;
            recv.await??
        }
        _ => {
            let recv = tokio::spawn(read_all_raw(server));
            write_all_raw(client, block.clone(), total).await?;
            recv.await??
        }
    };
    let secs = start.elapsed().as_secs_f64();
    sched.shutdown(Duration::from_secs(1)).await;
    assert_eq!(received, total, "every byte arrives");
    Ok(total as f64 / secs)
}

async fn read_all_raw(mut s: TcpStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

async fn write_all_raw(mut s: TcpStream, block: Bytes, total: u64) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < total {
        s.write_all(&block).await?;
        sent += block.len() as u64;
    }
    s.shutdown().await
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn run() -> BenchResult<()> {
    if std::env::var("SCHED_BENCH").is_ok_and(|v| v == "overhead") {
        return overhead().await;
    }
    println!("## Accuracy and fairness: octez trivial-quota (8 clients, 5 s, loopback)\n");
    println!("| flow | cap | achieved | vs cap | Jain | min..max per conn |");
    println!("|---|---|---|---|---|---|");
    let (d, u, ds, us) = octez_scenario(true).await?;
    report("scheduled download, 0-5 s", MIB, &d, None);
    report("scheduled upload, 0-5 s", 256 * KIB, &u, None);
    report("scheduled download, 1-5 s", MIB, &ds, None);
    report("scheduled upload, 1-5 s", 256 * KIB, &us, None);
    let (d, u, _, _) = octez_scenario(false).await?;
    report("baseline raw TCP download, 0-5 s", MIB, &d, None);
    report("baseline raw TCP upload, 0-5 s", 256 * KIB, &u, None);

    println!("\n## Accuracy and fairness: 100 connections, 10 MiB/s cap, unequal demand (1-5 s)\n");
    println!("Jain's index is over achieved / max-min-fair share.\n");
    println!("| flow | cap | achieved | vs cap | Jain | min..max per conn |");
    println!("|---|---|---|---|---|---|");
    let (flow, fair) = unequal_scenario(true).await?;
    report("scheduled", 10 * MIB, &flow, Some(&fair));
    let (flow, fair) = unequal_scenario(false).await?;
    report("baseline raw TCP (no cap)", 10 * MIB, &flow, Some(&fair));

    overhead().await
}

async fn overhead() -> BenchResult<()> {
    // `SCHED_BENCH_ROUNDS` overrides the number of rounds (default 9).
    let reps: usize = std::env::var("SCHED_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(9);
    println!(
        "\n## Overhead: one uncapped connection, 256 MiB over loopback, {reps} interleaved rounds\n"
    );
    println!("Each round runs every path once, back to back; the ratio is taken within the round");
    println!("(the machine is shared, so absolute figures swing between rounds).\n");
    println!("| path | median throughput | median ratio vs raw | min..max ratio |");
    println!("|---|---|---|---|");
    let total = 256 << 20;
    // (label, mode, read_buffer_size)
    let paths: [(&str, u8, usize); 6] = [
        ("scheduled write (64 KiB buffers) → raw read", 1, 16 * 1024),
        (
            "raw write → scheduled read, read_buffer_size 16 KiB (default)",
            2,
            16 * 1024,
        ),
        (
            "raw write → scheduled read, read_buffer_size 64 KiB",
            2,
            64 * 1024,
        ),
        (
            "no scheduler: producer → channel → raw write task",
            4,
            16 * 1024,
        ),
        (
            "no scheduler: raw read task (16 KiB) → channel → consumer",
            3,
            16 * 1024,
        ),
        (
            "no scheduler: raw read task (64 KiB) → channel → consumer",
            3,
            64 * 1024,
        ),
    ];
    let mut raw = Vec::new();
    let mut rates = vec![Vec::new(); paths.len()];
    let mut ratios = vec![Vec::new(); paths.len()];
    for _ in 0..reps {
        let r = transfer(0, total, 16 * 1024).await?;
        raw.push(r);
        for (i, (_, mode, rbs)) in paths.iter().enumerate() {
            let x = transfer(*mode, total, *rbs).await?;
            rates[i].push(x);
            ratios[i].push(x / r);
        }
    }
    let mib = |x: f64| x / MIB as f64;
    println!(
        "| raw TcpStream → TcpStream, 64 KiB writes and reads (baseline) | {:.0} MiB/s | 1.00 | |",
        mib(median(raw))
    );
    for (i, (label, _, _)) in paths.iter().enumerate() {
        let lo = ratios[i].iter().copied().fold(f64::MAX, f64::min);
        let hi = ratios[i].iter().copied().fold(0.0, f64::max);
        println!(
            "| {label} | {:.0} MiB/s | {:.2} | {lo:.2}..{hi:.2} |",
            mib(median(rates[i].clone())),
            median(ratios[i].clone())
        );
    }
    Ok(())
}

fn main() -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
