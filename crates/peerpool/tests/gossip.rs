//! The gossip example runs: six nodes on 127.0.0.x over real TCP find each other from one
//! bootstrap point and every node receives every line.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

#[path = "../examples/gossip.rs"]
#[allow(dead_code, unreachable_pub)]
mod gossip;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossip_example_delivers_every_line_to_every_node() {
    let report = gossip::run(6, 3, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.expected, 18);
    assert!(report.delivered.iter().all(|d| *d == 18), "{report:?}");
    assert!(report.connections.iter().all(|c| *c >= 1), "{report:?}");
}
