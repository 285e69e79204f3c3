//! A node's life: shutdown (asked once, twice, from two handles at once), the shutdown that
//! dropping every handle performs, and the peers file across a restart. The nodes run on
//! the in-memory network with tokio's clock paused, so a timeout below is a safety net in
//! virtual time: it fires only if the node is stuck for good.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::clock::WallClock;
use peerpool::persist::MemoryStore;
use peerpool::transport::MemoryNetwork;
use peerpool::{CloseReason, ConnectError, EventError, Events, Node, NodeConfig, SendError};
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use peerpool_proto::pool::peers_file::parse_peers_file;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Safety net, virtual time.
const LIMIT: Duration = Duration::from_secs(600);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {LIMIT:?}"))
}

/// Two connected nodes on `net` that have exchanged messages both ways.
async fn connected_pair(net: &MemoryNetwork, a: NodeConfig) -> (TestNode, TestNode) {
    let a = start_in(net, a).await;
    let b = start_in(net, config(2, "127.0.0.2")).await;
    a.handle
        .connect(Point::from(b.addr), Some(b.handle.peer_id()))
        .await
        .unwrap();
    assert_exchange(&a.handle, &b.handle, 0x10).await;
    assert_exchange(&b.handle, &a.handle, 0x11).await;
    (a, b)
}

