//! Tests of the inbox (the parent module).
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use super::*;
use crate::budget::ByteBudget;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::mpsc;

/// A safety net only: every wait below ends on the event it waits for.
const LIMIT: Duration = Duration::from_secs(10);

type Push = Pin<Box<dyn Future<Output = Result<(), u32>> + Send>>;

fn inbox() -> Arc<Inbox<u32>> {
    Arc::new(Inbox::default())
}

fn queue(inbox: &Inbox<u32>, id: u64, messages: usize, bytes: usize) -> Arc<ConnQueue<u32>> {
    inbox.queue(ConnectionId(id), PeerId([id as u8; 16]), messages, bytes)
}

/// A push of `message`, `bytes` long, holding `bytes` of `budget`, as a future that
/// can be polled here and then handed to a task.
fn push(
    inbox: &Arc<Inbox<u32>>,
    q: &Arc<ConnQueue<u32>>,
    message: u32,
    bytes: usize,
    budget: &ByteBudget,
) -> Push {
    let (inbox, q) = (inbox.clone(), q.clone());
    let reservation = budget.try_reserve(bytes).unwrap();
    Box::pin(async move { inbox.push(&q, message, bytes, reservation).await })
}

/// Polls once, without waiting: what a reader would get at once.
fn poll_once(f: &mut Push) -> Poll<Result<(), u32>> {
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// Pushes that must be taken at once.
fn push_now(
    inbox: &Arc<Inbox<u32>>,
    q: &Arc<ConnQueue<u32>>,
    message: u32,
    bytes: usize,
    budget: &ByteBudget,
) {
    let mut f = push(inbox, q, message, bytes, budget);
    assert_eq!(poll_once(&mut f), Poll::Ready(Ok(())), "push of {message}");
}

/// A push that must wait: it is polled once (pending), then left to a task, whose
/// handle completes once the push has been taken (woken by the queue, never re-polled
/// by us).
fn push_blocked(mut f: Push) -> tokio::task::JoinHandle<Result<(), u32>> {
    assert!(poll_once(&mut f).is_pending(), "the push should wait");
    tokio::spawn(f)
}

async fn recv_any(inbox: &Inbox<u32>) -> (u64, u32) {
    let r = tokio::time::timeout(LIMIT, inbox.recv_any()).await.unwrap();
    assert_eq!(r.peer_id, PeerId([r.connection.0 as u8; 16]));
    (r.connection.0, r.message)
}

#[tokio::test]
async fn recv_any_takes_one_from_each_ready_queue_before_a_second_from_any() {
    let inbox = inbox();
    let budget = ByteBudget::new(1_000);
    let qs: Vec<_> = (1..=3).map(|id| queue(&inbox, id, 10, 1_000)).collect();
    // Worst case for fairness: the first queue fills entirely before the others.
    for (i, q) in qs.iter().enumerate() {
        for n in 0..3 {
            push_now(&inbox, q, 10 * (i as u32 + 1) + n, 10, &budget);
        }
    }
    assert_eq!(budget.in_use(), 90);
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(recv_any(&inbox).await);
    }
    assert_eq!(
        order,
        vec![
            (1, 10),
            (2, 20),
            (3, 30),
            (1, 11),
            (2, 21),
            (3, 31),
            (1, 12),
            (2, 22),
            (3, 32)
        ]
    );
    // Every reservation went back with its message.
    assert_eq!(budget.in_use(), 0);
    // A queue that becomes ready while others are waiting takes its turn after them.
    push_now(&inbox, &qs[0], 13, 10, &budget);
    push_now(&inbox, &qs[0], 14, 10, &budget);
    push_now(&inbox, &qs[1], 23, 10, &budget);
    assert_eq!(recv_any(&inbox).await, (1, 13));
    push_now(&inbox, &qs[2], 33, 10, &budget);
    assert_eq!(recv_any(&inbox).await, (2, 23));
    assert_eq!(recv_any(&inbox).await, (1, 14));
    assert_eq!(recv_any(&inbox).await, (3, 33));
}

#[tokio::test]
async fn recv_any_waits_for_a_message_and_is_woken_by_it() {
    let inbox = inbox();
    let budget = ByteBudget::new(1_000);
    let q = queue(&inbox, 1, 10, 1_000);
    let waiting = {
        let inbox = inbox.clone();
        tokio::spawn(async move { recv_any(&inbox).await })
    };
    tokio::task::yield_now().await;
    push_now(&inbox, &q, 7, 10, &budget);
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        (1, 7)
    );
}

