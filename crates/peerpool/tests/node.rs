//! Real nodes over loopback TCP: handshake, messages, Nack, Bootstrap → Advertise.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::socket::SocketError;
use peerpool::CloseReason;
use peerpool::{ConnectError, NodeEvent};
use peerpool_proto::connection_message::{NackMotive, SupportedVersions};
use peerpool_proto::handshake::{Direction, HandshakeError};
use peerpool_proto::point::Point;
use peerpool_proto::policy::DisconnectReason;
use peerpool_proto::pool::PoolError;

#[tokio::test]
async fn two_nodes_handshake_and_exchange_messages_both_ways() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.1")).await;
    let mut b_events = b.handle.events();
    let peer = a
        .handle
        .connect(Point::from(b.addr), Some(b.handle.peer_id()))
        .await
        .unwrap();
    assert_eq!(peer, b.handle.peer_id());
    let (who, dir) = wait_for(&mut b_events, |e| match e {
        NodeEvent::ConnectionEstablished {
            peer_id, direction, ..
        } => Some((*peer_id, *direction)),
        _ => None,
    })
    .await;
    assert_eq!((who, dir), (a.handle.peer_id(), Direction::Incoming));
    assert_exchange(&a.handle, &b.handle, 0x10).await;
    assert_exchange(&b.handle, &a.handle, 0x11).await;
    // A large message crosses many chunks.
    let to_b = a.handle.connections().pop().unwrap();
    let from_a = b.handle.connections().pop().unwrap();
    let big = peerpool_proto::message::RawMessage {
        tag: 0x20,
        body: (0..300_000u32).map(|i| i as u8).collect(),
    };
    to_b.send(&big).await.unwrap();
    assert_eq!(from_a.recv().await, Some(big));
    // Connecting again is refused by the pool: already connected.
    let err = a
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::AlreadyConnected(_))),
        "{err}"
    );
}

#[tokio::test]
async fn expected_peer_id_mismatch_is_refused() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.1")).await;
    let wrong = identity(3).peer_id;
    let err = a
        .handle
        .connect(Point::from(b.addr), Some(wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::IdentityCheckFailure { expected, got, .. }) if expected == wrong && got == b.handle.peer_id())
    );
    assert!(a.handle.connections().is_empty());
    // An identity mismatch at the handshake greylists nothing (BEHAVIOUR.md §1.2).
    let b_ip = b.addr.ip();
    let banned = a.handle.is_addr_banned(b_ip).await;
    assert!(!banned);
    // The point remembers the expected peer id: a plain connect is refused too...
    let err = a
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Pool(PoolError::IdentityCheckFailure { .. })
        ),
        "{err}"
    );
    // ...until the right one is given.
    let b_id = b.handle.peer_id();
    assert_eq!(
        a.handle
            .connect(Point::from(b.addr), Some(b_id))
            .await
            .unwrap(),
        b_id
    );
}

#[tokio::test]
async fn unknown_chain_name_is_answered_with_a_nack_carrying_points() {
    let mut cb = config(2, "127.0.0.1");
    cb.versions = SupportedVersions::octez("OTHER_CHAIN");
    let b = start(cb).await;
    // b knows a point, which it refers the rejected peer to.
    let mut cc = config(3, "127.0.0.1");
    cc.versions = SupportedVersions::octez("OTHER_CHAIN");
    let c = start(cc).await;
    b.handle.connect(Point::from(c.addr), None).await.unwrap();
    let a = start(config(1, "127.0.0.1")).await;
    let mut b_events = b.handle.events();
    // Both sides see the chain names differ; a refuses too, before reading b's answer.
    let err = a
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::RejectedByUs(NackMotive::UnknownChainName)
        ),
        "{err}"
    );
    // A client that answers Ack whatever it sees (as `peerpool probe` does) reads b's Nack.
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let hs = client_config(identity(4));
    let auth = peerpool::socket::authenticate(stream, hs, Direction::Outgoing, [1; 24])
        .await
        .unwrap();
    let version = auth.connection_message.version.clone();
    match auth.accept(version).await.unwrap_err() {
        SocketError::Handshake(HandshakeError::RejectedByNack { motive, points }) => {
            assert_eq!(motive, NackMotive::UnknownChainName);
            assert!(points.contains(&Point::from(c.addr)), "{points:?}");
        }
        other => panic!("expected a Nack, got {other}"),
    }
    let failure = wait_for(&mut b_events, |e| match e {
        NodeEvent::HandshakeFailed { error, .. } => Some(format!("{error:?}")),
        _ => None,
    })
    .await;
    assert!(failure.contains("UnknownChainName"), "{failure}");
}

#[tokio::test]
async fn deprecated_versions_are_refused_with_the_nack_form_the_peer_understands() {
    // b only speaks the newest versions.
    let mut cb = config(2, "127.0.0.1");
    cb.versions = SupportedVersions {
        chain_name: "TEZOS".into(),
        distributed_db_versions: vec![2],
        p2p_versions: vec![1],
    };
    let b = start(cb).await;
    // a announces ddb 1 (p2p 1): Nack with motive Deprecated_distributed_db_version.
    let mut ca = config(1, "127.0.0.1");
    ca.versions = SupportedVersions {
        chain_name: "TEZOS".into(),
        distributed_db_versions: vec![0, 1],
        p2p_versions: vec![0, 1],
    };
    let a = start(ca).await;
    let err = a
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.nack().map(|n| n.0),
        Some(NackMotive::DeprecatedDistributedDbVersion)
    );
    // c announces p2p 0: b answers Nack_v_0, reported as No_motive.
    let mut cc = config(3, "127.0.0.1");
    cc.versions = SupportedVersions {
        chain_name: "TEZOS".into(),
        distributed_db_versions: vec![2],
        p2p_versions: vec![0],
    };
    let c = start(cc).await;
    let err = c
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert_eq!(err.nack().map(|n| n.0), Some(NackMotive::NoMotive));
}

