//! The writer task of a connection: queued envelopes → sealed chunks → the socket,
//! control messages first; on close, queued control messages and a Disconnect.

use super::charge::Charge;
use super::outbox::Outbox;
use super::{CloseReason, Shared};
use crate::io_scheduler::{IoSchedulerError, ScheduledWriter};
use bytes::Bytes;
use peerpool_proto::framing::ChunkSealer;
use peerpool_proto::message::{AppMessage, P2pMessage};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest batch of already-queued messages coalesced into one write, bytes.
const COALESCE: usize = 256 * 1024;

/// Closes the outbox when the writer ends, however it ends (returns, or is dropped with
/// the runtime): queued messages are dropped and senders told the connection is closed.
struct CloseOnDrop<'a>(&'a Outbox);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A sealed batch and the charge of its messages' bytes in flight: the I/O scheduler
/// drops it once every byte is written to the socket (or the connection is gone), and
/// the charge goes back then.
struct Sealed {
    wire: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        &self.wire
    }
}

/// Queues `wire` for the socket, waiting while the scheduler's write queue is full. Tried
/// at once first; only a wait allocates its state, in a statement of its own, so the
/// writer's future (kept for the connection's whole life) has no room for it.
async fn write(io: &ScheduledWriter, wire: Bytes) -> Result<(), IoSchedulerError> {
    if io.write_now(wire.clone()) {
        return Ok(());
    }
    // Full or closed: the wait tells which.
    let wait = Box::pin(io.write(wire));
    wait.await
}

/// `out` is the connection's stream, shut down at the end; the sealed bytes go straight
/// to the I/O scheduler's write queue (`shared.io`, the same stream's writer), each batch
/// in a buffer of its own that the scheduler frees once written: the writer keeps no
/// buffer between batches, and the bytes are not copied again.
pub(super) async fn run<M: AppMessage, W: AsyncWrite + Unpin>(
    mut out: W,
    mut sealer: ChunkSealer,
    shared: Arc<Shared<M>>,
) {
    let _close = CloseOnDrop(&shared.outbox);
    // The messages of one batch (a few pointers, kept between batches).
    let mut batch = Vec::new();
    loop {
        let next = tokio::select! {
            // Closing first, then control messages before application messages.
            biased;
            () = shared.closing.wait() => None,
            m = shared.outbox.next() => Some(m),
        };
        let Some((first, charge)) = next else {
            break;
        };
        let mut charges = shared.in_flight.empty();
        charges.absorb_opt(charge);
        // Coalesce what is already queued, control first, into one write, sealed into one
        // buffer sized for the whole batch at once (no regrowth, no copy). The queue's byte
        // reservations went back as the messages were taken; their charges of bytes in
        // flight go with the sealed batch until the scheduler has written it.
        let mut size = sealer.sealed_len(first.len());
        batch.push(first);
        while size < COALESCE {
            let Some((m, charge)) = shared.outbox.try_next() else {
                break;
            };
            charges.absorb_opt(charge);
            size += sealer.sealed_len(m.len());
            batch.push(m);
        }
        let count = batch.len() as u64;
        let mut wire = Vec::with_capacity(size);
        for m in batch.drain(..) {
            sealer.seal_message(&m, &mut wire);
        }
        let len = wire.len() as u64;
        let wire = Bytes::from_owner(Sealed {
            wire,
            _charge: charges,
        });
        if let Err(e) = write(&shared.io, wire).await {
            let e = io::Error::new(io::ErrorKind::BrokenPipe, e);
            shared.closing.record(CloseReason::Io(Arc::new(e)));
            return;
        }
        shared.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        shared
            .stats
            .messages_out
            .fetch_add(count, Ordering::Relaxed);
        shared.totals.sent.fetch_add(count, Ordering::Relaxed);
    }
    // Closing: flush queued control messages, then say Disconnect unless the peer did.
    let reason = shared.closing.reason();
    let mut wire = Vec::new();
    while let Some(m) = shared.outbox.try_control_next() {
        sealer.seal_message(&m, &mut wire);
    }
    if matches!(reason, Some(CloseReason::Local(_))) {
        sealer.seal_message(&P2pMessage::<M>::Disconnect.to_bytes(), &mut wire);
    }
    let len = wire.len() as u64;
    if !wire.is_empty() && write(&shared.io, Bytes::from(wire)).await.is_ok() {
        shared.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
    }
    // The end of our stream tells the peer this node has forgotten the connection: close
    // it once the node has, and once the reader is done (after our Disconnect it waits for
    // the peer to close first, within the linger).
    shared.closing.both_sides().await;
    let _ = out.shutdown().await;
}