#[tokio::test]
async fn a_queue_refuses_beyond_its_message_bound_and_the_reader_waits() {
    let inbox = inbox();
    let budget = ByteBudget::new(1_000);
    let q = queue(&inbox, 1, 2, 1_000);
    push_now(&inbox, &q, 1, 10, &budget);
    push_now(&inbox, &q, 2, 10, &budget);
    let third = push_blocked(push(&inbox, &q, 3, 10, &budget));
    assert_eq!(q.len(), (2, 20));
    // Taking one makes room: the waiting push completes on its own.
    assert_eq!(q.recv().await, Some(1));
    assert_eq!(
        tokio::time::timeout(LIMIT, third).await.unwrap().unwrap(),
        Ok(())
    );
    assert_eq!(q.len(), (2, 20));
    assert_eq!(recv_any(&inbox).await, (1, 2));
    assert_eq!(recv_any(&inbox).await, (1, 3));
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test]
async fn a_queue_refuses_beyond_its_byte_bound_but_always_takes_one_when_empty() {
    let inbox = inbox();
    let budget = ByteBudget::new(10_000);
    let q = queue(&inbox, 1, 10, 100);
    push_now(&inbox, &q, 1, 60, &budget);
    // 60 + 50 > 100: the reader waits, though the queue has room in messages.
    let second = push_blocked(push(&inbox, &q, 2, 50, &budget));
    assert_eq!(recv_any(&inbox).await, (1, 1));
    assert_eq!(
        tokio::time::timeout(LIMIT, second).await.unwrap().unwrap(),
        Ok(())
    );
    // 50 + 50 fits exactly.
    push_now(&inbox, &q, 3, 50, &budget);
    assert_eq!(q.len(), (2, 100));
    assert_eq!(q.recv().await, Some(2));
    assert_eq!(q.recv().await, Some(3));
    // An empty queue takes a message larger than its whole byte bound...
    push_now(&inbox, &q, 4, 500, &budget);
    assert_eq!(q.len(), (1, 500));
    // ... and nothing more until it is taken, however small.
    let fifth = push_blocked(push(&inbox, &q, 5, 1, &budget));
    assert_eq!(q.recv().await, Some(4));
    assert_eq!(
        tokio::time::timeout(LIMIT, fifth).await.unwrap().unwrap(),
        Ok(())
    );
    assert_eq!(q.recv().await, Some(5));
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_and_recv_any_together_never_lose_or_duplicate_a_message() {
    const N: u32 = 2_000;
    let inbox = inbox();
    let budget = ByteBudget::new(1_000_000);
    // Small bounds, so the pusher keeps waiting for room made by either receiver.
    let q = queue(&inbox, 1, 3, 1_000);
    let pusher = {
        let (inbox, q, budget) = (inbox.clone(), q.clone(), budget.clone());
        tokio::spawn(async move {
            for n in 0..N {
                let r = budget.reserve(10).await;
                inbox.push(&q, n, 10, r).await.unwrap();
            }
        })
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let by_recv = {
        let (q, tx) = (q.clone(), tx.clone());
        tokio::spawn(async move {
            let mut last = None;
            while let Some(n) = q.recv().await {
                // One receiver sees its share in order.
                assert!(last < Some(n), "{last:?} then {n}");
                last = Some(n);
                tx.send(n).unwrap();
            }
        })
    };
    let by_recv_any = {
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let r = inbox.recv_any().await;
                assert!(last < Some(r.message), "{last:?} then {}", r.message);
                last = Some(r.message);
                tx.send(r.message).unwrap();
            }
        })
    };
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while got.len() < N as usize {
            got.push(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {N} messages received", got.len()));
    tokio::time::timeout(LIMIT, pusher).await.unwrap().unwrap();
    let distinct: BTreeSet<u32> = got.iter().copied().collect();
    assert_eq!(distinct.len(), got.len(), "a message was delivered twice");
    assert_eq!(distinct, (0..N).collect());
    // Nothing left behind, nothing delivered later.
    assert_eq!(q.len(), (0, 0));
    q.close();
    tokio::time::timeout(LIMIT, by_recv).await.unwrap().unwrap();
    by_recv_any.abort();
    assert!(by_recv_any.await.unwrap_err().is_cancelled());
    assert!(rx.try_recv().is_err());
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test]
async fn recv_any_still_serves_a_queue_whose_messages_were_taken_by_recv() {
    let inbox = inbox();
    let budget = ByteBudget::new(1_000);
    let a = queue(&inbox, 1, 10, 1_000);
    let b = queue(&inbox, 2, 10, 1_000);
    push_now(&inbox, &a, 1, 10, &budget);
    push_now(&inbox, &b, 2, 10, &budget);
    // `a` is in the ring but its message is taken the other way.
    assert_eq!(a.recv().await, Some(1));
    // recv_any passes over the emptied queue...
    assert_eq!(recv_any(&inbox).await, (2, 2));
    // ... and sees it again as soon as it holds a message.
    push_now(&inbox, &a, 3, 10, &budget);
    assert_eq!(recv_any(&inbox).await, (1, 3));
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test]
async fn a_closed_queue_delivers_what_it_holds_then_ends() {
    let inbox = inbox();
    let budget = ByteBudget::new(1_000);
    let q = queue(&inbox, 1, 2, 1_000);
    push_now(&inbox, &q, 1, 10, &budget);
    push_now(&inbox, &q, 2, 10, &budget);
    let waiting = push_blocked(push(&inbox, &q, 3, 10, &budget));
    q.close();
    // The waiting reader is released with its message back; later pushes fail too.
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        Err(3)
    );
    let mut late = push(&inbox, &q, 4, 10, &budget);
    assert_eq!(poll_once(&mut late), Poll::Ready(Err(4)));
    // What was queued is still delivered, by either way of receiving.
    assert_eq!(q.recv().await, Some(1));
    assert_eq!(recv_any(&inbox).await, (1, 2));
    assert_eq!(q.recv().await, None);
    assert_eq!(q.recv().await, None);
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test]
async fn a_receiver_waiting_on_a_queue_is_woken_by_its_close() {
    let inbox = inbox();
    let q = queue(&inbox, 1, 2, 1_000);
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.recv().await })
    };
    tokio::task::yield_now().await;
    q.close();
    assert_eq!(
        tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap(),
        None
    );
}
