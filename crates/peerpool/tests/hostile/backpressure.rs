//! A peer that stops reading while the node's application keeps sending to everyone.

use crate::bench::*;
use peerpool::{CloseReason, TrySendError};
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::RawMessage;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// What a repeated broadcast did: messages queued, refused by the peers that do not read,
/// refused by the honest ones.
struct Sent {
    sent: usize,
    refused: usize,
    honest_refused: usize,
}

/// Sends `msg` to every connection of the node under test each 10 ms for `hold`, one
/// connection at a time to count the refusals of each; `after_each` runs after every round.
async fn broadcast_every_10ms(
    b: &Bench,
    msg: &RawMessage,
    honest: &HashSet<PeerId>,
    hold: Duration,
    mut after_each: impl FnMut(&Bench),
) -> Sent {
    let mut out = Sent {
        sent: 0,
        refused: 0,
        honest_refused: 0,
    };
    let t0 = Instant::now();
    let mut next = t0;
    while next < t0 + hold {
        for c in b.node.handle.connections() {
            match c.try_send(msg) {
                Ok(()) => out.sent += 1,
                Err(_) if honest.contains(&c.info().peer_id) => out.honest_refused += 1,
                Err(_) => out.refused += 1,
            }
        }
        after_each(b);
        next += Duration::from_millis(10);
        tokio::time::sleep_until(next).await;
    }
    out
}

/// Five sessions never read while the node's application broadcasts 64 KiB to every peer
/// each 10 ms. Their outgoing queues fill (here 1 MiB of messages, and 1 MiB of sealed
/// chunks in the I/O scheduler's write queue) and refuse further messages
/// (octez drops them too); the honest peers keep receiving and exchanging. A peer that
/// does not read is not a faulty one (BEHAVIOUR.md §5, §6): it is neither closed nor
/// greylisted, and when it goes away its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading() {
    const STALLED: usize = 5;
    const QUEUE: usize = 1 << 20;
    const HOLD: Duration = Duration::from_secs(3);
    let mut b = Bench::start("stops reading", 41, 3, |c| {
        c.queues.outgoing_app_bytes = QUEUE;
        c.io_scheduler.write_queue_size = QUEUE;
    })
    .await;
    let stalled = b.sessions(13, 4100, STALLED).await;
    let ids: Vec<PeerId> = stalled.iter().map(|a| a.peer_id).collect();
    b.measure_before().await;
    let w = b.window();
    let msg = RawMessage {
        tag: 0x300,
        body: vec![0x33; 64 << 10],
    };
    let honest: HashSet<PeerId> = b.honest_ids().into_iter().collect();
    let mut full_after = None;
    let t0 = Instant::now();
    let Sent {
        sent,
        refused,
        honest_refused,
    } = broadcast_every_10ms(&b, &msg, &honest, HOLD, |b| {
        if full_after.is_none()
            && ids
                .iter()
                .all(|id| b.node.handle.try_send(id, &msg) == Err(TrySendError::Full))
        {
            full_after = Some(t0.elapsed());
        }
    })
    .await;
    let during = b.during(w).await;
    let full_after = full_after.expect("the queues of the peers that do not read never filled");
    let peers = b.node.handle.greylisted_peers().await;
    let ips = b.node.handle.greylisted_ips().await.0;
    for a in &stalled {
        assert!(b.node.handle.connection(&a.peer_id).is_some(), "closed");
        assert!(!peers.contains(&a.peer_id) && !ips.contains(&IpAddr::V4(a.ip)));
    }
    eprintln!(
        "[stops reading] broadcasts of 64 KiB to {} peers for {HOLD:?}: {sent} queued, {refused} refused by the {STALLED} that do not read (all full after {:.2} s), {honest_refused} by the honest ones; none closed or greylisted",
        STALLED + b.honest.len(),
        full_after.as_secs_f64()
    );
    // The honest peers read all along: their queues have room (a loose bound, for a busy
    // machine; none was refused in the runs recorded).
    assert!(
        honest_refused * 10 <= honest.len() * 300,
        "{honest_refused} broadcasts refused by honest peers"
    );
    b.check_during(during, Duration::from_secs(2));
    // The queues are bounded: 2 MiB for each peer that does not read (unbounded, they would
    // take 6.4 MB/s each).
    b.check_memory(48 << 20);
    drop(stalled);
    b.log
        .wait("the silent readers' connections closed", |t| {
            ids.iter().all(|id| t.closed_reason(id).is_some())
        })
        .await;
    b.log.with(|t| {
        for id in &ids {
            let r = t.closed_reason(id).unwrap();
            assert!(
                matches!(r, CloseReason::Eof | CloseReason::Io(_)),
                "{id}: {r}"
            );
        }
    });
    b.finish().await;
}

