//! The writer task of a connection: queued envelopes → sealed chunks → the socket,
//! control messages first; on close, queued control messages and a Disconnect.

use super::{record, CloseReason, Shared};
use crate::budget::Reservation;
use peerpool_proto::framing::ChunkSealer;
use peerpool_proto::message::{AppMessage, P2pMessage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Largest batch of already-queued messages coalesced into one write, bytes.
const COALESCE: usize = 256 * 1024;

pub(super) async fn run<M: AppMessage, W: AsyncWrite + Unpin>(
    mut out: W,
    mut sealer: ChunkSealer,
    mut control: mpsc::Receiver<Arc<Vec<u8>>>,
    mut app: mpsc::Receiver<(Arc<Vec<u8>>, Reservation)>,
    shared: Arc<Shared<M>>,
) {
    let mut close_rx = shared.close_tx.subscribe();
    let mut wire = Vec::new();
    loop {
        let next = tokio::select! {
            // Closing first, then control messages before application messages.
            biased;
            _ = close_rx.wait_for(|r| r.is_some()) => None,
            m = control.recv() => m,
            m = app.recv() => m.map(|(bytes, _reservation)| bytes),
        };
        let Some(first) = next else { break };
        wire.clear();
        sealer.seal_message(&first, &mut wire);
        let mut count = 1;
        // Coalesce what is already queued, control first, into one write. Reservations
        // are released once their bytes are sealed (the scheduler's write queue bounds
        // the rest).
        while wire.len() < COALESCE {
            let m = match control.try_recv() {
                Ok(m) => m,
                Err(_) => match app.try_recv() {
                    Ok((m, _reservation)) => m,
                    Err(_) => break,
                },
            };
            sealer.seal_message(&m, &mut wire);
            count += 1;
        }
        if let Err(e) = out.write_all(&wire).await {
            record(&shared.close_tx, CloseReason::Io(Arc::new(e)));
            return;
        }
        shared
            .stats
            .bytes_out
            .fetch_add(wire.len() as u64, Ordering::Relaxed);
        shared
            .stats
            .messages_out
            .fetch_add(count, Ordering::Relaxed);
        shared.totals.sent.fetch_add(count, Ordering::Relaxed);
        if wire.capacity() > 4 * COALESCE {
            // A large message passed: give its buffer back rather than keep it idle.
            wire = Vec::new();
        }
    }
    // Closing: flush queued control messages, then say Disconnect unless the peer did.
    let reason = shared.close_tx.borrow().clone();
    wire.clear();
    while let Ok(m) = control.try_recv() {
        sealer.seal_message(&m, &mut wire);
    }
    if matches!(reason, Some(CloseReason::Local(_))) {
        sealer.seal_message(&P2pMessage::<M>::Disconnect.to_bytes(), &mut wire);
    }
    if !wire.is_empty() && out.write_all(&wire).await.is_ok() {
        shared
            .stats
            .bytes_out
            .fetch_add(wire.len() as u64, Ordering::Relaxed);
    }
    let _ = out.shutdown().await;
}
