//! Scheduler overhead against a direct socket, with confidence intervals (issue 12).
//! Results go to docs/BENCHMARKS-scheduler.md, "Overhead, settled (issue 12)".
//!
//! One uncapped connection over loopback TCP (127.0.0.1) moves `SCHED_BENCH_MIB` MiB per
//! transfer in 64 KiB writes and 64 KiB reads, over four paths: raw (`TcpStream` both ends),
//! scheduled (both ends registered with one uncapped `IoScheduler` with the default config:
//! `ScheduledConnection::write` of 64 KiB `Bytes`, `AsyncRead` into a 64 KiB buffer),
//! scheduled write only and scheduled read only. A transfer is timed from the first write
//! to the last byte counted by the reader (setup and teardown are outside). Every round runs
//! each path once, in a random order drawn from a seeded RNG; one warm-up round is
//! discarded. Per round and path: wall time (ns) and CPU time of the whole process (ns, user
//! and system, all threads, from `/proc/self/task/*/schedstat`). The ratios path / raw are
//! paired within the round (above 1 means slower or more CPU). Reported per path: median
//! ratio with a distribution-free 95 % confidence interval (order statistics, binomial), and
//! geometric-mean ratio with a 95 % percentile-bootstrap interval (10 000 resamples, seeded).
//! Verdict against "overhead ≤ 10 %" (ratio ≤ 1.10): shown when the upper bound ≤ 1.10,
//! refuted when the lower bound exceeds 1.10, otherwise not decided.
//!
//! Then, when `valgrind` is on the PATH, user-space instructions per byte under callgrind
//! (deterministic, independent of machine load; the kernel's work, i.e. the copies and TCP,
//! is not counted), measured as the difference between a transfer of (4 + N) MiB and one of
//! 4 MiB, so fixed costs (runtime start, connection setup) cancel.
//!
//! Run: `cargo bench -p peerpool --bench scheduler_overhead`
//! Environment: `SCHED_BENCH_ROUNDS` rounds (default 200), `SCHED_BENCH_MIB` MiB per
//! transfer (default 64), `SCHED_BENCH_SEED` (default 12), `SCHED_BENCH_CALLGRIND=0` skips
//! callgrind, `SCHED_BENCH_CALLGRIND_MIB` N MiB measured under callgrind (default 64),
//! `SCHED_BENCH_CALLGRIND_REPS` runs per size and path (default 3).

use bytes::Bytes;
use peerpool::io_scheduler::{IoScheduler, IoSchedulerConfig, ScheduledConnection};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1024 * 1024;
/// Size of every write and of the reader's buffer, bytes.
const BLOCK: usize = 64 * 1024;
/// The goal: scheduled / raw ≤ this.
const LIMIT: f64 = 1.10;
/// Base transfer under callgrind, MiB (subtracted out, so fixed costs cancel).
const CG_BASE_MIB: u64 = 4;
const BOOTSTRAP: usize = 10_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Raw,
    Sched,
    SchedWrite,
    SchedRead,
}

impl Path {
    const ALL: [Path; 4] = [Path::Raw, Path::Sched, Path::SchedWrite, Path::SchedRead];

    fn name(self) -> &'static str {
        match self {
            Path::Raw => "raw",
            Path::Sched => "sched",
            Path::SchedWrite => "sched-write",
            Path::SchedRead => "sched-read",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Path::Raw => "raw: TcpStream → TcpStream (baseline)",
            Path::Sched => "scheduled both ends",
            Path::SchedWrite => "scheduled write → raw read",
            Path::SchedRead => "raw write → scheduled read",
        }
    }

    fn from_name(s: &str) -> Option<Path> {
        Path::ALL.into_iter().find(|p| p.name() == s)
    }

    fn write_sched(self) -> bool {
        matches!(self, Path::Sched | Path::SchedWrite)
    }

    fn read_sched(self) -> bool {
        matches!(self, Path::Sched | Path::SchedRead)
    }
}

/// One transfer: wall time and process CPU time (schedstat, and /proc/self/stat ticks as a
/// coarse cross-check), all in ns.
#[derive(Clone, Copy, Default, Debug)]
struct Sample {
    wall_ns: f64,
    cpu_ns: f64,
    user_ns: f64,
    sys_ns: f64,
    threads_changed: bool,
}

/// Sum of the on-CPU time of every thread of this process, ns, and the number of threads.
fn cpu_ns() -> (u64, usize) {
    let (mut sum, mut n) = (0, 0);
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                if let Some(v) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    sum += v;
                    n += 1;
                }
            }
        }
    }
    (sum, n)
}

