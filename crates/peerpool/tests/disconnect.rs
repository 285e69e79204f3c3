//! `Node::disconnect_and_wait`: it returns once both sides have forgotten the connection,
//! so the two reconnect at once, from either side; a peer that never closes its end makes
//! it return `Unacknowledged` after the close timeout.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::transport::MemoryNetwork;
use peerpool::DisconnectError;
use peerpool_proto::handshake::Direction;
use peerpool_proto::point::Point;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn after_disconnect_and_wait_both_sides_have_forgotten_and_reconnect_at_once() {
    let net = MemoryNetwork::new();
    let a = start_in(&net, config(1, "127.0.0.1")).await;
    let b = start_in(&net, config(2, "127.0.0.2")).await;
    let (a_id, b_id) = (a.handle.peer_id(), b.handle.peer_id());
    assert_eq!(
        a.handle.disconnect_and_wait(b_id).await,
        Err(DisconnectError::NotConnected)
    );
    for round in 0..10 {
        // a dials b every round; the side that closes alternates.
        let peer = a.handle.connect(Point::from(b.addr), None).await.unwrap();
        assert_eq!(peer, b_id);
        wait_connected(&b.handle, &mut b.handle.events(), a_id).await;
        assert_exchange(&a.handle, &b.handle, 0x10).await;
        let (closer, other, other_id) = if round % 2 == 0 {
            (&a.handle, &b.handle, b_id)
        } else {
            (&b.handle, &a.handle, a_id)
        };
        closer.disconnect_and_wait(other_id).await.unwrap();
        // Both have forgotten it: no polling, no waiting for events.
        assert!(a.handle.connection(&b_id).is_none(), "round {round}: a");
        assert!(b.handle.connection(&a_id).is_none(), "round {round}: b");
        assert!(a.handle.connections().is_empty() && b.handle.connections().is_empty());
        assert!(other.connection(&closer.peer_id()).is_none());
    }
    // And the last reconnection carries messages.
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    wait_connected(&b.handle, &mut b.handle.events(), a_id).await;
    assert_exchange(&b.handle, &a.handle, 0x11).await;
}

#[tokio::test]
async fn a_peer_that_never_closes_its_end_is_reported_after_the_close_timeout() {
    let mut c = config(1, "127.0.0.1");
    c.close_timeout = Duration::from_millis(300);
    let node = start(c).await;
    let mut events = node.handle.events();
    // A raw client: authenticates, then neither reads nor closes.
    let stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let client = identity(7);
    let auth = peerpool::socket::authenticate(
        stream,
        client_config(client.clone()),
        Direction::Outgoing,
        [7; 24],
    )
    .await
    .unwrap();
    let version = auth.connection_message.version.clone();
    let _held = auth.accept(version).await.unwrap();
    wait_connected(&node.handle, &mut events, client.peer_id).await;
    assert_eq!(
        node.handle.disconnect_and_wait(client.peer_id).await,
        Err(DisconnectError::Unacknowledged)
    );
    assert!(node.handle.connection(&client.peer_id).is_none());
    assert!(node.handle.connections().is_empty());
}
