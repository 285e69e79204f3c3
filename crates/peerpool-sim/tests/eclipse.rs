//! The eclipse scenario of issue 9 with the real node code (in memory, virtual time): a
//! node holding 40 honest peers from 30 netgroups, and an attacker from 2 netgroups that
//! connects as fast as the node lets it and reconnects whatever is closed; the node
//! restarts during the attack. The honest share of the node's connections, with the
//! connection manager and with octez's policy, in the same run.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use peerpool::{NodeConfig, NodeEvent};
use peerpool_proto::connmgr::{ConnManagerConfig, ConnManagerEvent};
use peerpool_sim::Cluster;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const HONEST: usize = 40;
const ATTACKERS: usize = 64;

fn passive(c: &mut NodeConfig) {
    c.policy.maintenance.enabled = false;
    c.policy.swap_linger = None;
    c.pool.reconnection.initial_delay = Duration::from_millis(1);
    c.pool.reconnection.increase_cap = Duration::from_millis(1);
}

fn at(ip: Ipv4Addr) -> impl FnOnce(&mut NodeConfig) {
    move |c: &mut NodeConfig| {
        passive(c);
        c.listen_addr = Some(SocketAddr::new(IpAddr::V4(ip), 9732));
    }
}

#[derive(Debug)]
struct Shares {
    at_60s: f64,
    at_120s: f64,
    at_180s: f64,
    netgroup_refusals: u64,
}

