//! The node on top of the pool: the peers file across restarts, greylisting of
//! misbehaving peers, private mode, bans, and the pool's events.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::persist::MemoryStore;
use peerpool::socket::{self, SocketError};
use peerpool::transport::MemoryNetwork;
use peerpool::CloseReason;
use peerpool::Node;
use peerpool::{ConnectError, NodeEvent};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::DisconnectReason;
use peerpool_proto::pool::{P2pEvent, PoolError};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("peerpool-pool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TCP connection from a chosen loopback address.
async fn connect_from(ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().unwrap())?;
    socket.connect(to).await
}

async fn established_peers(events: &mut peerpool::Events, want: &HashSet<PeerId>) {
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        let peer = wait_for(events, |e| match e {
            NodeEvent::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
            _ => None,
        })
        .await;
        seen.insert(peer);
    }
}

#[tokio::test]
async fn a_restarted_node_reconnects_to_the_peers_it_learned() {
    let dir = temp_dir("restart");
    let b = start(config(2, "127.0.0.2")).await;
    let c = start(config(3, "127.0.0.3")).await;
    c.handle.connect(Point::from(b.addr), None).await.unwrap();
    let a_config = || {
        let mut ca = config(1, "127.0.0.1");
        ca.peers_file = Some(dir.join("peers.json"));
        ca.policy.bootstrap_on_connect = true;
        ca.pool.min_connections = 2;
        ca.policy.maintenance.enabled = true;
        ca.pool.reconnection.disconnection_delay = Duration::from_millis(100);
        ca
    };
    // First run: a is told about b only, learns c from b's Advertise and dials it.
    let a = start(a_config()).await;
    let mut events = a.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let want: HashSet<PeerId> = [b.handle.peer_id(), c.handle.peer_id()].into();
    established_peers(&mut events, &want).await;
    a.handle.shutdown().await;
    let saved = std::fs::read_to_string(dir.join("peers.json")).unwrap();
    assert!(saved.contains(&b.handle.peer_id().to_string()), "{saved}");
    assert!(saved.contains(&c.handle.peer_id().to_string()), "{saved}");
    drop(a);
    // Second run: nobody tells a anything; it reconnects to both from its peers file.
    let a2 = start(a_config()).await;
    let mut events = a2.handle.events();
    established_peers(&mut events, &want).await;
    let known = a2.handle.known_points().await;
    assert!(
        known.contains(&Point::from(b.addr)) && known.contains(&Point::from(c.addr)),
        "{known:?}"
    );
    a2.handle.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_peers_file_is_moved_aside_and_the_node_starts() {
    let dir = temp_dir("corrupt");
    std::fs::write(dir.join("peers.json"), b"[{\"peer_id\": 12").unwrap();
    let mut cfg = config(1, "127.0.0.1");
    cfg.peers_file = Some(dir.join("peers.json"));
    let a = start(cfg).await;
    let b = start(config(2, "127.0.0.2")).await;
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let moved: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("peers.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    a.handle.save_peers().await.unwrap();
    let saved = std::fs::read_to_string(dir.join("peers.json")).unwrap();
    assert!(saved.contains(&b.handle.peer_id().to_string()));
}

#[tokio::test]
async fn a_peer_sending_garbage_after_the_handshake_is_greylisted_with_its_address() {
    let node = start(config(1, "127.0.0.1")).await;
    let mut events = node.handle.events();
    let bad = identity(50);
    let stream = connect_from("127.0.0.7", node.addr).await.unwrap();
    let auth = socket::authenticate(
        stream,
        client_config(bad.clone()),
        Direction::Outgoing,
        [1; 24],
    )
    .await
    .unwrap();
    let version = auth.connection_message.version.clone();
    let mut est = auth.accept(version).await.unwrap();
    est.stream.write_all(&[0x00, 0x03, 1, 2, 3]).await.unwrap();
    let reason = next_close_reason(&mut events).await;
    assert!(reason.is_peer_fault(), "{reason}");
    let bad_id = bad.peer_id;
    let peer_banned = node.handle.is_peer_banned(bad_id).await;
    let addr_banned = node
        .handle
        .is_addr_banned("127.0.0.7".parse().unwrap())
        .await;
    assert!(peer_banned && addr_banned);
    // The address is refused at accept, before any handshake byte.
    let stream = connect_from("127.0.0.7", node.addr).await.unwrap();
    let again = socket::authenticate(
        stream,
        client_config(identity(51)),
        Direction::Outgoing,
        [2; 24],
    )
    .await;
    assert!(
        matches!(
            again,
            Err(SocketError::ClosedDuringHandshake) | Err(SocketError::Io(_))
        ),
        "{again:?}"
    );
    // The peer id is refused from another address too, without a Nack.
    let stream = connect_from("127.0.0.8", node.addr).await.unwrap();
    let auth = socket::authenticate(stream, client_config(bad), Direction::Outgoing, [3; 24])
        .await
        .unwrap();
    let version = auth.connection_message.version.clone();
    assert!(auth.accept(version).await.is_err());
    let error = wait_for(&mut events, |e| match e {
        NodeEvent::HandshakeFailed { error, .. } if matches!(error, ConnectError::Pool(_)) => {
            Some(error.clone())
        }
        _ => None,
    })
    .await;
    assert!(
        matches!(error, ConnectError::Pool(PoolError::PeerBanned(p)) if p == bad_id),
        "{error}"
    );
}

#[tokio::test]
async fn a_garbage_connection_message_greylists_the_address() {
    let node = start(config(1, "127.0.0.1")).await;
    let mut events = node.handle.events();
    let mut s = connect_from("127.0.0.9", node.addr).await.unwrap();
    s.write_all(&[0x00, 0x04, 9, 9, 9, 9]).await.unwrap();
    wait_for(&mut events, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. }).then_some(())
    })
    .await;
    let banned = node
        .handle
        .is_addr_banned("127.0.0.9".parse().unwrap())
        .await;
    assert!(banned);
    // Other addresses are unaffected.
    let other = start(config(2, "127.0.0.10")).await;
    other
        .handle
        .connect(Point::from(node.addr), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn private_mode_accepts_only_trusted_points_and_advertises_nothing() {
    let mut cp = config(1, "127.0.0.1");
    cp.pool.private_mode = true;
    cp.metadata.private_node = true;
    // The maintenance dials trusted points (the only candidates in private mode).
    cp.pool.min_connections = 1;
    cp.policy.maintenance.enabled = true;
    let private = start(cp).await;
    let stranger = start(config(2, "127.0.0.2")).await;
    let mut events = private.handle.events();
    // An untrusted peer is closed without a Nack.
    assert!(stranger
        .handle
        .connect(Point::from(private.addr), None)
        .await
        .is_err());
    let error = next_handshake_error(&mut events).await;
    assert!(
        matches!(error, ConnectError::Pool(PoolError::PrivateMode(_))),
        "{error}"
    );
    // The private node cannot dial an untrusted point either.
    let friend = start(config(3, "127.0.0.3")).await;
    let err = private
        .handle
        .connect(Point::from(friend.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::PrivateMode(_))),
        "{err}"
    );
    // A trusted point (`--peer`) is dialed and accepted.
    private
        .handle
        .add_peer(Point::from(friend.addr), None)
        .await;
    let peer = next_established_peer(&mut events).await;
    assert_eq!(peer, friend.handle.peer_id());
    // Nothing is advertised by a private node.
    let listed = private.handle.advertisable_points(50).await;
    assert!(listed.is_empty());
    // And the friend keeps the private node's point out of what it advertises.
    let friend_lists = friend.handle.advertisable_points(50).await;
    assert!(
        !friend_lists.contains(&Point::from(private.addr)),
        "{friend_lists:?}"
    );
}

