//! The node's events, read as they come by a task of the test and tallied, so a test can
//! count what happened to every connection and wait for a condition on the counts.

use crate::bench::LIMIT;
use peerpool::{CloseReason, ConnectError, EventError, NodeEvent};
use peerpool_proto::identity::PeerId;
use peerpool_proto::policy::{ControlKind, Refusal};
use peerpool_proto::pool::P2pEvent;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the node told its subscribers, kept for the test to count.
#[derive(Debug, Default)]
pub struct Tally {
    pub established: Vec<(PeerId, SocketAddr)>,
    pub closed: Vec<(PeerId, CloseReason)>,
    pub handshake_failed: Vec<(SocketAddr, ConnectError)>,
    pub refused: Vec<(SocketAddr, Refusal)>,
    pub throttled: Vec<(PeerId, ControlKind)>,
    pub bootstrap_answered: Vec<PeerId>,
    pub advertise_received: Vec<PeerId>,
    pub swap_requests_received: usize,
    pub swap_acks_sent: usize,
    pub lagged: u64,
}

impl Tally {
    pub fn closed_reason(&self, peer: &PeerId) -> Option<&CloseReason> {
        self.closed.iter().find(|(p, _)| p == peer).map(|(_, r)| r)
    }

    pub fn throttled(&self, kind: ControlKind) -> usize {
        self.throttled.iter().filter(|(_, k)| *k == kind).count()
    }
}

/// The tally, filled by a task reading the node's events.
#[derive(Clone)]
pub struct EventLog {
    tally: Arc<Mutex<Tally>>,
    changed: Arc<Notify>,
}

impl EventLog {
    pub fn spawn(mut events: peerpool::Events, stop: CancellationToken) -> (Self, JoinHandle<()>) {
        let log = EventLog {
            tally: Arc::default(),
            changed: Arc::new(Notify::new()),
        };
        let l = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = events.recv() => e,
                    _ = stop.cancelled() => return,
                };
                {
                    let mut t = l.tally.lock().unwrap();
                    match e {
                        Ok(e) => record(&mut t, e),
                        Err(EventError::Lagged(n)) => t.lagged += n,
                        Err(_) => return,
                    }
                }
                l.changed.notify_waiters();
            }
        });
        (log, task)
    }

    /// Reads the tally.
    pub fn with<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        f(&self.tally.lock().unwrap())
    }

    /// Waits (at most `LIMIT`) until `cond` holds on the tally.
    pub async fn wait(&self, what: &str, mut cond: impl FnMut(&Tally) -> bool) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.with(&mut cond) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let summary = self.with(|t| {
                    format!(
                        "established {}, closed {}, handshake failed {}, refused {}, lagged {}",
                        t.established.len(),
                        t.closed.len(),
                        t.handshake_failed.len(),
                        t.refused.len(),
                        t.lagged
                    )
                });
                panic!("{what}: not within {LIMIT:?} ({summary})");
            }
        }
    }
}

fn record(t: &mut Tally, e: NodeEvent) {
    match e {
        NodeEvent::ConnectionEstablished {
            peer_id,
            remote_addr,
            ..
        } => t.established.push((peer_id, remote_addr)),
        NodeEvent::ConnectionClosed {
            peer_id, reason, ..
        } => t.closed.push((peer_id, reason)),
        NodeEvent::HandshakeFailed {
            remote_addr, error, ..
        } => t.handshake_failed.push((remote_addr, error)),
        NodeEvent::IncomingRefused {
            remote_addr,
            reason,
        } => t.refused.push((remote_addr, reason)),
        NodeEvent::ControlThrottled { peer_id, kind } => t.throttled.push((peer_id, kind)),
        NodeEvent::BootstrapAnswered { peer_id, .. } => t.bootstrap_answered.push(peer_id),
        NodeEvent::AdvertiseReceived { peer_id, .. } => t.advertise_received.push(peer_id),
        NodeEvent::Pool(P2pEvent::SwapRequestReceived { .. }) => t.swap_requests_received += 1,
        NodeEvent::Pool(P2pEvent::SwapAckSent { .. }) => t.swap_acks_sent += 1,
        _ => {}
    }
}
