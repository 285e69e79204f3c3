//! File descriptors are never leaked (issue 11, item 4): the process's open descriptors
//! (`/proc/self/fd`) are counted before and after 1 000 connect/disconnect cycles between
//! two nodes over real TCP on 127.0.0.1, in both directions, closed by either side, with
//! failed attempts among them (a dial to a closed port, an incoming stream that closes
//! before its handshake). The count must come back to what it was exactly.
//!
//! The only test of this binary, so no other test opens or closes descriptors meanwhile.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::{ConnectError, NodeEvent};
use peerpool_proto::handshake::Direction;
use peerpool_proto::point::Point;
use std::time::{Duration, Instant};

const CYCLES: usize = 1000;

/// Descriptors open in this process (the directory listing's own is counted every time).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// One cycle: `dialer` connects to `listener`, both see the connection, then `closer`
/// (one of the two) disconnects, and both see the close.
async fn cycle(dialer: &TestNode, listener: &TestNode, dialer_closes: bool) {
    let mut dialer_events = dialer.handle.events();
    let mut listener_events = listener.handle.events();
    let peer = dialer
        .handle
        .connect(Point::from(listener.addr), Some(listener.handle.peer_id()))
        .await
        .unwrap();
    assert_eq!(peer, listener.handle.peer_id());
    wait_connected(
        &listener.handle,
        &mut listener_events,
        dialer.handle.peer_id(),
    )
    .await;
    if dialer_closes {
        dialer.handle.disconnect(peer).await;
    } else {
        listener.handle.disconnect(dialer.handle.peer_id()).await;
    }
    for events in [&mut dialer_events, &mut listener_events] {
        next_close_reason(events).await;
    }
}

/// Failed attempts: a dial to a port nothing listens on, and an incoming TCP stream that
/// closes before saying anything.
async fn failures(a: &TestNode, b: &TestNode) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = a
        .handle
        .connect(Point::from(closed), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Connect(_)), "{err}");
    let mut b_events = b.handle.events();
    drop(tokio::net::TcpStream::connect(b.addr).await.unwrap());
    wait_for(&mut b_events, |e| match e {
        NodeEvent::HandshakeFailed {
            direction: Direction::Incoming,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until neither node has a connection, an I/O scheduler entry or a task beyond
/// `idle` (their tasks before any connection): the last close has finished and its socket
/// is dropped. The nodes have no event for that, so this reads their state, with a
/// deadline.
async fn settled(a: &TestNode, b: &TestNode, idle_tasks: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idle = |n: &TestNode| {
            n.handle.connections().is_empty() && n.handle.io_connections().is_empty()
        };
        let tasks = (a.handle.live_tasks(), b.handle.live_tasks());
        if idle(a) && idle(b) && tasks == idle_tasks {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still busy: tasks {tasks:?} (idle: {idle_tasks:?}), I/O scheduler entries {} / {}",
            a.handle.io_connections().len(),
            b.handle.io_connections().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connect_disconnect_cycles_leak_no_descriptor() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.1")).await;
    // Their tasks at rest, once the owner has handled the activation (a query answered
    // after it).
    a.handle.peers().await;
    b.handle.peers().await;
    let tasks = (a.handle.live_tasks(), b.handle.live_tasks());
    // A first round of everything: what is created once and kept (the runtime's blocking
    // threads, lazily opened files) is in the baseline, not counted as a leak.
    cycle(&a, &b, true).await;
    cycle(&b, &a, false).await;
    failures(&a, &b).await;
    settled(&a, &b, tasks).await;
    let baseline = open_fds();
    let started = Instant::now();
    for i in 0..CYCLES {
        // Both directions, closed by either side.
        let (dialer, listener) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        cycle(dialer, listener, i % 4 < 2).await;
        if i % 10 == 0 {
            failures(&a, &b).await;
        }
    }
    settled(&a, &b, tasks).await;
    let after = open_fds();
    eprintln!(
        "{CYCLES} cycles in {:?}: {baseline} descriptors before, {after} after",
        started.elapsed()
    );
    assert_eq!(after, baseline, "descriptors leaked");
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
