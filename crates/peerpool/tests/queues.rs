//! Bounded message queues over real connections: backpressure stays on the slow peer's
//! socket, nothing is dropped silently, control messages overtake queued application ones.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::NodeEvent;
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::ControlMessage;

fn big(i: u32) -> RawMessage {
    let mut body = vec![0u8; 64 * 1024];
    body[..4].copy_from_slice(&i.to_be_bytes());
    RawMessage { tag: 0x30, body }
}

/// Fills A's queue towards B (B never reads); returns how many messages were queued.
async fn fill(a: &TestNode, b: &TestNode) -> u32 {
    let to_b = a
        .handle
        .connections()
        .into_iter()
        .find(|c| c.info().peer_id == b.handle.peer_id())
        .unwrap();
    // Bounded: the queues and socket buffers hold far fewer than 5000 × 64 KiB.
    for i in 0..5000u32 {
        if to_b.try_send(&big(i)).is_err() {
            // Let the writer drain what it can into the socket, then retry once.
            tokio::task::yield_now().await;
            if to_b.try_send(&big(i)).is_err() {
                return i;
            }
        }
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    panic!("the queue towards a peer that does not read never filled up");
}

#[tokio::test]
async fn a_peer_that_does_not_read_does_not_slow_the_others_and_loses_nothing() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    let c = start(config(3, "127.0.0.3")).await;
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.connect(Point::from(c.addr), None).await.unwrap();
    let queued = fill(&a, &b).await;
    // The full queue refuses at once; broadcast counts the refusal.
    let outcome = a.handle.broadcast(
        &RawMessage {
            tag: 0x31,
            body: vec![1],
        },
        |_| false,
    );
    assert_eq!((outcome.sent, outcome.refused), (1, 1));
    // The broadcast reached C, which has room.
    let from_a_at_c = connected(&c.handle, a.handle.peer_id()).await;
    assert_eq!(from_a_at_c.recv().await.unwrap().tag, 0x31);
    // A and C are unaffected.
    assert_exchange(&a.handle, &c.handle, 0x10).await;
    assert_exchange(&c.handle, &a.handle, 0x11).await;
    // B now reads everything: each queued message arrives, in order, none dropped.
    let from_a = connected(&b.handle, a.handle.peer_id()).await;
    for i in 0..queued {
        let m = from_a.recv().await.unwrap();
        assert_eq!(m.tag, 0x30);
        assert_eq!(u32::from_be_bytes(m.body[..4].try_into().unwrap()), i);
    }
}

#[tokio::test]
async fn control_messages_overtake_queued_application_messages() {
    let a = start(config(1, "127.0.0.1")).await;
    let b = start(config(2, "127.0.0.2")).await;
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    let queued = fill(&a, &b).await;
    let to_b = a.handle.connections().pop().unwrap();
    // The application queue is full, the control queue is not.
    assert_eq!(
        to_b.try_send(&big(u32::MAX)),
        Err(peerpool::TrySendError::Full)
    );
    assert!(to_b.send_control(ControlMessage::Bootstrap));
    let mut events = b.handle.events();
    let from_a = connected(&b.handle, a.handle.peer_id()).await;
    let mut received = 0u32;
    let mut at_bootstrap = None;
    while received < queued {
        tokio::select! {
            m = from_a.recv() => {
                assert!(m.is_some());
                received += 1;
            }
            Ok(e) = events.recv() => {
                if matches!(e, NodeEvent::BootstrapAnswered { .. }) {
                    at_bootstrap.get_or_insert(received);
                }
            }
        }
    }
    let at = at_bootstrap
        .expect("Bootstrap arrived before the queued application messages were all read");
    // Messages still in A's application queue (about 100) were written after the Bootstrap.
    assert!(
        at + 50 < queued,
        "bootstrap seen after {at} of {queued} app messages"
    );
}

/// A message of `kib` KiB, tagged.
fn sized(tag: u16, kib: usize) -> RawMessage {
    RawMessage {
        tag,
        body: vec![0x5a; kib * 1024],
    }
}

#[tokio::test]
async fn peers_that_do_not_read_share_one_outgoing_budget_and_a_close_ends_a_wait_for_it() {
    const GUARANTEED: usize = 64 * 1024;
    const OUTGOING: usize = 256 * 1024;
    let mut ca = config(1, "127.0.0.1");
    ca.queues.outgoing_guaranteed_bytes = GUARANTEED;
    ca.outgoing_budget_bytes = OUTGOING;
    let a = start(ca).await;
    let b = start(config(2, "127.0.0.2")).await;
    let c = start(config(3, "127.0.0.3")).await;
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    a.handle.connect(Point::from(c.addr), None).await.unwrap();
    let (b_id, c_id) = (b.handle.peer_id(), c.handle.peer_id());
    // B does not read: what A has in flight to it stops at its guarantee and the budget
    // (the default queues would take 16 MiB, and 8 MiB more in the scheduler).
    fill(&a, &b).await;
    let to_b = connected(&a.handle, b_id).await;
    assert!(
        to_b.queued_outgoing() <= GUARANTEED + OUTGOING,
        "{} bytes in flight to B",
        to_b.queued_outgoing()
    );
    assert!(a.handle.outgoing_budget_in_use() > 0);
    // C gets its guarantee whatever B holds.
    assert_exchange(&a.handle, &c.handle, 0x12).await;
    // A message to C beyond its guarantee needs the budget B holds: the send waits, and
    // closing the connection ends the wait.
    let waiting = tokio::spawn({
        let a = a.handle.clone();
        async move { a.send(&c_id, &sized(0x13, 1024)).await }
    });
    // Counted in flight as soon as it waits for the budget.
    let to_c = connected(&a.handle, c_id).await;
    while to_c.queued_outgoing() < 1024 * 1024 {
        assert!(
            !waiting.is_finished(),
            "the send did not wait for the budget"
        );
        tokio::task::yield_now().await;
    }
    a.handle.disconnect(c_id).await;
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("a send waiting for the budget outlived its connection's close")
        .unwrap();
    assert_eq!(sent, Err(peerpool::SendError::Closed));
    // Once B reads, the bytes in flight to it are written and the budget comes back: a
    // send to B that needs it goes through.
    let from_a = connected(&b.handle, a.handle.peer_id()).await;
    let reader = tokio::spawn(async move {
        loop {
            match from_a.recv().await {
                Some(m) if m.tag == 0x14 => return m.body.len(),
                Some(_) => {}
                None => return 0,
            }
        }
    });
    a.handle.send(&b_id, &sized(0x14, 1024)).await.unwrap();
    assert_eq!(reader.await.unwrap(), 1024 * 1024);
    assert!(to_b.queued_outgoing() <= GUARANTEED + OUTGOING);
}
