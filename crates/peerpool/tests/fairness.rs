//! Control-message fairness over real sockets: a raw client floods a node with Bootstrap
//! and Advertise as fast as it can write, while an honest node connects to the same node,
//! asks for points once and exchanges application messages. The honest peer is served
//! while the flood goes on; the flooder's excess is throttled and reported.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::socket::{self, Established};
use peerpool::NodeEvent;
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::{P2pMessage, RawMessage};
use peerpool_proto::point::Point;
use peerpool_proto::policy::{ControlKind, ControlMessage};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// Safety net for each wait.
const LIMIT: Duration = Duration::from_secs(10);

/// Messages sealed per write by the flooder.
const BATCH: u64 = 64;

/// What the collector passes on: every event but the (many) throttling reports, of which
/// only the first per peer and kind is passed on; lags are passed on too.
#[derive(Debug)]
enum Seen {
    Event(NodeEvent),
    Lagged(u64),
}

/// Reads `events` as fast as they come, so the flood's reports cannot push out the one
/// event the test waits for.
fn collect(mut events: peerpool::Events) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut throttled = HashSet::new();
        loop {
            let seen = match events.recv().await {
                Ok(NodeEvent::ControlThrottled { peer_id, kind }) => {
                    if !throttled.insert((peer_id, kind)) {
                        continue;
                    }
                    Seen::Event(NodeEvent::ControlThrottled { peer_id, kind })
                }
                Ok(e) => Seen::Event(e),
                Err(peerpool::EventError::Lagged(n)) => Seen::Lagged(n),
                Err(_) => return,
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for the first collected event matching `pred`; a lag fails the test (the event
/// could have been lost).
async fn wait_seen<T>(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    mut pred: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(LIMIT, async {
        loop {
            match rx.recv().await.unwrap() {
                Seen::Event(e) => {
                    if let Some(t) = pred(&e) {
                        return t;
                    }
                }
                Seen::Lagged(n) => panic!("the collector missed {n} events"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected event did not come within {LIMIT:?}"))
}

/// Writes Bootstrap and Advertise, alternately, as fast as the socket takes them,
/// publishing how many have been written. Ends when a write fails.
async fn flood(mut est: Established<TcpStream>, written: watch::Sender<u64>) {
    let advertise =
        P2pMessage::<RawMessage>::Advertise(vec![Point::new([10, 9, 9, 9].into(), 9732)])
            .to_bytes();
    let bootstrap = P2pMessage::<RawMessage>::Bootstrap.to_bytes();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        for i in 0..BATCH {
            let m = if i % 2 == 0 { &bootstrap } else { &advertise };
            est.session.sealer.seal_message(m, &mut buf);
        }
        if est.stream.write_all(&buf).await.is_err() {
            return;
        }
        n += BATCH;
        written.send_replace(n);
    }
}

/// Waits until the flooder has written `more` messages beyond what it had written when
/// called: the flood is still going on.
async fn flood_goes_on(progress: &mut watch::Receiver<u64>, more: u64) {
    let from = *progress.borrow_and_update();
    tokio::time::timeout(LIMIT, progress.wait_for(|n| *n >= from + more))
        .await
        .expect("the flood stopped")
        .expect("the flooder ended");
}

#[tokio::test]
async fn an_honest_peer_is_served_while_another_floods_control_messages() {
    let mut cn = config(1, "127.0.0.1");
    // Room for the flood's reports between two reads of the collector.
    cn.event_capacity = 1 << 16;
    let node = start(cn).await;
    let mut seen = collect(node.handle.events());
    // A third node, so the node has a point to advertise to whoever asks.
    let third = start(config(3, "127.0.0.3")).await;
    node.handle
        .connect(Point::from(third.addr), None)
        .await
        .unwrap();

    // The flooder: a real session, then control messages as fast as it can write.
    let flooder_identity = identity(50);
    let flooder_id: PeerId = flooder_identity.peer_id;
    // A small send buffer: the flooder writes as fast as the node takes its messages,
    // rather than as fast as the kernel can buffer them.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let auth = socket::authenticate(
        stream,
        client_config(flooder_identity),
        Direction::Outgoing,
        [5; 24],
    )
    .await
    .unwrap();
    let version = auth.connection_message.version.clone();
    let est = auth.accept(version).await.unwrap();
    wait_seen(&mut seen, |e| match e {
        NodeEvent::ConnectionEstablished { peer_id, .. } if *peer_id == flooder_id => Some(()),
        _ => None,
    })
    .await;
    let (progress_tx, mut progress) = watch::channel(0);
    let flooder = tokio::spawn(flood(est, progress_tx));
    // Both kinds go over the flooder's rate and are reported.
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let kind = wait_seen(&mut seen, |e| match e {
            NodeEvent::ControlThrottled { peer_id, kind } if *peer_id == flooder_id => Some(*kind),
            _ => None,
        })
        .await;
        kinds.push(kind);
    }
    assert!(kinds.contains(&ControlKind::Bootstrap) && kinds.contains(&ControlKind::Advertise));

    // The honest node connects during the flood and asks for points once.
    let honest = start(config(2, "127.0.0.2")).await;
    let honest_id = honest.handle.peer_id();
    let mut honest_events = honest.handle.events();
    let to_node = tokio::time::timeout(
        LIMIT,
        honest
            .handle
            .connect(Point::from(node.addr), Some(node.handle.peer_id())),
    )
    .await
    .expect("connecting during the flood took too long")
    .unwrap();
    assert_eq!(to_node, node.handle.peer_id());
    let conn = connected(&honest.handle, node.handle.peer_id()).await;
    assert!(conn.send_control(ControlMessage::Bootstrap));
    // The node answers it (its own event), with the third node's point (the honest side).
    let points = wait_seen(&mut seen, |e| match e {
        NodeEvent::BootstrapAnswered { peer_id, points } if *peer_id == honest_id => {
            Some(points.clone())
        }
        NodeEvent::ControlThrottled { peer_id, .. } if *peer_id == honest_id => {
            panic!("the honest peer's only Bootstrap was throttled")
        }
        _ => None,
    })
    .await;
    // The flood was not drained first: part of what the flooder wrote is still unread.
    let flood_read = node
        .handle
        .connection(&flooder_id)
        .unwrap()
        .stats()
        .messages_in
        .load(Ordering::Relaxed);
    let flood_written = *progress.borrow();
    assert!(
        flood_read < flood_written,
        "answered only after the flood's {flood_written} messages were read"
    );
    assert!(points.contains(&Point::from(third.addr)), "{points:?}");
    let advertised = wait_for(&mut honest_events, |e| match e {
        NodeEvent::AdvertiseReceived { peer_id, points } if *peer_id == node.handle.peer_id() => {
            Some(points.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(advertised, points);
    // The flood went on meanwhile, and goes on.
    assert!(!flooder.is_finished());
    flood_goes_on(&mut progress, 10 * BATCH).await;

    // Application messages both ways, still during the flood.
    for tag in 0x10..0x12 {
        assert_exchange(&honest.handle, &node.handle, tag).await;
        assert_exchange(&node.handle, &honest.handle, tag + 0x10).await;
    }
    flood_goes_on(&mut progress, 10 * BATCH).await;
    assert!(!flooder.is_finished());
    // The flooder is still connected: throttled, not cut off.
    assert!(node.handle.connection(&flooder_id).is_some());
    flooder.abort();
    node.handle.shutdown().await;
}
