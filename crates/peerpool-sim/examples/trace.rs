//! Prints the trace of a bootstrap scenario, or only one node's lines:
//! `cargo run -p peerpool-sim --example trace [nodes] [seconds] [node]`.

use peerpool_sim::{run, Scenario, Topology};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let secs = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let only: Option<usize> = args.get(3).and_then(|a| a.parse().ok());
    let s = Scenario {
        nodes,
        topology: Topology::Bootstrap { bootstrap: 3 },
        min_connections: 4,
        max_connections: 20,
        duration: Duration::from_secs(secs),
        traffic: None,
        ..Scenario::sandbox(5)
    };
    match run(&s) {
        Ok(r) => {
            let tag = only.map(|i| format!(" n{i:03} "));
            for line in &r.trace {
                if tag.as_ref().is_none_or(|t| line.contains(t.as_str())) {
                    println!("{line}");
                }
            }
            println!("connections {:?}", r.connections);
        }
        Err(e) => println!("failed: {e}"),
    }
}
