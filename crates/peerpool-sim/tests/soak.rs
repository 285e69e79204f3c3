//! The short soak run of CI (issue 11): real nodes in virtual time with crashes,
//! partitions and healing, every node audited every second; the long one is
//! `cargo run --release -p peerpool-sim --example soak` (docs/RELIABILITY.md).
#![allow(clippy::unwrap_used)]

use peerpool_sim::{run_soak, Cluster, Soak, SoakReport};
use std::time::Duration;

fn short(seed: u64) -> Soak {
    Soak {
        check_every: Duration::from_secs(1),
        churn_every: Duration::from_secs(60),
        churn_fraction: 0.1,
        down_for: Duration::from_secs(20),
        partition_every: Duration::from_secs(300),
        partition_for: Duration::from_secs(90),
        settle: Duration::from_secs(150),
        ..Soak::new(30, Duration::from_secs(20 * 60), seed)
    }
}

fn run(s: &Soak) -> SoakReport {
    Cluster::runtime().unwrap().block_on(run_soak(s)).unwrap()
}

#[test]
fn thirty_nodes_for_twenty_virtual_minutes_keep_every_invariant() {
    let s = short(3);
    let r = run(&s);
    eprintln!(
        "soak: {} audits, {} violations, {} restarts, {} partitions, most connections {}, \
         {} isolated at the end, {} messages, {:.0} s virtual in {:.1} s",
        r.audits,
        r.violations,
        r.restarts,
        r.partitions,
        r.most_connections,
        r.isolated_at_end,
        r.messages_received,
        r.simulated.as_secs_f64(),
        r.real.as_secs_f64()
    );
    assert_eq!(r.violations, 0, "{:#?}", r.first_violations);
    // The faults happened: 17 churn rounds of 3 nodes, 3 partitions.
    assert!(r.restarts >= 40, "{} restarts", r.restarts);
    assert_eq!(r.partitions, 3);
    // Audits every second of every node up (most of them, most of the time).
    assert!(r.audits > 30 * 1000, "{} audits", r.audits);
    assert!(r.most_connections <= s.connections.1);
    // After the faults stop, everyone is connected again, and traffic flowed.
    assert_eq!(r.isolated_at_end, 0);
    assert!(r.messages_received > 0);
}

#[test]
fn the_same_seed_gives_the_same_soak() {
    let s = Soak {
        duration: Duration::from_secs(6 * 60),
        ..short(5)
    };
    let (a, b) = (run(&s), run(&s));
    assert_eq!(
        (a.audits, a.restarts, a.partitions, a.messages_received),
        (b.audits, b.restarts, b.partitions, b.messages_received)
    );
}