/// (utime, stime) of the process from /proc/self/stat, ns (10 ms resolution at 100 Hz).
fn stat_ns() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    // Fields after the command: state is field 3; utime and stime are fields 14 and 15.
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    match f[..] {
        [u, s] => (u * 10_000_000, s * 10_000_000),
        _ => (0, 0),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

enum End {
    Raw(TcpStream),
    Sched(ScheduledConnection),
}

async fn tcp_pair(listener: &TcpListener) -> BenchResult<(TcpStream, TcpStream)> {
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client?;
    let (server, _) = accepted?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

async fn send(end: End, block: Bytes, total: u64) -> BenchResult<End> {
    let mut sent = 0;
    match end {
        End::Raw(mut s) => {
            while sent < total {
                s.write_all(&block).await?;
                sent += block.len() as u64;
            }
            Ok(End::Raw(s))
        }
        End::Sched(c) => {
            while sent < total {
                c.write(block.clone()).await?;
                sent += block.len() as u64;
            }
            Ok(End::Sched(c))
        }
    }
}

async fn recv(mut end: End, total: u64) -> BenchResult<End> {
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    while got < total {
        let n = match &mut end {
            End::Raw(s) => s.read(&mut buf).await?,
            End::Sched(c) => c.read(&mut buf).await?,
        };
        if n == 0 {
            return Err(format!("end of stream after {got} of {total} bytes").into());
        }
        got += n as u64;
    }
    Ok(end)
}

/// Moves `total` bytes (a multiple of 64 KiB) over a fresh loopback connection along `path`.
async fn transfer(path: Path, total: u64) -> BenchResult<Sample> {
    // A scheduler per transfer, also for raw (idle there), so setups match.
    let sched = IoScheduler::new(IoSchedulerConfig::default())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let (client, server) = tcp_pair(&listener).await?;
    let tx = match path.write_sched() {
        true => End::Sched(sched.register(client)?),
        false => End::Raw(client),
    };
    let rx = match path.read_sched() {
        true => End::Sched(sched.register(server)?),
        false => End::Raw(server),
    };
    let block = Bytes::from(vec![0x42u8; BLOCK]);
    let ((c0, n0), s0, t0) = (cpu_ns(), stat_ns(), Instant::now());
    let sender = tokio::spawn(send(tx, block, total));
    let receiver = tokio::spawn(recv(rx, total));
    let (tx, rx) = (sender.await??, receiver.await??);
    let wall = t0.elapsed();
    let ((c1, n1), s1) = (cpu_ns(), stat_ns());
    drop((tx, rx));
    sched.shutdown(Duration::from_secs(1)).await;
    Ok(Sample {
        wall_ns: wall.as_nanos() as f64,
        cpu_ns: c1.saturating_sub(c0) as f64,
        user_ns: s1.0.saturating_sub(s0.0) as f64,
        sys_ns: s1.1.saturating_sub(s0.1) as f64,
        threads_changed: n0 != n1,
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Distribution-free confidence interval for the median from order statistics: the largest
/// l with 2·P(B ≤ l − 1) ≤ 0.05, B ~ Binomial(n, ½), gives [x₍ₗ₎, x₍ₙ₊₁₋ₗ₎] (1-based).
/// Returns (low, high, exact coverage); NaN bounds when n is too small (n < 6).
fn median_ci(xs: &[f64]) -> (f64, f64, f64) {
    let n = xs.len();
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    // cdf[k] = P(B ≤ k), computed in log space so large n does not underflow.
    let mut cdf = Vec::with_capacity(n + 1);
    let mut ln_pmf = -(n as f64) * std::f64::consts::LN_2;
    let mut acc = 0.0;
    for k in 0..=n {
        acc += ln_pmf.exp();
        cdf.push(acc);
        ln_pmf += ((n - k) as f64).ln() - ((k + 1) as f64).ln();
    }
    let mut best = None;
    for l in 1..=n / 2 {
        if 2.0 * cdf[l - 1] <= 0.05 {
            best = Some(l);
        }
    }
    match best {
        Some(l) => (v[l - 1], v[n - l], 1.0 - 2.0 * cdf[l - 1]),
        None => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// Geometric mean of `xs` and its 95 % percentile-bootstrap interval (resampling rounds).
fn geomean_ci(xs: &[f64], rng: &mut StdRng) -> (f64, f64, f64) {
    let logs: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
    let n = logs.len();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut boots: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| (0..n).map(|_| logs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    boots.sort_by(f64::total_cmp);
    let lo = boots[(BOOTSTRAP as f64 * 0.025) as usize];
    let hi = boots[(BOOTSTRAP as f64 * 0.975) as usize - 1];
    (mean(&logs).exp(), lo.exp(), hi.exp())
}

fn verdict(lo: f64, hi: f64) -> &'static str {
    if hi <= LIMIT {
        "shown (≤ 10 %)"
    } else if lo > LIMIT {
        "refuted (> 10 %)"
    } else {
        "not decided"
    }
}

/// (median, lo, hi, geomean, glo, ghi) of one ratio series.
type RatioStats = (f64, f64, f64, f64, f64, f64);

fn ratio_stats(xs: &[f64], rng: &mut StdRng) -> (RatioStats, f64) {
    let (lo, hi, cov) = median_ci(xs);
    let (g, glo, ghi) = geomean_ci(xs, rng);
    ((median(xs), lo, hi, g, glo, ghi), cov)
}

async fn measure(rounds: usize, total: u64, seed: u64) -> BenchResult<()> {
    let load_start = loadavg();
    println!("## Scheduler overhead, one uncapped connection over loopback\n");
    println!(
        "{rounds} rounds (+1 warm-up, discarded) × 4 paths × {} MiB, 64 KiB writes and reads, \
         order per round shuffled with seed {seed}; 2 tokio workers.",
        total / MIB
    );
    println!("Load average at start: {load_start}\n");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: Vec<[Sample; 4]> = Vec::with_capacity(rounds);
    let mut loads = Vec::with_capacity(rounds);
    let started = Instant::now();
    for round in 0..=rounds {
        let mut order = Path::ALL;
        order.shuffle(&mut rng);
        let mut row = [Sample::default(); 4];
        for p in order {
            row[p as usize] = transfer(p, total).await?;
        }
        if round > 0 {
            rows.push(row);
            loads.push(load1());
        }
        if round % 20 == 0 {
            eprintln!(
                "round {round}/{rounds}, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let load_end = loadavg();
    let col = |p: Path, f: fn(&Sample) -> f64| -> Vec<f64> {
        rows.iter().map(|r| f(&r[p as usize])).collect()
    };
    let bytes = total as f64;
    println!("### Per path (medians over rounds)\n");
    println!(
        "Totals are over all rounds; /proc/self/stat counts in 10 ms ticks (sampled), so its \
         split into user and system time is only good in total.\n"
    );
    println!("| path | throughput | wall time | CPU per byte | CPU / wall (cores busy) | total CPU: schedstat, stat user + sys | user CPU per byte (stat) |");
    println!("|---|---|---|---|---|---|---|");
    for p in Path::ALL {
        let wall = col(p, |s| s.wall_ns);
        let cpu = col(p, |s| s.cpu_ns);
        let busy: Vec<f64> = cpu.iter().zip(&wall).map(|(c, w)| c / w).collect();
        let sum = |f: fn(&Sample) -> f64| col(p, f).iter().sum::<f64>();
        let (user, sys) = (sum(|s| s.user_ns), sum(|s| s.sys_ns));
        println!(
            "| {} | {:.0} MiB/s | {:.1} ms | {:.3} ns/B | {:.2} | {:.2} s; {:.2} + {:.2} s | {:.3} ns/B |",
            p.label(),
            bytes / MIB as f64 / (median(&wall) / 1e9),
            median(&wall) / 1e6,
            median(&cpu) / bytes,
            median(&busy),
            cpu.iter().sum::<f64>() / 1e9,
            user / 1e9,
            sys / 1e9,
            user / (bytes * rows.len() as f64),
        );
    }
    let changed = rows.iter().flatten().filter(|s| s.threads_changed).count();
    println!("\nTransfers during which the process's thread set changed (CPU possibly missed): {changed}.");
    println!("\n### Ratios scheduled / raw, paired per round (> 1: slower or more CPU)\n");
    println!("| path | measure | median [95 % CI] | geometric mean [95 % CI] | verdict on median | verdict on geo. mean |");
    println!("|---|---|---|---|---|---|");
    let mut main = Vec::new();
    let mut coverage = f64::NAN;
    for p in [Path::Sched, Path::SchedWrite, Path::SchedRead] {
        for (what, f) in [
            ("wall time", (|s: &Sample| s.wall_ns) as fn(&Sample) -> f64),
            ("CPU time", |s: &Sample| s.cpu_ns),
        ] {
            let ratios: Vec<f64> = rows
                .iter()
                .map(|r| f(&r[p as usize]) / f(&r[Path::Raw as usize]))
                .collect();
            let ((m, lo, hi, g, glo, ghi), cov) = ratio_stats(&ratios, &mut rng);
            coverage = cov;
            println!(
                "| {} | {what} | {m:.3} [{lo:.3}, {hi:.3}] | {g:.3} [{glo:.3}, {ghi:.3}] | {} | {} |",
                p.label(),
                verdict(lo, hi),
                verdict(glo, ghi)
            );
            if p == Path::Sched {
                main.push((what, lo, hi, glo, ghi));
            }
        }
    }
    println!(
        "\nMedian CI: order statistics, exact coverage {:.1} % for n = {}. Geometric-mean CI: \
         percentile bootstrap over rounds, {BOOTSTRAP} resamples, seed {seed}.",
        coverage * 100.0,
        rows.len()
    );
    println!(
        "Load average at end: {load_end} (1-min value over the rounds: {:.2}..{:.2}).\n",
        loads.iter().copied().fold(f64::MAX, f64::min),
        loads.iter().copied().fold(f64::MIN, f64::max)
    );
    println!("### Verdict: scheduled both ends vs raw, goal \"overhead ≤ 10 %\" (ratio ≤ 1.10)\n");
    for (what, lo, hi, glo, ghi) in main {
        // Decided only when median and geometric mean agree.
        let (a, b) = (verdict(lo, hi), verdict(glo, ghi));
        let v = if a == b { a } else { "not decided" };
        println!(
            "- {what}: **{v}** (median CI [{lo:.3}, {hi:.3}], geometric-mean CI [{glo:.3}, {ghi:.3}])"
        );
    }
    Ok(())
}

/// Instructions counted by callgrind for one run of this binary as a child moving `mib` MiB
/// along `path` (user space only).
fn callgrind_ir(path: Path, mib: u64) -> BenchResult<u64> {
    let dir = tempfile::tempdir()?;
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!(
            "--callgrind-out-file={}",
            dir.path().join("callgrind.out").display()
        ))
        .arg(std::env::current_exe()?)
        .env("SCHED_BENCH_CHILD", format!("{}:{mib}", path.name()))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind failed: {err}").into());
    }
    err.lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, v)| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no instruction count in valgrind's output: {err}").into())
}

fn callgrind(mib: u64, reps: usize) -> BenchResult<()> {
    println!("\n### Callgrind: user-space instructions per byte (load-independent)\n");
    println!(
        "Each figure: (Ir of a {}-MiB transfer − Ir of a {CG_BASE_MIB}-MiB transfer) / {mib} MiB, \
         whole process, both ends; {reps} runs per size. The kernel's work (copies, TCP over \
         loopback, wake-ups) is not counted, nor is anything that depends on timing of the \
         real machine, so this is the scheduler's user-space cost only; threads run \
         serialized under valgrind, so the number of wake-ups can differ from a native run.\n",
        CG_BASE_MIB + mib
    );
    println!(
        "| path | instructions per byte, median (min..max) | per 64 KiB write | ratio vs raw |"
    );
    println!("|---|---|---|---|");
    let mut raw = f64::NAN;
    for p in Path::ALL {
        let mut per_byte = Vec::new();
        for _ in 0..reps {
            let base = callgrind_ir(p, CG_BASE_MIB)? as f64;
            let big = callgrind_ir(p, CG_BASE_MIB + mib)? as f64;
            per_byte.push((big - base) / (mib * MIB) as f64);
        }
        let m = median(&per_byte);
        if p == Path::Raw {
            raw = m;
        }
        println!(
            "| {} | {m:.4} ({:.4}..{:.4}) | {:.0} | {:.2} |",
            p.label(),
            per_byte.iter().copied().fold(f64::MAX, f64::min),
            per_byte.iter().copied().fold(f64::MIN, f64::max),
            m * BLOCK as f64,
            m / raw
        );
    }
    Ok(())
}

fn runtime() -> BenchResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn main() -> BenchResult<()> {
    if let Ok(child) = std::env::var("SCHED_BENCH_CHILD") {
        // One transfer, run by the callgrind part under valgrind.
        let (name, mib) = child.split_once(':').ok_or("SCHED_BENCH_CHILD=path:mib")?;
        let path = Path::from_name(name).ok_or("unknown path")?;
        let mib: u64 = mib.parse()?;
        runtime()?.block_on(transfer(path, mib * MIB))?;
        return Ok(());
    }
    let rounds = env_u64("SCHED_BENCH_ROUNDS", 200) as usize;
    let total = env_u64("SCHED_BENCH_MIB", 64) * MIB;
    let seed = std::env::var("SCHED_BENCH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    runtime()?.block_on(measure(rounds, total, seed))?;
    let want_cg = std::env::var("SCHED_BENCH_CALLGRIND").map_or(true, |v| v != "0");
    let have_cg = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if want_cg && have_cg {
        let load = loadavg();
        callgrind(
            env_u64("SCHED_BENCH_CALLGRIND_MIB", 64),
            env_u64("SCHED_BENCH_CALLGRIND_REPS", 3) as usize,
        )?;
        println!(
            "\nLoad average before / after callgrind: {load} / {}",
            loadavg()
        );
    } else {
        println!("\nCallgrind skipped (SCHED_BENCH_CALLGRIND=0 or no valgrind on the PATH).");
    }
    Ok(())
}
