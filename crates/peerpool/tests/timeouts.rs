//! Handshake timeouts, with tokio's clock paused: the runtime jumps to the next timer
//! whenever every task waits, so no test sleeps for real.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::{ConnectError, NodeEvent};
use peerpool_proto::handshake::Direction;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn a_silent_incoming_peer_is_dropped_after_the_authentication_timeout() {
    let mut cfg = config(1, "127.0.0.1");
    cfg.authentication_timeout = Duration::from_secs(5);
    let node = start(cfg).await;
    let mut events = node.handle.events();
    let _silent = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let (direction, error) = wait_for(&mut events, |e| match e {
        NodeEvent::HandshakeFailed {
            direction, error, ..
        } => Some((*direction, error.clone())),
        _ => None,
    })
    .await;
    assert_eq!(direction, Direction::Incoming);
    assert!(
        matches!(error, ConnectError::Timeout(d) if d == Duration::from_secs(5)),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outgoing_handshake_to_a_silent_listener_times_out() {
    let mut cfg = config(1, "127.0.0.1");
    cfg.connection_timeout = Duration::from_secs(10);
    let node = start(cfg).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = node
        .handle
        .connect(silent.local_addr().unwrap().into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Timeout(d) if d == Duration::from_secs(10)),
        "{err}"
    );
}