#[tokio::test]
async fn banning_a_point_closes_its_connection_and_refuses_it_later() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let mut events = a.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.ban_point(Point::from(b.addr)).await;
    let reason = next_close_reason(&mut events).await;
    assert_eq!(reason, CloseReason::Local(DisconnectReason::AddrBanned));
    let err = a
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::PointBanned(_))),
        "{err}"
    );
    // b cannot come in either: its address is refused at accept.
    assert!(b.handle.connect(Point::from(a.addr), None).await.is_err());
}

#[tokio::test]
async fn the_pool_events_reach_subscribers_in_order() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let mut events = a.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"established") {
        let kind = wait_for(&mut events, |e| match e {
            NodeEvent::Pool(P2pEvent::OutgoingConnection { .. }) => Some("outgoing"),
            NodeEvent::Pool(P2pEvent::AcceptingRequest { .. }) => Some("accepting"),
            NodeEvent::Pool(P2pEvent::ConnectionEstablished { .. }) => Some("established"),
            _ => None,
        })
        .await;
        kinds.push(kind);
    }
    assert_eq!(kinds, ["outgoing", "accepting", "established"]);
    b.handle.shutdown().await;
    wait_for(&mut events, |e| {
        matches!(e, NodeEvent::Pool(P2pEvent::ExternalDisconnection { .. })).then_some(())
    })
    .await;
    let state = a
        .handle
        .point_info(Point::from(b.addr))
        .await
        .map(|p| p.state());
    assert_eq!(state, Some(peerpool_proto::pool::PointState::Disconnected));
}