#[tokio::test]
async fn dialing_ourselves_is_detected_as_myself_then_remembered() {
    // On every address, so 127.0.0.1 is not known to be ours until the handshake says so.
    let a = start(config(1, "0.0.0.0")).await;
    let own: Point = format!("127.0.0.1:{}", a.addr.port()).parse().unwrap();
    let err = a.handle.connect(own, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::Myself))
        ),
        "{err}"
    );
    assert!(a.handle.connections().is_empty());
    let err = a.handle.connect(own, None).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::Myself(p)) if p == own),
        "{err}"
    );
    // A node listening on a given address knows that point is its own from the start.
    let b = start(config(2, "127.0.0.1")).await;
    let err = b
        .handle
        .connect(Point::from(b.addr), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Pool(PoolError::Myself(_))),
        "{err}"
    );
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let a = start(config(1, "127.0.0.1")).await;
    // Bind then drop a listener, so the port is (very likely) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = a
        .handle
        .connect(format!("127.0.0.1:{port}").parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err}");
}

#[tokio::test]
async fn three_nodes_on_distinct_loopback_addresses_learn_points_by_bootstrap() {
    // b is the hub; c connects to b first, then a connects to b and sends Bootstrap.
    let b = start(config(2, "127.0.0.2")).await;
    let c = start(config(3, "127.0.0.3")).await;
    c.handle.connect(Point::from(b.addr), None).await.unwrap();
    let mut ca = config(1, "127.0.0.1");
    ca.policy.bootstrap_on_connect = true;
    let a = start(ca).await;
    let mut a_events = a.handle.events();
    let mut b_events = b.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let answered = wait_for(&mut b_events, |e| match e {
        NodeEvent::BootstrapAnswered { peer_id, points } => Some((*peer_id, points.clone())),
        _ => None,
    })
    .await;
    assert_eq!(answered.0, a.handle.peer_id());
    // b does not advertise a's own point back to it.
    assert!(!answered.1.contains(&Point::from(a.addr)));
    let (from, points) = wait_for(&mut a_events, |e| match e {
        NodeEvent::AdvertiseReceived { peer_id, points } => Some((*peer_id, points.clone())),
        _ => None,
    })
    .await;
    assert_eq!(from, b.handle.peer_id());
    assert!(points.contains(&Point::from(c.addr)), "{points:?}");
    assert_eq!(c.addr.ip().to_string(), "127.0.0.3");
    assert!(a.handle.known_points().await.contains(&Point::from(c.addr)));
    // And a can use what it learned.
    a.handle.connect(Point::from(c.addr), None).await.unwrap();
    assert_exchange(&a.handle, &c.handle, 0x10).await;
}

#[tokio::test]
async fn shutdown_sends_disconnect_and_the_peer_sees_it() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.1")).await;
    let mut b_events = b.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.shutdown().await;
    let reason = next_close_reason(&mut b_events).await;
    assert_eq!(reason, CloseReason::RemoteDisconnect);
}

#[tokio::test]
async fn persistent_peer_is_redialed_after_it_comes_back() {
    let mut ca = config(1, "127.0.0.1");
    // The point waits this long after a running connection ends (octez: 60 s).
    ca.pool.reconnection.disconnection_delay = std::time::Duration::from_secs(1);
    // The maintenance keeps one connection, and looks again soon when it has no candidate.
    ca.pool.min_connections = 1;
    ca.policy.maintenance.enabled = true;
    ca.policy.maintenance.looking_for_peers = std::time::Duration::from_millis(200);
    ca.policy.maintenance.looking_for_peers_max = std::time::Duration::from_millis(400);
    let a = start(ca).await;
    let b = start(config(2, "127.0.0.1")).await;
    let b_addr = b.addr;
    let mut a_events = a.handle.events();
    a.handle.add_peer(Point::from(b_addr), None).await;
    wait_for(&mut a_events, |e| {
        matches!(e, NodeEvent::ConnectionEstablished { .. }).then_some(())
    })
    .await;
    b.handle.shutdown().await;
    drop(b);
    wait_for(&mut a_events, |e| {
        matches!(e, NodeEvent::ConnectionClosed { .. }).then_some(())
    })
    .await;
    // A new node on the same address is found again by the redial loop.
    let mut cb = config(2, "127.0.0.1");
    cb.listen_addr = Some(b_addr);
    let _b2 = start(cb).await;
    wait_for(&mut a_events, |e| {
        matches!(e, NodeEvent::ConnectionEstablished { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn disconnect_and_tear_down_close_connections_and_the_node_goes_on() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let c = start(config(3, "127.0.0.3")).await;
    let mut events = a.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.connect(Point::from(c.addr), None).await.unwrap();
    a.handle.disconnect(b.handle.peer_id()).await;
    assert_eq!(
        next_close_reason(&mut events).await,
        CloseReason::Local(DisconnectReason::Requested)
    );
    let left: Vec<_> = a
        .handle
        .connections()
        .iter()
        .map(|x| x.info().peer_id)
        .collect();
    assert_eq!(left, [c.handle.peer_id()]);
    a.handle.tear_down_connections().await;
    assert_eq!(
        next_close_reason(&mut events).await,
        CloseReason::Local(DisconnectReason::TearDown)
    );
    assert!(a.handle.connections().is_empty());
    // The node still works.
    let d = start(config(4, "127.0.0.4")).await;
    a.handle.connect(Point::from(d.addr), None).await.unwrap();
}
