//! The node on top of the pool: the peers file across restarts, greylisting of
//! misbehaving peers, private mode, bans, and the pool's events.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::connection::CloseReason;
use peerpool::node::{ConnectError, NodeEvent};
use peerpool::socket::{self, SocketError};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use peerpool_proto::pool::{P2pEvent, PoolError};
use std::collections::HashSet;
use std::net::SocketAddr;
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

async fn established_peers(
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    want: &HashSet<PeerId>,
) {
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
        ca.data_dir = Some(dir.clone());
        ca.bootstrap_on_connect = true;
        ca.pool.min_connections = 2;
        ca.pool.reconnection.disconnection_delay = Duration::from_millis(100);
        ca
    };
    // First run: a is told about b only, learns c from b's Advertise and dials it.
    let a = start(a_config()).await;
    let mut events = a.handle.subscribe();
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
    let mut events = a2.handle.subscribe();
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
    cfg.data_dir = Some(dir.clone());
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
    let mut events = node.handle.subscribe();
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
    let (peer_banned, addr_banned) = node
        .handle
        .with_pool(move |pool, _| {
            (
                pool.peer_banned(&bad_id),
                pool.acl().banned_addr("127.0.0.7".parse().unwrap()),
            )
        })
        .await
        .unwrap();
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
        NodeEvent::HandshakeFailed { error, .. } if matches!(**error, ConnectError::Pool(_)) => {
            Some(error.clone())
        }
        _ => None,
    })
    .await;
    assert!(
        matches!(*error, ConnectError::Pool(PoolError::PeerBanned(p)) if p == bad_id),
        "{error}"
    );
}

#[tokio::test]
async fn a_garbage_connection_message_greylists_the_address() {
    let node = start(config(1, "127.0.0.1")).await;
    let mut events = node.handle.subscribe();
    let mut s = connect_from("127.0.0.9", node.addr).await.unwrap();
    s.write_all(&[0x00, 0x04, 9, 9, 9, 9]).await.unwrap();
    wait_for(&mut events, |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. }).then_some(())
    })
    .await;
    let banned = node
        .handle
        .with_pool(|pool, _| pool.acl().banned_addr("127.0.0.9".parse().unwrap()))
        .await
        .unwrap();
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
    let private = start(cp).await;
    let stranger = start(config(2, "127.0.0.2")).await;
    let mut events = private.handle.subscribe();
    // An untrusted peer is closed without a Nack.
    assert!(stranger
        .handle
        .connect(Point::from(private.addr), None)
        .await
        .is_err());
    let error = next_handshake_error(&mut events).await;
    assert!(
        matches!(*error, ConnectError::Pool(PoolError::PrivateMode(_))),
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
    let listed = private
        .handle
        .with_pool(|pool, _| pool.list_known_points(true, 50, &mut rand::rng()))
        .await
        .unwrap();
    assert!(listed.is_empty());
    // And the friend keeps the private node's point out of what it advertises.
    let friend_lists = friend
        .handle
        .with_pool(|pool, _| pool.list_known_points(true, 50, &mut rand::rng()))
        .await
        .unwrap();
    assert!(
        !friend_lists.contains(&Point::from(private.addr)),
        "{friend_lists:?}"
    );
}

#[tokio::test]
async fn banning_a_point_closes_its_connection_and_refuses_it_later() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let mut events = a.handle.subscribe();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.ban_point(Point::from(b.addr)).await;
    let reason = next_close_reason(&mut events).await;
    assert_eq!(reason, CloseReason::Local("banned"));
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
    let mut events = a.handle.subscribe();
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
        .with_pool({
            let b_point = Point::from(b.addr);
            move |pool, _| pool.point_state(&b_point)
        })
        .await
        .unwrap();
    assert_eq!(state, Some(peerpool_proto::pool::PointState::Disconnected));
}

#[tokio::test]
async fn a_peer_s_bandwidth_weight_follows_its_score() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let a_id = a.handle.peer_id();
    // b already knows a, with a score of 3 in its metadata.
    b.handle
        .with_pool(move |pool, now| {
            pool.register_peer(now, a_id);
            pool.set_peer_metadata(&a_id, serde_json::json!({ "score": 3 }))
                .unwrap();
        })
        .await
        .unwrap();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let weights: Vec<u32> = b
        .handle
        .io_connections()
        .await
        .iter()
        .map(|c| c.weight)
        .collect();
    assert_eq!(weights, [3]);
    let weights: Vec<u32> = a
        .handle
        .io_connections()
        .await
        .iter()
        .map(|c| c.weight)
        .collect();
    assert_eq!(weights, [1]);
    assert_eq!(peerpool::node::weight_of_score(0.2), 1);
    assert_eq!(peerpool::node::weight_of_score(f64::NAN), 1);
    assert_eq!(peerpool::node::weight_of_score(1e9), 1000);
}

#[tokio::test]
async fn a_slow_event_subscriber_is_told_what_it_missed_and_never_blocks_the_node() {
    let mut ca = config(1, "127.0.0.1");
    ca.event_capacity = 4;
    let a = start(ca).await;
    let mut slow = a.handle.subscribe();
    // Many events while the subscriber does not read: the node is not blocked.
    for seed in 10..14 {
        let b = start(config(seed, "127.0.0.2")).await;
        a.handle.connect(Point::from(b.addr), None).await.unwrap();
    }
    match slow.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => assert!(missed > 0),
        other => panic!("expected a lag report, got {other:?}"),
    }
    // After the report it receives the newest events.
    assert!(slow.recv().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_peers_file_is_saved_periodically_without_a_shutdown() {
    let dir = temp_dir("periodic");
    let mut ca = config(1, "127.0.0.1");
    ca.data_dir = Some(dir.clone());
    ca.peers_file_interval = Duration::from_secs(300);
    let a = start(ca).await;
    let b = start(config(2, "127.0.0.2")).await;
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let path = dir.join("peers.json");
    assert!(!path.exists());
    // One period later (virtual time) the file holds b, though a is still running.
    tokio::time::sleep(Duration::from_secs(301)).await;
    let mut saved = String::new();
    for _ in 0..100 {
        saved = std::fs::read_to_string(&path).unwrap_or_default();
        if !saved.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saved.contains(&b.handle.peer_id().to_string()), "{saved}");
}