/// Twenty sessions never read while the application broadcasts 64 KiB to every peer each
/// 10 ms, with the default per-connection queues (16 MiB of messages, 8 MiB of sealed
/// chunks: 480 MiB for twenty). What each has in flight beyond its guarantee (256 KiB
/// here) comes out of one node-wide outgoing budget (4 MiB here), so together they hold at
/// most 20 × 256 KiB + 4 MiB, while the honest peers, within their guarantee, keep
/// receiving and exchanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stop_reading_share_one_outgoing_budget() {
    const STALLED: usize = 20;
    const GUARANTEED: usize = 256 << 10;
    const OUTGOING: usize = 4 << 20;
    const HOLD: Duration = Duration::from_secs(3);
    let mut b = Bench::start("outgoing budget", 43, 3, |c| {
        c.queues.outgoing_guaranteed_bytes = GUARANTEED;
        c.outgoing_budget_bytes = OUTGOING;
    })
    .await;
    let stalled = b.sessions(14, 4300, STALLED).await;
    let ids: HashSet<PeerId> = stalled.iter().map(|a| a.peer_id).collect();
    b.measure_before().await;
    let w = b.window();
    let msg = RawMessage {
        tag: 0x300,
        body: vec![0x34; 64 << 10],
    };
    let honest: HashSet<PeerId> = b.honest_ids().into_iter().collect();
    let (mut most_in_flight, mut most_from_budget) = (0, 0);
    let Sent {
        sent,
        refused,
        honest_refused,
    } = broadcast_every_10ms(&b, &msg, &honest, HOLD, |b| {
        let in_flight: usize = b
            .node
            .handle
            .connections()
            .iter()
            .filter(|c| ids.contains(&c.info().peer_id))
            .map(|c| c.queued_outgoing())
            .sum();
        most_in_flight = most_in_flight.max(in_flight);
        most_from_budget = most_from_budget.max(b.node.handle.outgoing_budget_in_use());
    })
    .await;
    let during = b.during(w).await;
    eprintln!(
        "[outgoing budget] broadcasts of 64 KiB to {} peers for {HOLD:?}: {sent} queued, {refused} refused by the {STALLED} that do not read, {honest_refused} by the honest ones; in flight to those {STALLED} at most {} KiB (bound {} KiB), node-wide budget used at most {} of {} KiB",
        STALLED + b.honest.len(),
        most_in_flight >> 10,
        (STALLED * GUARANTEED + OUTGOING) >> 10,
        most_from_budget >> 10,
        OUTGOING >> 10
    );
    // The peers that do not read took the budget (all of it but the eighth kept for
    // requests of at most 32 KiB, which these 64 KiB messages cannot use), and not a byte
    // more than their guarantees and the budget.
    assert!(
        most_from_budget > OUTGOING * 7 / 8 - (64 << 10),
        "the budget was never used up: {most_from_budget}"
    );
    assert!(
        most_in_flight <= STALLED * GUARANTEED + OUTGOING,
        "{most_in_flight} bytes in flight to the peers that do not read"
    );
    assert!(refused > 0);
    assert!(
        honest_refused * 10 <= honest.len() * 300,
        "{honest_refused} broadcasts refused by honest peers"
    );
    for a in &stalled {
        assert!(b.node.handle.connection(&a.peer_id).is_some(), "closed");
    }
    b.check_during(during, Duration::from_secs(2));
    // 9 MiB in flight (each sealed once more in the scheduler's queue at worst), the
    // sockets' kernel buffers aside; without the budget, 480 MiB.
    b.check_memory(64 << 20);
    drop(stalled);
    b.log
        .wait("the silent readers' connections closed", |t| {
            ids.iter().all(|id| t.closed_reason(id).is_some())
        })
        .await;
    b.finish().await;
}
