//! Simulated seconds per real second for a few network sizes and steps:
//! `cargo run --release -p peerpool-sim --example speed [nodes...]`.

use peerpool_sim::{run, Scenario};
use std::time::Duration;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![16, 100]
    } else {
        sizes
    };
    for nodes in sizes {
        for tick_ms in [5u64, 10, 25, 50] {
            let s = Scenario {
                nodes,
                duration: Duration::from_secs(60),
                tick: Duration::from_millis(tick_ms),
                traffic: None,
                ..Scenario::sandbox(3)
            };
            match run(&s) {
                Ok(r) => println!(
                    "{nodes:>4} nodes, tick {tick_ms:>2} ms: {:.0} s simulated in {:.2} s real = {:.1} simulated s per real s; isolated at end: {}",
                    r.simulated.as_secs_f64(),
                    r.real.as_secs_f64(),
                    r.speed(),
                    r.connections.iter().filter(|c| **c == 0).count()
                ),
                Err(e) => println!("{nodes} nodes, tick {tick_ms} ms: failed: {e}"),
            }
        }
    }
}
