//! `peerpool soak`: a network of real `peerpool node` processes over TCP on 127.0.0.x,
//! run for `--minutes` with churn (each minute a share of the nodes is stopped with
//! SIGTERM and restarted on its data directory) and message traffic (every node
//! broadcasts a message every second), while a checker asks every node every second for
//! its broken invariants (`GET /network/audit`: connections within the maximum, no point
//! or peer Running without a connection, no dial to a greylisted address). At the end it
//! reports each node's resident memory at minute 1 and at the last minute, its open file
//! descriptors, the panics found in the nodes' logs and the violations, and exits non-zero
//! if there was any panic or violation (issue 11, docs/RELIABILITY.md).

use crate::admin;
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// `peerpool soak` options.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Number of node processes (at most 250, one per 127.0.0.x).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(2..=250))]
    pub nodes: u16,
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub minutes: u64,
    /// Connections per node, as octez's `--connections N`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// Share of the nodes restarted each minute, percent.
    #[arg(long, default_value_t = 10.0)]
    pub churn_percent: f64,
    /// Seed of the churn's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// P2P port of every node (each on its own 127.0.0.x); its RPC listens on the port
    /// below it.
    #[arg(long, default_value_t = 29732)]
    pub port: u16,
    /// Where the nodes' data directories and logs go (default: a new temporary directory,
    /// removed at the end when all went well).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One node process and what was measured of it.
struct Proc {
    index: usize,
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    rss_minute_1: Option<u64>,
    rss_last: Option<u64>,
    peak_rss: u64,
    max_fds: usize,
    restarts: u64,
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i + 1) as u8))
}

/// `(VmRSS, VmHWM)` of a process, bytes.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

impl Proc {
    fn start(&mut self, args: &SoakArgs, bootstrap: &[SocketAddr]) -> std::io::Result<()> {
        let exe = std::env::current_exe()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .arg("--net-addr")
            .arg(SocketAddr::new(ip(self.index), args.port).to_string())
            .arg("--rpc-addr")
            .arg(SocketAddr::new(ip(self.index), args.port - 1).to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--chain-name", "SOAK", "--expected-pow", "0"])
            .arg("--no-bootstrap-peers")
            .arg("--connections")
            .arg(args.connections.to_string())
            .args(["--gossip-every", "1s"]);
        for b in bootstrap {
            if b.ip() != ip(self.index) {
                cmd.arg("--peer").arg(b.to_string());
            }
        }
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// SIGTERM, then waits for the exit (the node saves its peers file on the way out).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    fn endpoint(&self, args: &SoakArgs) -> String {
        format!("http://{}", SocketAddr::new(ip(self.index), args.port - 1))
    }

    /// Samples memory and descriptors; `minute` is the run's current minute (1-based).
    fn sample(&mut self, minute: u64, last_minute: u64) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return;
        };
        if let Some((rss, hwm)) = memory(pid) {
            self.peak_rss = self.peak_rss.max(hwm);
            if minute == 1 {
                self.rss_minute_1 = Some(rss);
            }
            if minute == last_minute {
                self.rss_last = Some(rss);
            }
        }
        if let Some(n) = open_fds(pid) {
            self.max_fds = self.max_fds.max(n);
        }
    }
}

