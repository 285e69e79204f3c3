//! The soak run (issue 11): `n` real nodes on the in-memory network, virtual time, churn,
//! partitions and healing, every node audited against its invariants all along.
//!
//! `cargo run --release -p peerpool-sim --example soak -- --nodes 200 --hours 6 --seed 1`
#![allow(clippy::unwrap_used)]

use peerpool_sim::{run_soak, Cluster, Soak};
use std::time::Duration;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap())
        .unwrap_or(default)
}

fn main() {
    let nodes = arg("--nodes", 200.0) as usize;
    let hours = arg("--hours", 6.0);
    let seed = arg("--seed", 1.0) as u64;
    let mut soak = Soak::new(nodes, Duration::from_secs_f64(hours * 3600.0), seed);
    soak.check_every = Duration::from_secs_f64(arg("--check-every", 5.0));
    let report = Cluster::runtime()
        .unwrap()
        .block_on(run_soak(&soak))
        .unwrap();
    println!("nodes {nodes}, {hours} virtual hours, seed {seed}");
    println!(
        "virtual {:.0} s in real {:.1} s ({:.0} × real time)",
        report.simulated.as_secs_f64(),
        report.real.as_secs_f64(),
        report.simulated.as_secs_f64() / report.real.as_secs_f64()
    );
    println!(
        "audits {}, violations {}, restarts {}, partitions {}, most connections {}, isolated at end {}, messages received {}",
        report.audits,
        report.violations,
        report.restarts,
        report.partitions,
        report.most_connections,
        report.isolated_at_end,
        report.messages_received
    );
    for v in &report.first_violations {
        println!("  {v}");
    }
}