/// Reads `events` until the subscription ends; returns how it ended.
async fn until_closed(events: &mut Events) -> EventError {
    loop {
        match events.recv().await {
            Ok(_) | Err(EventError::Lagged(_)) => continue,
            Err(e) => return e,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_task_and_the_peer_sees_a_disconnect() {
    let net = MemoryNetwork::new();
    let (a, b) = connected_pair(&net, config(1, "127.0.0.1")).await;
    let mut b_events = b.handle.events();
    assert!(!a.handle.is_stopped());
    assert!(a.handle.live_tasks() > 0);
    within("shutdown", a.handle.shutdown()).await;
    assert!(a.handle.is_stopped());
    assert_eq!(a.handle.live_tasks(), 0);
    assert_eq!(
        next_close_reason(&mut b_events).await,
        CloseReason::RemoteDisconnect
    );
    // A second call returns as well, and the stopped node says so everywhere.
    within("second shutdown", a.handle.shutdown()).await;
    assert!(a.handle.is_stopped());
    assert_eq!(a.handle.live_tasks(), 0);
    assert!(within("recv_any", a.handle.recv_any()).await.is_none());
    let msg = RawMessage {
        tag: 0x12,
        body: vec![1],
    };
    assert_eq!(
        a.handle.send(&b.handle.peer_id(), &msg).await,
        Err(SendError::NotConnected)
    );
    assert!(matches!(
        a.handle.connect(Point::from(b.addr), None).await,
        Err(ConnectError::NodeStopped)
    ));
    // The peer goes on without it.
    assert!(b.handle.connection(&a.handle.peer_id()).is_none());
    assert!(!b.handle.is_stopped());
}

#[tokio::test(start_paused = true)]
async fn shutdown_from_two_handles_at_once_returns_for_both() {
    let net = MemoryNetwork::new();
    let (a, b) = connected_pair(&net, config(1, "127.0.0.1")).await;
    let mut b_events = b.handle.events();
    let other = a.handle.clone();
    within("two shutdowns", async {
        tokio::join!(a.handle.shutdown(), other.shutdown());
    })
    .await;
    assert!(a.handle.is_stopped() && other.is_stopped());
    assert_eq!(a.handle.live_tasks(), 0);
    assert_eq!(
        next_close_reason(&mut b_events).await,
        CloseReason::RemoteDisconnect
    );
    // And from tasks of their own, after the fact.
    let late: Vec<_> = (0..2)
        .map(|_| {
            let h = a.handle.clone();
            tokio::spawn(async move { h.shutdown().await })
        })
        .collect();
    for t in late {
        within("late shutdown", t).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_shuts_the_node_down() {
    let net = MemoryNetwork::new();
    let store = MemoryStore::new();
    let a = Node::<RawMessage>::builder(config(1, "127.0.0.1").validate().unwrap())
        .transport(net.clone())
        .store(Arc::new(store.clone()))
        .start()
        .await
        .unwrap();
    a.activate().await;
    let b = start_in(&net, config(2, "127.0.0.2")).await;
    a.connect(Point::from(b.addr), None).await.unwrap();
    assert_exchange(&a, &b.handle, 0x10).await;
    let mut a_events = a.events();
    let mut b_events = b.handle.events();
    let a_id = a.peer_id();
    assert_eq!(store.saves(), 0);
    // Every handle goes: this one and a clone (no shutdown is asked).
    let clone = a.clone();
    drop(a);
    drop(clone);
    assert_eq!(
        next_close_reason(&mut b_events).await,
        CloseReason::RemoteDisconnect
    );
    assert_eq!(
        within("the end of a's events", until_closed(&mut a_events)).await,
        EventError::Closed
    );
    // The events end only once the node has stopped, after its last save.
    assert!(store.saves() > 0);
    let text = String::from_utf8(store.contents().unwrap()).unwrap();
    assert!(text.contains(&b.handle.peer_id().to_string()), "{text}");
    assert!(b.handle.connection(&a_id).is_none());
}

/// A wall clock that moves with tokio's (paused) clock, so a restarted node's dates follow
/// the first run's.
#[derive(Debug)]
struct TokioWall {
    epoch: Duration,
    origin: tokio::time::Instant,
}

impl WallClock for TokioWall {
    fn since_epoch(&self) -> Duration {
        self.epoch + self.origin.elapsed()
    }
}

#[tokio::test(start_paused = true)]
async fn the_peers_file_is_saved_at_shutdown_and_a_restarted_node_redials_its_peer() {
    let net = MemoryNetwork::new();
    let store = MemoryStore::new();
    let wall = Arc::new(TokioWall {
        epoch: Duration::from_secs(1_700_000_000),
        origin: tokio::time::Instant::now(),
    });
    let a_config = |min_connections| {
        let mut c = config(1, "127.0.0.1");
        c.pool.min_connections = min_connections;
        c.policy.maintenance.enabled = min_connections > 0;
        c.policy.peers_file_interval = None;
        c.validate().unwrap()
    };
    let start_a = |min_connections| {
        Node::<RawMessage>::builder(a_config(min_connections))
            .transport(net.clone())
            .store(Arc::new(store.clone()))
            .clock(wall.clone())
            .start()
    };
    let b = start_in(&net, config(2, "127.0.0.2")).await;
    let b_id = b.handle.peer_id();
    // First run: a is told about b.
    let a = start_a(0).await.unwrap();
    a.activate().await;
    a.connect(Point::from(b.addr), None).await.unwrap();
    assert_exchange(&a, &b.handle, 0x10).await;
    let a_id = a.peer_id();
    assert_eq!(store.saves(), 0, "no save before shutdown (no period)");
    within("shutdown", a.shutdown()).await;
    assert_eq!(store.saves(), 1);
    let text = String::from_utf8(store.contents().unwrap()).unwrap();
    let records = parse_peers_file::<()>(&text).unwrap();
    let record = records
        .iter()
        .find(|r| r.peer_id == b_id)
        .unwrap_or_else(|| panic!("b is not in the saved file: {text}"));
    assert!(record.last_established_connection.is_some(), "{text}");
    assert!(
        record.points.iter().any(|p| p.point == Point::from(b.addr)),
        "b's point is not saved: {text}"
    );
    drop(a);
    // Second run, on the same store: nobody tells a anything; it needs one connection and
    // dials the peer it learned.
    let mut b_events = b.handle.events();
    let a2 = start_a(1).await.unwrap();
    assert_eq!(a2.peer_id(), a_id);
    let mut a_events = a2.events();
    assert!(a2.known_points().await.contains(&Point::from(b.addr)));
    a2.activate().await;
    let peer = wait_for_within(&mut a_events, LIMIT, |e| match e {
        peerpool::NodeEvent::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
        _ => None,
    })
    .await;
    assert_eq!(peer, b_id);
    wait_connected(&b.handle, &mut b_events, a_id).await;
    assert_exchange(&a2, &b.handle, 0x20).await;
    within("shutdown", a2.shutdown()).await;
    assert_eq!(store.saves(), 2);
}
