//! The maintenance, swap, Nack referrals and Bootstrap/Advertise, as octez's own tests
//! exercise them (BEHAVIOUR.md §12), with the real node code in a [`Cluster`]: in memory,
//! virtual time, deterministic.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use peerpool::{NodeConfig, NodeEvent};
use peerpool_proto::connmgr::ConnManagerConfig;
use peerpool_proto::policy::Triggers;
use peerpool_proto::pool::P2pEvent;
use peerpool_sim::Cluster;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// A node that dials only when told to, with no swaps.
fn passive(c: &mut NodeConfig) {
    c.policy.maintenance.enabled = false;
    c.policy.swap_linger = None;
}

/// A node whose maintenance wakes only on triggers (the idle timer is an hour away).
fn maintained(min: usize, expected: usize, max: usize) -> impl FnOnce(&mut NodeConfig) {
    move |c: &mut NodeConfig| {
        c.pool.min_connections = min;
        c.pool.max_connections = max;
        c.policy.maintenance.expected_connections = Some(expected);
        c.policy.maintenance.idle_time = HOUR;
        c.policy.swap_linger = None;
    }
}

#[tokio::test(start_paused = true)]
async fn the_too_many_trigger_brings_the_count_back_to_max_target() {
    for trigger in [true, false] {
        let mut cl = Cluster::new(1);
        // 12/24/36: max_target 28, max_threshold 32.
        let target = cl
            .spawn(|c| {
                maintained(12, 24, 36)(c);
                c.policy.max_incoming_connections = Some(36);
                // octez's trigger alone: the connection manager would trim at the
                // crossing itself (its own test is in `eclipse.rs` and the pure core).
                c.policy.conn_manager = ConnManagerConfig::disabled();
                c.policy.maintenance.triggers = Triggers {
                    too_many: trigger,
                    ..Triggers::default()
                };
            })
            .await
            .unwrap();
        let bounds = cl.node(target).bounds().await.unwrap();
        assert_eq!((bounds.max_target, bounds.max_threshold), (28, 32));
        let point = cl.member(target).point();
        for _ in 0..33 {
            let client = cl.spawn(passive).await.unwrap();
            cl.node(client).connect(point, None).await.unwrap();
        }
        // The 33rd crossed max_threshold: with the trigger on, the target closes
        // connections down to max_target at once.
        let settled = cl
            .run_until(SECOND / 10, 60 * SECOND, |cl| {
                cl.connections()[target] <= 28
            })
            .await;
        if trigger {
            assert!(settled.is_some_and(|t| t < SECOND), "{settled:?}");
            assert_eq!(cl.connections()[target], 28);
        } else {
            assert!(settled.is_none(), "{:?}", cl.connections()[target]);
            assert_eq!(cl.connections()[target], 33);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_too_few_trigger_reconnects() {
    for trigger in [true, false] {
        let mut cl = Cluster::new(2);
        let peers: Vec<usize> = {
            let mut v = Vec::new();
            for _ in 0..12 {
                v.push(cl.spawn(passive).await.unwrap());
            }
            v
        };
        // 6/12/18: min_threshold 8, min_target 10.
        let target = cl
            .spawn(|c| {
                maintained(6, 12, 18)(c);
                c.policy.maintenance.triggers = Triggers {
                    too_few: trigger,
                    ..Triggers::default()
                };
                c.pool.reconnection.disconnection_delay = SECOND;
            })
            .await
            .unwrap();
        for p in &peers {
            let point = cl.member(*p).point();
            cl.node(target).add_peer(point, None).await;
        }
        let reached = cl
            .run_until(SECOND / 10, 30 * SECOND, |cl| {
                cl.connections()[target] >= 10
            })
            .await;
        assert!(reached.is_some(), "{:?}", cl.connections());
        // Five peers drop the target: below min_connections 6.
        let target_id = cl.member(target).peer_id();
        let mut gone = 0;
        for p in &peers {
            if cl.node(*p).connection(&target_id).is_some() && gone < cl.connections()[target] - 5 {
                cl.node(*p).disconnect(target_id).await;
                gone += 1;
            }
        }
        cl.run_for(SECOND / 10).await;
        assert!(cl.connections()[target] < 6, "{:?}", cl.connections());
        let back = cl
            .run_until(SECOND / 10, 60 * SECOND, |cl| {
                cl.connections()[target] >= 10
            })
            .await;
        assert_eq!(
            back.is_some(),
            trigger,
            "trigger {trigger}: {:?}",
            cl.connections()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_maintenance_reaches_its_target_from_one_bootstrap_node() {
    let mut cl = Cluster::new(3);
    // 3/6/9: min_target 5. Node 0 is everyone's only known point.
    let boot = cl.spawn(maintained(3, 6, 9)).await.unwrap();
    let boot_point = cl.member(boot).point();
    for _ in 0..11 {
        let i = cl.spawn(maintained(3, 6, 9)).await.unwrap();
        cl.node(i).add_peer(boot_point, None).await;
    }
    let t = cl
        .run_until(SECOND / 10, 120 * SECOND, |cl| {
            cl.connections().iter().all(|c| (5..=9).contains(c))
        })
        .await;
    assert!(t.is_some(), "{:?}", cl.connections());
    // Everyone learnt points it was never given, through the bootstrap node.
    let known = cl.node(5).known_points().await;
    assert!(known.len() > 5, "{known:?}");
}

#[tokio::test(start_paused = true)]
async fn an_overcrowded_node_refers_its_clients_to_the_points_it_knows() {
    let mut cl = Cluster::new(4);
    let target = cl
        .spawn(|c| {
            passive(c);
            c.pool.min_connections = 0;
            c.pool.max_connections = 3;
        })
        .await
        .unwrap();
    let point = cl.member(target).point();
    let mut early = Vec::new();
    for _ in 0..3 {
        let i = cl.spawn(passive).await.unwrap();
        cl.node(i).connect(point, None).await.unwrap();
        early.push(cl.member(i).point());
    }
    for _ in 0..4 {
        let late = cl.spawn(passive).await.unwrap();
        let err = cl.node(late).connect(point, None).await.unwrap_err();
        let (motive, referred) = err.nack().expect("a Nack");
        assert_eq!(
            motive,
            peerpool_proto::connection_message::NackMotive::TooManyConnections
        );
        assert!(early.iter().all(|p| referred.contains(p)), "{referred:?}");
        // The late client registered the referrals.
        let known = cl.node(late).known_points().await;
        assert!(early.iter().all(|p| known.contains(p)), "{known:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn bootstrap_and_advertise_teach_points_unless_discovery_is_off() {
    let mut cl = Cluster::new(5);
    let hub = cl.spawn(passive).await.unwrap();
    let hub_point = cl.member(hub).point();
    let c = cl.spawn(passive).await.unwrap();
    cl.node(c).connect(hub_point, None).await.unwrap();
    let c_point = cl.member(c).point();
    for discovery in [true, false] {
        let a = cl
            .spawn(|cfg| {
                passive(cfg);
                cfg.policy.bootstrap_on_connect = true;
                cfg.policy.peer_discovery = discovery;
            })
            .await
            .unwrap();
        let mut events = cl.node(a).events();
        cl.node(a).connect(hub_point, None).await.unwrap();
        cl.run_for(SECOND).await;
        let mut advertised = false;
        while let Some(Ok(e)) = events.try_recv() {
            advertised |= matches!(e, NodeEvent::AdvertiseReceived { .. });
        }
        let knows = cl.node(a).known_points().await.contains(&c_point);
        // Without discovery a node neither asks nor listens.
        assert_eq!(
            (advertised, knows),
            (discovery, discovery),
            "discovery {discovery}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn in_a_clique_a_wrong_expected_peer_id_loses_exactly_that_connection() {
    let mut cl = Cluster::new(6);
    let n = 4;
    for _ in 0..n {
        cl.spawn(maintained(3, 3, 6)).await.unwrap();
    }
    // Everyone knows everyone with the right id, except node 0, which expects a wrong id
    // at node 1's point.
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let id = if (i, j) == (0, 1) {
                cl.member(2).peer_id()
            } else {
                cl.member(j).peer_id()
            };
            let point = cl.member(j).point();
            cl.node(i).add_peer(point, Some(id)).await;
        }
    }
    cl.run_for(60 * SECOND).await;
    for i in 0..n {
        for j in (0..n).filter(|j| *j > i) {
            assert_eq!(cl.linked(i, j), (i, j) != (0, 1), "{i}–{j}");
        }
    }
    // The mismatch greylists nobody.
    assert!(!cl.node(0).is_addr_banned(cl.member(1).addr.ip()).await);
}

/// The chain 1b – 1a – S – 2a – 2b; S's maintenance is in bounds and proposes a swap.
async fn swap_chain(swap: bool) -> (Cluster, [usize; 5]) {
    let mut cl = Cluster::new(7);
    let peer = |c: &mut NodeConfig| {
        c.policy.maintenance.enabled = false;
    };
    let b1 = cl.spawn(peer).await.unwrap();
    let a1 = cl.spawn(peer).await.unwrap();
    let s = cl
        .spawn(|c| {
            maintained(1, 2, 4)(c);
            c.policy.swap_linger = swap.then_some(Duration::from_secs(30));
        })
        .await
        .unwrap();
    let a2 = cl.spawn(peer).await.unwrap();
    let b2 = cl.spawn(peer).await.unwrap();
    for (from, to) in [(a1, b1), (s, a1), (s, a2), (a2, b2)] {
        let point = cl.member(to).point();
        cl.node(from).connect(point, None).await.unwrap();
    }
    cl.node(s).maintain().await;
    cl.run_for(10 * SECOND).await;
    (cl, [b1, a1, s, a2, b2])
}

#[tokio::test(start_paused = true)]
async fn swap_rewires_the_chain_and_keeps_every_degree() {
    let (cl, [b1, a1, s, a2, b2]) = swap_chain(true).await;
    let degrees = cl.connections();
    assert_eq!(
        [
            degrees[b1],
            degrees[a1],
            degrees[s],
            degrees[a2],
            degrees[b2]
        ],
        [1, 2, 2, 2, 1]
    );
    // S swapped with one of its neighbours: that neighbour now reaches across S, and S
    // took over its far end.
    assert!(cl.linked(a1, a2), "the two sides of S are linked");
    let took_1b = cl.linked(s, b1) && !cl.linked(a1, b1) && !cl.linked(s, a2);
    let took_2b = cl.linked(s, b2) && !cl.linked(a2, b2) && !cl.linked(s, a1);
    assert!(took_1b ^ took_2b, "{:?}", cl.connections());
}

#[tokio::test(start_paused = true)]
async fn with_swap_disabled_nothing_moves() {
    let (cl, [b1, a1, s, a2, b2]) = swap_chain(false).await;
    assert!(cl.linked(b1, a1) && cl.linked(a1, s) && cl.linked(s, a2) && cl.linked(a2, b2));
    assert!(!cl.linked(a1, a2));
    let stats = cl.node(s).stats().await;
    assert_eq!(stats.connections, 2);
}

#[tokio::test(start_paused = true)]
async fn another_network_is_refused_and_its_point_not_kept() {
    let mut cl = Cluster::new(8);
    let y = cl.spawn(passive).await.unwrap();
    let x = cl
        .spawn(|c| {
            passive(c);
            c.versions = peerpool_proto::connection_message::SupportedVersions::octez("OTHER");
        })
        .await
        .unwrap();
    let mut events = cl.node(y).events();
    let err = cl
        .node(x)
        .connect(cl.member(y).point(), None)
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("chain") || err.nack().is_some(),
        "{err}"
    );
    cl.run_for(SECOND).await;
    // y saw the peer, and forgot its point: it is never advertised.
    let mut rejected = false;
    while let Some(Ok(e)) = events.try_recv() {
        rejected |= matches!(e, NodeEvent::Pool(P2pEvent::RejectingRequest { .. }));
    }
    assert!(rejected);
    assert!(!cl
        .node(y)
        .known_points()
        .await
        .contains(&cl.member(x).point()));
    assert!(!cl.node(y).is_addr_banned(cl.member(x).addr.ip()).await);
}

/// Runs `body` on a runtime of its own under a paused clock, failing the test if it has
/// not finished after `watchdog` of real time: a livelock keeps virtual time from moving,
/// so only a real deadline can catch it.
fn with_watchdog(watchdog: Duration, body: impl std::future::Future<Output = ()> + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = Cluster::runtime().unwrap();
        rt.block_on(body);
        let _ = done.send(());
    });
    match finished.recv_timeout(watchdog) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("no progress within {watchdog:?} of real time (a livelock?)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the scenario failed"),
    }
}

/// A network larger than the nodes' tables of known points (`--connections 8` keeps 64):
/// Nack referrals keep bringing back points the GC could drop. The GC keeps the points
/// that are backing off, so a refused point is not learnt again, fresh, and redialled at
/// once; every node gets within its bounds, with a bounded number of dials. (Seed 1
/// livelocked at one virtual instant before the GC kept backing-off points.)
#[test]
fn a_network_larger_than_the_tables_of_points_settles_without_a_dial_storm() {
    with_watchdog(300 * SECOND, async {
        let mut cl = Cluster::new(1);
        let nodes = 100;
        let dials = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..nodes {
            let i = cl.spawn(|c| c.set_connections(8)).await.unwrap();
            let mut events = cl.node(i).events();
            let dials = dials.clone();
            tokio::spawn(async move {
                while let Ok(e) = events.recv().await {
                    if let NodeEvent::Pool(P2pEvent::OutgoingConnection { .. }) = e {
                        dials.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        for i in 0..nodes {
            for b in (0..3).filter(|b| *b != i) {
                let (point, id) = (cl.member(b).point(), cl.member(b).peer_id());
                cl.node(i).add_peer(point, Some(id)).await;
            }
        }
        let bounds = cl.node(0).bounds().await.unwrap();
        assert_eq!(bounds.min_threshold, 5);
        let t = cl
            .run_until(SECOND / 10, 60 * SECOND, |cl| {
                cl.connections()
                    .iter()
                    .all(|c| (bounds.min_threshold..=bounds.max_threshold).contains(c))
            })
            .await;
        assert!(t.is_some(), "{:?}", cl.connections());
        // About 45 dials per node were measured; a storm is thousands.
        let dials = dials.load(std::sync::atomic::Ordering::Relaxed);
        assert!(dials < 150 * nodes as u64, "{dials} dials");
        cl.shutdown().await;
    });
}