async fn attack(conn_manager: ConnManagerConfig) -> Shares {
    let mut cl = Cluster::new(9);
    let target_config = move |c: &mut NodeConfig| {
        passive(c);
        c.pool.min_connections = 10;
        c.pool.max_connections = 100;
        c.policy.maintenance.expected_connections = Some(50);
        c.policy.max_incoming_connections = Some(100);
        c.policy.max_incoming_handshakes = 100;
        c.policy.max_incoming_handshakes_per_netgroup = Some(100);
        c.policy.conn_manager = conn_manager;
    };
    let target = cl.spawn(target_config.clone()).await.unwrap();
    let point = cl.member(target).point();
    let refusals = Arc::new(AtomicU64::new(0));
    let count = |cl: &Cluster, refusals: Arc<AtomicU64>| {
        let mut events = cl.node(target).events();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                if let NodeEvent::ConnManager(ConnManagerEvent::NetgroupFull { .. }) = e {
                    refusals.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    };
    count(&cl, refusals.clone());
    // 40 honest peers from 30 netgroups (10.101/16 … 10.130/16), connected an hour
    // before the attack.
    let mut honest = Vec::new();
    for i in 0..HONEST {
        let ip = Ipv4Addr::new(10, 101 + (i % 30) as u8, (i / 30) as u8, 1);
        let h = cl.spawn(at(ip)).await.unwrap();
        cl.node(h).connect(point, None).await.unwrap();
        honest.push(h);
    }
    cl.run_for(Duration::from_secs(3600)).await;
    // The attacker: 64 nodes in 2 netgroups (10.200/16 and 10.201/16).
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let ip = Ipv4Addr::new(10, 200 + (i % 2) as u8, (i / 2) as u8, 1);
        attackers.push(cl.spawn(at(ip)).await.unwrap());
    }
    let honest_set: BTreeSet<usize> = honest.iter().copied().collect();
    let share = |cl: &Cluster| {
        let total = cl.node(target).connections().len();
        let good = honest_set.iter().filter(|h| cl.linked(target, **h)).count();
        if total == 0 {
            0.0
        } else {
            good as f64 / total as f64
        }
    };
    let mut shares = [0.0; 3];
    for second in 1..=180u64 {
        // Every second each attacker node not connected tries again; honest peers that
        // lost their connection come back every 5 s.
        for a in &attackers {
            if !cl.linked(*a, target) {
                let _ = cl.node(*a).connect(point, None).await;
            }
        }
        if second % 5 == 0 {
            for h in &honest {
                if !cl.linked(*h, target) {
                    let _ = cl.node(*h).connect(point, None).await;
                }
            }
        }
        cl.run_for(SECOND).await;
        if second == 90 {
            cl.restart(target, target_config.clone()).await.unwrap();
            count(&cl, refusals.clone());
        }
        match second {
            60 => shares[0] = share(&cl),
            120 => shares[1] = share(&cl),
            180 => shares[2] = share(&cl),
            _ => {}
        }
    }
    cl.shutdown().await;
    Shares {
        at_60s: shares[0],
        at_120s: shares[1],
        at_180s: shares[2],
        netgroup_refusals: refusals.load(Ordering::Relaxed),
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_connection_manager_the_honest_peers_keep_three_quarters_of_the_node() {
    let ours = attack(ConnManagerConfig::default()).await;
    let octez = attack(ConnManagerConfig::disabled()).await;
    println!("honest share with the manager: {ours:?}; with octez's policy: {octez:?}");
    assert!(
        ours.netgroup_refusals > 100,
        "the attacker kept trying: {ours:?}"
    );
    for s in [ours.at_60s, ours.at_120s, ours.at_180s] {
        assert!(s >= 0.75, "honest share {s}: {ours:?}");
    }
    assert!(
        octez.at_60s < 0.5,
        "octez's policy is surrounded: {octez:?}"
    );
}

/// The manager's API on a running node: tags and tag_info, protection with its budget,
/// decaying tags, trim_open_conns taking the lowest values and sparing the protected, and
/// the Notifiee and trim events.
#[tokio::test(start_paused = true)]
async fn the_connection_manager_api_on_a_running_node() {
    use peerpool_proto::connmgr::{Bump, ConnManagerError, Decay, ProtectionRule};
    let mut cl = Cluster::new(5);
    // 1/4/10: low 6, high 8; budget 3.
    let target = cl
        .spawn(|c| {
            passive(c);
            c.pool.min_connections = 1;
            c.pool.max_connections = 10;
            c.policy.maintenance.expected_connections = Some(4);
        })
        .await
        .unwrap();
    let mut events = cl.node(target).events();
    let point = cl.member(target).point();
    let mut peers = Vec::new();
    for _ in 0..8 {
        let i = cl.spawn(passive).await.unwrap();
        cl.node(i).connect(point, None).await.unwrap();
        peers.push(cl.member(i).peer_id());
    }
    cl.run_for(SECOND).await;
    let cm = cl.node(target).conn_manager();
    for (k, p) in peers.iter().enumerate() {
        cm.tag_peer(*p, "score", k as i64 * 10).await.unwrap();
    }
    cm.upsert_tag(peers[1], "score", |v| v + 1).await.unwrap();
    let info = cm.tag_info(peers[1]).await.unwrap();
    assert_eq!(info.value, 11);
    assert_eq!(info.conns.len(), 1);
    // Protection: peer 0 (the lowest score) survives any trim; the budget is 3.
    cm.protect(peers[0], "mine").await.unwrap();
    cm.protect(peers[7], "a").await.unwrap();
    cm.protect(peers[6], "a").await.unwrap();
    assert_eq!(
        cm.protect(peers[5], "a").await,
        Err(ConnManagerError::ProtectionBudget { budget: 3 })
    );
    assert!(cm.is_protected(peers[0], Some("mine")).await);
    assert!(!cm.unprotect(peers[7], "a").await);
    let info = cm.tag_info(peers[0]).await.unwrap();
    assert!(info
        .protected_by
        .contains(&ProtectionRule::Tag("mine".into())));
    // A decaying tag: +20 on a bump, -1 per minute.
    cm.register_decaying_tag("blocks", 60 * SECOND, Decay::Fixed(1), Bump::SumUnbounded)
        .await
        .unwrap();
    cm.bump(peers[2], "blocks", 20).await.unwrap();
    cl.run_for(150 * SECOND).await;
    assert_eq!(
        cm.tag_info(peers[2]).await.unwrap().tags.get("blocks"),
        Some(&18)
    );
    // Past the grace period: a trim down to low 6 takes the two lowest unprotected.
    assert_eq!(cm.trim_open_conns().await, 2);
    cl.run_for(SECOND).await;
    assert!(cl.node(target).connection(&peers[0]).is_some(), "protected");
    assert!(cl.node(target).connection(&peers[1]).is_none(), "score 11");
    assert!(cl.node(target).connection(&peers[3]).is_none(), "score 30");
    assert!(
        cl.node(target).connection(&peers[2]).is_some(),
        "score 20 + 8"
    );
    let (mut opened, mut trimmed) = (0, 0);
    while let Some(Ok(e)) = events.try_recv() {
        match e {
            NodeEvent::ConnManager(ConnManagerEvent::Opened { .. }) => opened += 1,
            NodeEvent::ConnManager(ConnManagerEvent::Trimmed(_)) => trimmed += 1,
            _ => {}
        }
    }
    assert_eq!((opened, trimmed), (8, 2));
    cm.close().await;
    assert_eq!(
        cm.tag_peer(peers[1], "x", 1).await,
        Err(ConnManagerError::Closed)
    );
    cl.shutdown().await;
}