/// The application's own peer metadata: a score the pool uses for GC and the node for
/// bandwidth weights.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Scored {
    score: f64,
}

impl peerpool_proto::pool::PeerMeta for Scored {
    fn initial() -> Self {
        Scored { score: 1.0 }
    }

    fn score(&self) -> f64 {
        self.score
    }
}

#[tokio::test]
async fn a_peer_s_bandwidth_weight_follows_its_score() {
    let start_scored = |seed, ip| async move {
        let node =
            peerpool::Node::<RawMessage, Scored>::start(config(seed, ip).validate().unwrap())
                .await
                .unwrap();
        node.activate().await;
        node
    };
    let a = start_scored(1, "127.0.0.1").await;
    let b = start_scored(2, "127.0.0.2").await;
    let a_id = a.peer_id();
    // b trusts a (which registers it) and gives it a score of 3.
    b.trust_peer(a_id).await;
    b.set_peer_metadata(a_id, Scored { score: 3.0 })
        .await
        .unwrap();
    let mut b_events = b.events();
    a.connect(Point::from(b.local_addr().unwrap()), None)
        .await
        .unwrap();
    wait_for(&mut b_events, |e| {
        matches!(e, NodeEvent::ConnectionEstablished { .. }).then_some(())
    })
    .await;
    let weights: Vec<u32> = b.io_connections().iter().map(|c| c.weight).collect();
    assert_eq!(weights, [3]);
    let weights: Vec<u32> = a.io_connections().iter().map(|c| c.weight).collect();
    assert_eq!(weights, [1]);
    assert_eq!(b.peer_metadata(a_id).await.unwrap().score, 3.0);
    assert_eq!(peerpool_proto::policy::weight_of_score(0.2), 1);
    assert_eq!(peerpool_proto::policy::weight_of_score(f64::NAN), 1);
    assert_eq!(peerpool_proto::policy::weight_of_score(1e9), 1000);
}

#[tokio::test]
async fn a_slow_event_subscriber_is_told_what_it_missed_and_never_blocks_the_node() {
    let mut ca = config(1, "127.0.0.1");
    ca.event_capacity = 4;
    let a = start(ca).await;
    let mut slow = a.handle.events();
    // Many events while the subscriber does not read: the node is not blocked.
    for seed in 10..14 {
        let b = start(config(seed, "127.0.0.2")).await;
        a.handle.connect(Point::from(b.addr), None).await.unwrap();
    }
    match slow.recv().await {
        Err(peerpool::EventError::Lagged(missed)) => assert!(missed > 0),
        other => panic!("expected a lag report, got {other:?}"),
    }
    // After the report it receives the newest events.
    assert!(slow.recv().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_peers_file_is_saved_periodically_without_a_shutdown() {
    let net = MemoryNetwork::new();
    let store = MemoryStore::new();
    let mut ca = config(1, "127.0.0.1");
    ca.policy.peers_file_interval = Some(Duration::from_secs(300));
    let a = Node::<RawMessage>::builder(ca.validate().unwrap())
        .transport(net.clone())
        .store(Arc::new(store.clone()))
        .start()
        .await
        .unwrap();
    a.activate().await;
    let b = start_in(&net, config(2, "127.0.0.2")).await;
    let mut events = a.events();
    a.connect(Point::from(b.addr), None).await.unwrap();
    assert_eq!(store.saves(), 0);
    // One period later (virtual time) the store holds b, though a is still running.
    let saved = wait_for_within(&mut events, Duration::from_secs(400), |e| match e {
        NodeEvent::PeersFileSaved(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert!(saved.is_ok(), "{saved:?}");
    assert_eq!(store.saves(), 1);
    let text = String::from_utf8(store.contents().unwrap()).unwrap();
    assert!(text.contains(&b.handle.peer_id().to_string()), "{text}");
}
