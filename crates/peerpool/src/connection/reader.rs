//! The reader task of a connection: chunks → messages → the application queue or the
//! owner, with every message's bytes reserved from the node-wide budget before its body
//! is buffered.

use super::{record, CloseReason, Notice, Shared};
use crate::budget::{ByteBudget, Reservation};
use crate::inbox::Inbox;
use peerpool_proto::framing::{ChunkOpener, MessageDecoder};
use peerpool_proto::message::{AppMessage, P2pMessage};
use peerpool_proto::policy::{ControlMessage, DisconnectReason};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Where the reader delivers.
pub(super) struct Sinks<M> {
    pub inbox: Arc<Inbox<M>>,
    pub budget: ByteBudget,
    pub notices: mpsc::Sender<Notice>,
}

fn io_reason(e: io::Error) -> CloseReason {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        CloseReason::Eof
    } else {
        CloseReason::Io(Arc::new(e))
    }
}

pub(super) async fn run<M: AppMessage, R: AsyncRead + Unpin>(
    leftover: std::io::Cursor<Vec<u8>>,
    read_half: R,
    mut opener: ChunkOpener,
    mut decoder: MessageDecoder,
    sinks: Sinks<M>,
    shared: Arc<Shared<M>>,
) {
    // No read buffer of our own: the stream is the I/O scheduler's, which already reads
    // the socket in large pieces; a buffer here would only add a copy.
    let mut input = leftover.chain(read_half);
    let mut close_rx = shared.close_tx.subscribe();
    let reason = tokio::select! {
        // Reading first: a message that is complete is delivered before a close is seen.
        biased;
        r = read_loop(&mut input, &mut opener, &mut decoder, &sinks, &shared) => Some(r),
        _ = close_rx.wait_for(|r| r.is_some()) => None,
    };
    if let Some(reason) = reason {
        record(&shared.close_tx, reason);
    }
    shared.queue.close();
    let reason = shared
        .close_tx
        .borrow()
        .clone()
        .unwrap_or(CloseReason::Local(DisconnectReason::Requested));
    let _ = sinks.notices.send(Notice::Closed(reason)).await;
}

/// Reads until an error or Disconnect; returns why it stopped.
async fn read_loop<M: AppMessage, R: AsyncRead + Unpin>(
    input: &mut R,
    opener: &mut ChunkOpener,
    decoder: &mut MessageDecoder,
    sinks: &Sinks<M>,
    shared: &Shared<M>,
) -> CloseReason {
    let mut chunk = Vec::new();
    // The reservation of the message being assembled.
    let mut held = Reservation::empty();
    loop {
        let mut header = [0u8; 2];
        if let Err(e) = input.read_exact(&mut header).await {
            return io_reason(e);
        }
        let len = match ChunkOpener::chunk_len(header) {
            Ok(len) => len,
            Err(e) => return CloseReason::Protocol(e),
        };
        chunk.resize(len, 0);
        if let Err(e) = input.read_exact(&mut chunk).await {
            return io_reason(e);
        }
        shared
            .stats
            .bytes_in
            .fetch_add(2 + len as u64, Ordering::Relaxed);
        match opener.open(&mut chunk) {
            Ok(plain) => decoder.push(plain),
            Err(e) => return CloseReason::Protocol(e),
        }
        loop {
            let message = match decoder.next_message() {
                Ok(Some(body)) => P2pMessage::<M>::decode_body(body).map(|m| (m, body.len() + 4)),
                Ok(None) => break,
                Err(e) => return CloseReason::Protocol(e),
            };
            let (message, size) = match message {
                Ok(m) => m,
                Err(e) => return CloseReason::Protocol(e.into()),
            };
            shared.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            shared.totals.received.fetch_add(1, Ordering::Relaxed);
            // The whole message is accounted for, reserved at its prefix or now.
            if held.bytes() < size {
                held.merge(sinks.budget.reserve(size - held.bytes()).await);
            }
            let reservation = held.split(size);
            let control = match message {
                P2pMessage::Message(m) => {
                    // Waits while the application's queue is full: backpressure.
                    if sinks
                        .inbox
                        .push(&shared.queue, m, size, reservation)
                        .await
                        .is_err()
                    {
                        return CloseReason::Local(DisconnectReason::Requested);
                    }
                    continue;
                }
                P2pMessage::Disconnect => return CloseReason::RemoteDisconnect,
                P2pMessage::Bootstrap => ControlMessage::Bootstrap,
                P2pMessage::Advertise(p) => ControlMessage::Advertise(p),
                P2pMessage::SwapRequest(p, id) => ControlMessage::SwapRequest(p, id),
                P2pMessage::SwapAck(p, id) => ControlMessage::SwapAck(p, id),
            };
            drop(reservation);
            if sinks.notices.send(Notice::Control(control)).await.is_err() {
                return CloseReason::Local(DisconnectReason::Shutdown);
            }
        }
        // A message has started: reserve all of it before reading its body.
        if let Some(n) = decoder.pending_len() {
            let want = n.saturating_add(4);
            if held.bytes() < want {
                held.merge(sinks.budget.reserve(want - held.bytes()).await);
            }
        }
    }
}
