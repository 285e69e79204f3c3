//! Network scenarios with the real node code under simulation: seeded, deterministic,
//! a few seconds of real time each.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use peerpool_sim::{run, Churn, Partition, Scenario, Topology};
use std::time::Duration;

fn summary(name: &str, r: &peerpool_sim::Report) {
    println!(
        "{name}: {} nodes, {:.0} s simulated in {:.2} s real ({:.1}× real time), connections {:?}, {} trace lines",
        r.connections.len(),
        r.simulated.as_secs_f64(),
        r.real.as_secs_f64(),
        r.speed(),
        r.connections,
        r.trace.len()
    );
}

#[test]
fn the_16_node_sandbox_connects_every_node_and_carries_traffic() {
    let r = run(&Scenario::sandbox(7)).unwrap();
    summary("sandbox", &r);
    assert_eq!(r.connections.len(), 16);
    // Every node has peers, within its bounds, and received application traffic.
    for (i, c) in r.connections.iter().enumerate() {
        assert!((1..=12).contains(c), "node {i} ends with {c} connections");
    }
    assert!(r.received.iter().all(|n| *n > 0), "{:?}", r.received);
    // Each node's trusted peers (3 each) make the graph well connected.
    let total: usize = r.connections.iter().sum();
    assert!(total / 2 >= 24, "{} connections", total / 2);
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    // With every kind of fault: latency, loss, a partition, crashes and restarts.
    let mut s = Scenario {
        duration: Duration::from_secs(40),
        fail_rate: 0.01,
        partitions: vec![Partition {
            at: Duration::from_secs(5),
            heal_at: Duration::from_secs(15),
            split: 8,
        }],
        churn: Some(Churn {
            every: Duration::from_secs(10),
            fraction: 0.2,
            down_for: Duration::from_secs(2),
        }),
        peers_file_interval: Duration::from_secs(3),
        ..Scenario::sandbox(11)
    };
    let a = run(&s).unwrap();
    let b = run(&s).unwrap();
    assert!(a.trace.len() > 100, "{} lines", a.trace.len());
    assert_eq!(
        a.trace_text(),
        b.trace_text(),
        "two runs with seed 11 differ"
    );
    s.seed = 12;
    let c = run(&s).unwrap();
    assert_ne!(a.trace_text(), c.trace_text());
}

#[test]
fn a_hundred_nodes_from_random_wiring_all_connect() {
    let s = Scenario {
        nodes: 100,
        duration: Duration::from_secs(30),
        tick: Duration::from_millis(50),
        traffic: None,
        ..Scenario::sandbox(3)
    };
    let r = run(&s).unwrap();
    summary("100 nodes", &r);
    let isolated = r.connections.iter().filter(|c| **c == 0).count();
    assert_eq!(isolated, 0, "{:?}", r.connections);
    assert!(r.connections.iter().all(|c| *c <= s.max_connections));
}

#[test]
fn nodes_learn_each_other_from_three_bootstrap_nodes() {
    let s = Scenario {
        nodes: 30,
        topology: Topology::Bootstrap { bootstrap: 3 },
        min_connections: 4,
        max_connections: 20,
        duration: Duration::from_secs(20),
        traffic: None,
        ..Scenario::sandbox(5)
    };
    let r = run(&s).unwrap();
    summary("bootstrap", &r);
    // Beyond the 3 bootstrap nodes, every node reached its minimum through points it was
    // advertised, not told.
    for (i, c) in r.connections.iter().enumerate().skip(3) {
        assert!(*c >= 4, "node {i} has {c} connections");
    }
    assert!(r.trace.iter().any(|l| l.contains("AdvertiseReceived")));
}

#[test]
fn churn_crashed_hosts_come_back_with_their_data_and_reconnect() {
    let s = Scenario {
        nodes: 20,
        duration: Duration::from_secs(90),
        tick: Duration::from_millis(10),
        churn: Some(Churn {
            every: Duration::from_secs(15),
            fraction: 0.2,
            down_for: Duration::from_secs(5),
        }),
        traffic: None,
        peers_file_interval: Duration::from_secs(5),
        ..Scenario::sandbox(21)
    };
    let r = run(&s).unwrap();
    summary("churn", &r);
    assert!(r.restarts >= 16, "{} restarts", r.restarts);
    // The last crashes were at 90 s; hosts down at the end are at 0, the rest connected.
    let crashed_at_end: Vec<usize> = (0..s.nodes)
        .filter(|i| {
            let crash = r
                .trace
                .iter()
                .rposition(|l| l.ends_with(&format!("n{i:03} crashed")));
            let start = r
                .trace
                .iter()
                .rposition(|l| l.contains(&format!("n{i:03} started")));
            crash > start
        })
        .collect();
    for (i, c) in r.connections.iter().enumerate() {
        if !crashed_at_end.contains(&i) {
            assert!(*c > 0, "node {i} is up with no connection");
        }
    }
    // Restarted hosts found their peers file: a first start knows no peer, a restart
    // knows those it saved before it crashed (every host runs at least 10 s between
    // crashes and saves every 5 s).
    let starts: Vec<&String> = r
        .trace
        .iter()
        .filter(|l| l.contains(" started, "))
        .collect();
    assert_eq!(starts.len(), s.nodes + r.restarts);
    let first_starts = starts
        .iter()
        .filter(|l| l.contains(" 0 peers known"))
        .count();
    assert_eq!(
        first_starts, s.nodes,
        "every first start is empty, every restart knows peers"
    );
}

#[test]
fn during_a_partition_restarted_hosts_reconnect_only_on_their_side_then_heal() {
    let s = Scenario {
        nodes: 12,
        duration: Duration::from_secs(80),
        partitions: vec![Partition {
            at: Duration::from_secs(10),
            heal_at: Duration::from_secs(50),
            split: 6,
        }],
        churn: Some(Churn {
            every: Duration::from_secs(12),
            fraction: 0.25,
            down_for: Duration::from_secs(3),
        }),
        peers_file_interval: Duration::from_secs(5),
        traffic: Some(Duration::from_millis(500)),
        ..Scenario::sandbox(9)
    };
    let r = run(&s).unwrap();
    summary("partition", &r);
    // Nodes 0..6 on one side, 6..12 on the other.
    let side_of_ip = |ip: &str| peerpool_sim::node_of(ip.parse().unwrap()).unwrap() < 6;
    let mut during = 0;
    let mut crossing_after_heal = 0;
    for line in &r.trace {
        let mut words = line.split_whitespace();
        let (Some(ms), Some(node), Some("established")) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let ms: u64 = ms.parse().unwrap();
        let me: usize = node[1..].parse().unwrap();
        let remote = words.nth(1).unwrap();
        let remote_ip = remote.rsplit_once(':').unwrap().0;
        let crossing = side_of_ip(remote_ip) != (me < 6);
        if ms >= 50_000 && crossing {
            crossing_after_heal += 1;
        }
        // A little margin after the split for handshakes already on the wire.
        if (11_000..50_000).contains(&ms) {
            during += 1;
            assert!(!crossing, "crossing the split: {line}");
        }
    }
    // Once healed, trusted peers across the split are dialled again, and everyone is
    // connected at the end (the last restart was at 75 s).
    assert!(crossing_after_heal > 0);
    assert!(r.connections.iter().all(|c| *c > 0), "{:?}", r.connections);
    assert!(r.restarts >= 10, "{} restarts", r.restarts);
    assert!(during > 0, "no connection was made during the split");
    assert!(r.trace.iter().any(|l| l.ends_with("heal 0")));
}
