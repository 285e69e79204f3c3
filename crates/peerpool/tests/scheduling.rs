//! The node's connections go through its I/O scheduler: caps hold for whole nodes. The
//! nodes run on the in-memory transport with the clock paused, so the caps' waiting costs
//! no real time.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::transport::MemoryNetwork;
use peerpool_proto::message::RawMessage;
use peerpool_proto::point::Point;
use std::time::Duration;
use tokio::time::Instant;

const KIB: u64 = 1024;

#[tokio::test(start_paused = true)]
async fn a_download_cap_limits_what_a_peer_can_push_and_every_byte_is_counted() {
    let net = MemoryNetwork::new();
    let a = start_in(&net, config(1, "127.0.0.1")).await;
    let mut cb = config(2, "127.0.0.2");
    cb.io_scheduler.max_download_speed = Some(64 * KIB);
    let b = start_in(&net, cb).await;
    let mut b_events = b.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    wait_connected(&b.handle, &mut b_events, a.handle.peer_id()).await;
    let to_b = a.handle.connections().pop().unwrap();
    let from_a = b.handle.connections().pop().unwrap();
    let before = b.handle.stats().await.io.total_recv;
    let started = Instant::now();
    let messages = 8;
    let body = vec![0xab; 64 * 1024];
    let sender = tokio::spawn(async move {
        for i in 0..messages {
            to_b.send(&RawMessage {
                tag: 0x40 + i,
                body: body.clone(),
            })
            .await
            .unwrap();
        }
    });
    for i in 0..messages {
        assert_eq!(from_a.recv().await.unwrap().tag, 0x40 + i);
    }
    sender.await.unwrap();
    let elapsed = started.elapsed();
    let payload = messages as u64 * 64 * KIB;
    let received = b.handle.stats().await.io.total_recv - before;
    assert!(
        received >= payload,
        "scheduler counted {received} of at least {payload} bytes"
    );
    // At 64 KiB/s, 512 KiB needs about 8 s; the burst allows at most 16 KiB early.
    let floor = Duration::from_secs_f64((payload - 16 * KIB) as f64 / (64 * KIB) as f64);
    assert!(
        elapsed >= floor,
        "512 KiB arrived in {elapsed:?} under a 64 KiB/s cap"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upload_cap_limits_what_the_node_sends() {
    let net = MemoryNetwork::new();
    let mut ca = config(1, "127.0.0.1");
    ca.io_scheduler.max_upload_speed = Some(128 * KIB);
    let a = start_in(&net, ca).await;
    let b = start_in(&net, config(2, "127.0.0.2")).await;
    let mut b_events = b.handle.events();
    a.handle.connect(Point::from(b.addr), None).await.unwrap();
    wait_connected(&b.handle, &mut b_events, a.handle.peer_id()).await;
    let to_b = a.handle.connections().pop().unwrap();
    let from_a = b.handle.connections().pop().unwrap();
    let started = Instant::now();
    let body = vec![1u8; 256 * 1024];
    let msg = RawMessage { tag: 0x50, body };
    to_b.send(&msg).await.unwrap();
    assert_eq!(from_a.recv().await.unwrap(), msg);
    let floor = Duration::from_secs_f64((256 - 16) as f64 / 128.0);
    assert!(started.elapsed() >= floor, "{:?}", started.elapsed());
    assert!(a.handle.stats().await.io.total_sent >= 256 * KIB);
}