fn panics_in(log: &Path) -> usize {
    fs::read_to_string(log)
        .map(|t| t.matches("panicked at").count())
        .unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs the soak; the exit code says whether it found a panic or a violation.
pub fn run(args: SoakArgs) -> ExitCode {
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("peerpool-soak-{}", std::process::id())),
            true,
        ),
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let n = usize::from(args.nodes);
    let bootstrap: Vec<SocketAddr> = (0..3.min(n))
        .map(|i| SocketAddr::new(ip(i), args.port))
        .collect();
    let mut procs: Vec<Proc> = (0..n)
        .map(|i| Proc {
            index: i,
            child: None,
            data_dir: dir.join(format!("node-{i}")),
            log: dir.join(format!("node-{i}.log")),
            rss_minute_1: None,
            rss_last: None,
            peak_rss: 0,
            max_fds: 0,
            restarts: 0,
        })
        .collect();
    for p in &mut procs {
        if let Err(e) = p.start(&args, &bootstrap) {
            eprintln!("error: cannot start node {}: {e}", p.index);
            procs.iter_mut().for_each(Proc::stop);
            return ExitCode::FAILURE;
        }
    }
    println!(
        "soak: {n} nodes on 127.0.0.1 … 127.0.0.{n}, {} minutes, data in {}",
        args.minutes,
        dir.display()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let started = Instant::now();
    let total = Duration::from_secs(args.minutes * 60);
    let mut checks = 0u64;
    let mut violations: Vec<String> = Vec::new();
    let mut unanswered = 0u64;
    // A round of restarts every minute, the first at 30 s (so a 1-minute run has one).
    let mut next_churn = Duration::from_secs(30);
    let mut next_tick = Duration::ZERO;
    while started.elapsed() < total {
        let now = started.elapsed();
        let minute = now.as_secs() / 60 + 1;
        for p in procs.iter_mut() {
            p.sample(minute, args.minutes);
            if p.child.is_none() {
                continue;
            }
            match admin::get(&p.endpoint(&args), "/network/audit") {
                Ok(v) => {
                    checks += 1;
                    for broken in v.as_array().into_iter().flatten() {
                        violations.push(format!(
                            "{:>5} s node {}: {}",
                            now.as_secs(),
                            p.index,
                            broken.as_str().unwrap_or_default()
                        ));
                    }
                }
                // Starting or stopping: its RPC is not up yet (counted, not a violation).
                Err(_) => unanswered += 1,
            }
        }
        if now >= next_churn && now + Duration::from_secs(15) < total {
            next_churn += Duration::from_secs(60);
            let count = ((n as f64 * args.churn_percent / 100.0).round() as usize).max(1);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            for i in order.into_iter().take(count) {
                procs[i].stop();
                procs[i].restarts += 1;
                if let Err(e) = procs[i].start(&args, &bootstrap) {
                    eprintln!("error: cannot restart node {i}: {e}");
                }
            }
        }
        next_tick += Duration::from_secs(1);
        // The checker's own period: one round of samples per second.
        if let Some(wait) = next_tick.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    // The last minute's memory, then a clean stop of everyone.
    for p in procs.iter_mut() {
        p.sample(args.minutes, args.minutes);
    }
    let connected = procs
        .iter()
        .filter(|p| {
            admin::get(&p.endpoint(&args), "/network/connections")
                .ok()
                .and_then(|v| v.as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
        })
        .count();
    // Bytes received since each node's last start (octez's `total_recv`).
    let received: u64 = procs
        .iter()
        .filter_map(|p| admin::get(&p.endpoint(&args), "/network/stat").ok())
        .filter_map(|v| v["total_recv"].as_str().and_then(|t| t.parse::<u64>().ok()))
        .sum();
    procs.iter_mut().for_each(Proc::stop);
    let panics: usize = procs.iter().map(|p| panics_in(&p.log)).sum();
    let restarts: u64 = procs.iter().map(|p| p.restarts).sum();
    let rss1: Vec<u64> = procs.iter().filter_map(|p| p.rss_minute_1).collect();
    let rss_last: Vec<u64> = procs.iter().filter_map(|p| p.rss_last).collect();
    println!(
        "checks (node audits answered): {checks}; unanswered while (re)starting: {unanswered}"
    );
    println!("restarts: {restarts}; nodes connected at the end: {connected} of {n}");
    println!(
        "traffic: {:.1} MiB received by the nodes since their last start",
        mib(received)
    );
    println!(
        "resident memory per node, minute 1: median {:.1} MiB, max {:.1} MiB",
        mib(median(rss1.clone())),
        mib(rss1.iter().copied().max().unwrap_or(0))
    );
    println!(
        "resident memory per node, minute {}: median {:.1} MiB, max {:.1} MiB",
        args.minutes,
        mib(median(rss_last.clone())),
        mib(rss_last.iter().copied().max().unwrap_or(0))
    );
    println!(
        "peak resident memory of any node: {:.1} MiB; most open file descriptors: {}",
        mib(procs.iter().map(|p| p.peak_rss).max().unwrap_or(0)),
        procs.iter().map(|p| p.max_fds).max().unwrap_or(0)
    );
    println!("panics: {panics}");
    println!("invariant violations: {}", violations.len());
    for v in violations.iter().take(20) {
        println!("  {v}");
    }
    let ok = panics == 0 && violations.is_empty() && checks > 0;
    if ok && temporary {
        let _ = fs::remove_dir_all(&dir);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
