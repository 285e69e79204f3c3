//! The reader task of a connection: chunks → messages → the application queue or the
//! owner, with every message's bytes reserved from the node-wide budget before its body
//! is buffered.

use super::{CloseReason, Notice, Shared};
use crate::budget::{ByteBudget, Reservation};
use crate::inbox::{Inbox, Refused};
use peerpool_proto::framing::{ChunkOpener, MessageDecoder};
use peerpool_proto::message::{AppMessage, P2pMessage};
use peerpool_proto::policy::{ControlMessage, DisconnectReason};
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where the reader delivers.
pub(super) struct Sinks<M> {
    pub inbox: Arc<Inbox<M>>,
    pub budget: ByteBudget,
    pub notices: mpsc::Sender<Notice>,
    /// The slowest a large message may arrive once reserved: `(grace, bytes per second)`
    /// (`QueueConfig::slow_message_rate`).
    pub slow: Option<(Duration, usize)>,
}

/// How often a large message past its deadline checks again whether others wait.
const RECHECK: Duration = Duration::from_secs(1);

/// When a large message of `bytes`, reserved now, must be complete.
fn deadline(slow: Option<(Duration, usize)>, bytes: usize) -> Option<Instant> {
    let (grace, rate) = slow?;
    let millis = (bytes as u64).saturating_mul(1000) / rate.max(1) as u64;
    Instant::now().checked_add(grace.saturating_add(Duration::from_millis(millis)))
}

/// `read`, unless `deadline` passes while a large message waits for `budget` (checked at
/// the deadline, then every [`RECHECK`]): then the connection is closed as too slow.
async fn or_too_slow(
    read: impl Future<Output = Result<(), CloseReason>>,
    deadline: Instant,
    budget: &ByteBudget,
) -> Result<(), CloseReason> {
    let expired = async {
        let mut at = deadline;
        loop {
            tokio::time::sleep_until(at).await;
            if budget.large_waiting() {
                return;
            }
            at = Instant::now() + RECHECK;
        }
    };
    tokio::select! {
        biased;
        r = read => r,
        () = expired => Err(CloseReason::Local(DisconnectReason::SlowMessage)),
    }
}

fn io_reason(e: io::Error) -> CloseReason {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        CloseReason::Eof
    } else {
        CloseReason::Io(Arc::new(e))
    }
}

/// Reads `input` (the bytes read past the peer's Ack, then the stream) until the
/// connection closes, then tells the owner why and waits for the peer's end of the close.
pub(super) async fn run<M: AppMessage, R: AsyncRead + Unpin>(
    mut input: R,
    mut opener: ChunkOpener,
    max_len: usize,
    sinks: Sinks<M>,
    linger: Duration,
    shared: Arc<Shared<M>>,
) {
    // No read buffer of our own: the stream is the I/O scheduler's, which already reads
    // the socket in large pieces; a buffer here would only add a copy.
    let reason = tokio::select! {
        // Reading first: a message that is complete is delivered before a close is seen.
        biased;
        r = read_loop(&mut input, &mut opener, max_len, &sinks, &shared) => Some(r),
        () = shared.closing.wait() => None,
    };
    if let Some(reason) = reason {
        shared.closing.record(reason);
    }
    shared.queue.close();
    let reason = shared
        .closing
        .reason()
        .unwrap_or(CloseReason::Local(DisconnectReason::Requested));
    let _ = tell(&sinks.notices, Notice::Closed(reason.clone())).await;
    // The node has been told; the peer's side of the close is what remains.
    let peer_closed = match reason {
        CloseReason::RemoteDisconnect | CloseReason::Eof | CloseReason::Io(_) => true,
        CloseReason::Protocol(_) | CloseReason::Local(DisconnectReason::Shutdown) => false,
        // We closed: the peer closes its end once it has read our Disconnect and forgotten
        // the connection. What it still sends meanwhile is dropped unread.
        CloseReason::Local(_) => {
            // Boxed, in a statement of its own (so the task's future holds no room for it):
            // only a closing connection pays for the drain's buffer and timer.
            let drained = Box::pin(drain(&mut input, linger));
            drained.await
        }
    };
    shared
        .closing
        .update_ends(|e| e.peer_closed = Some(peer_closed));
}

/// Reads and drops everything until the end of the stream (`true`) or `limit` (`false`).
async fn drain<R: AsyncRead + Unpin>(input: &mut R, limit: Duration) -> bool {
    let mut sink = [0u8; 512];
    let until_end = async {
        // An error ends the stream as surely as its end does.
        while let Ok(1..) = input.read(&mut sink).await {}
    };
    tokio::time::timeout(limit, until_end).await.is_ok()
}

/// Sends `notice` to the owner, waiting while this connection's channel is full; `Err`
/// once the owner is gone.
///
/// Here and below, what may wait is tried at once first, and only a wait allocates its
/// state, built in a statement of its own: the reader's future, which every connection
/// keeps for its whole life, then has no room for states it rarely needs.
async fn tell(notices: &mpsc::Sender<Notice>, notice: Notice) -> Result<(), ()> {
    match notices.try_send(notice) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(notice)) => {
            let send = Box::pin(notices.send(notice));
            send.await.map_err(|_| ())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

/// Takes `bytes` from `budget`, waiting while it is spent (see [`tell`]).
async fn reserve(budget: &ByteBudget, bytes: usize) -> Reservation {
    if let Some(now) = budget.try_reserve(bytes) {
        return now;
    }
    let wait = Box::pin(budget.reserve(bytes));
    wait.await
}

/// How long the peer must stay quiet before the reader lets its buffers go: long enough
/// that a flowing connection keeps them between messages (no allocation and zeroing of a
/// chunk buffer per message), short enough that an idle connection soon holds none.
const QUIET: Duration = Duration::from_millis(500);

/// Reads exactly `buf.len()` bytes from `input`; if they are not there within [`QUIET`]
/// (the peer is quiet), calls `idle` meanwhile, once.
async fn read_exact_or_idle<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
    idle: impl FnOnce(),
) -> io::Result<()> {
    let mut idle = Some(idle);
    let mut read = std::pin::pin!(input.read_exact(buf));
    // Only a wait allocates its timer, so the reader's future has no room for it.
    let mut quiet: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        let r = read.as_mut().poll(cx);
        if r.is_pending() && idle.is_some() {
            let timer = quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep(QUIET)));
            if timer.as_mut().poll(cx).is_ready() {
                quiet = None;
                if let Some(idle) = idle.take() {
                    idle();
                }
            }
        }
        r
    })
    .await
    .map(|_| ())
}

/// Reads the next chunk into `chunk`. While the peer is quiet, holds no buffer: the
/// chunk's, and the decoder's unless it holds part of a message (a burst of large messages
/// left them large).
async fn read_chunk<R: AsyncRead + Unpin>(
    input: &mut R,
    chunk: &mut Vec<u8>,
    decoder: &mut MessageDecoder,
    max_len: usize,
) -> Result<(), CloseReason> {
    let mut header = [0u8; 2];
    let idle = || {
        *chunk = Vec::new();
        if decoder.buffered() == 0 {
            *decoder = MessageDecoder::new(max_len);
        }
    };
    read_exact_or_idle(input, &mut header, idle)
        .await
        .map_err(io_reason)?;
    let len = ChunkOpener::chunk_len(header).map_err(CloseReason::Protocol)?;
    chunk.resize(len, 0);
    input.read_exact(chunk).await.map_err(io_reason)?;
    Ok(())
}

/// Reads until an error or Disconnect; returns why it stopped. Messages longer than
/// `max_len` bytes are refused at their prefix.
async fn read_loop<M: AppMessage, R: AsyncRead + Unpin>(
    input: &mut R,
    opener: &mut ChunkOpener,
    max_len: usize,
    sinks: &Sinks<M>,
    shared: &Shared<M>,
) -> CloseReason {
    let mut decoder = MessageDecoder::new(max_len);
    // The chunk being read (at most 65 535 bytes).
    let mut chunk = Vec::new();
    // The reservation of the message being assembled.
    let mut held = Reservation::empty();
    // When the large message being assembled must be complete, if others wait for the
    // budget (`QueueConfig::slow_message_rate`).
    let mut due: Option<Instant> = None;
    loop {
        let read = match due {
            None => read_chunk(input, &mut chunk, &mut decoder, max_len).await,
            Some(at) => {
                // Boxed: only a connection in the middle of a large message pays for it.
                let read = read_chunk(input, &mut chunk, &mut decoder, max_len);
                let raced = Box::pin(or_too_slow(read, at, &sinks.budget));
                raced.await
            }
        };
        if let Err(reason) = read {
            return reason;
        }
        let len = chunk.len();
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
            due = None;
            shared.stats.messages_in.fetch_add(1, Ordering::Relaxed);
            shared.totals.received.fetch_add(1, Ordering::Relaxed);
            // The whole message is accounted for, reserved at its prefix or now.
            if held.bytes() < size {
                held.merge(reserve(&sinks.budget, size - held.bytes()).await);
            }
            let reservation = held.split(size);
            let control = match message {
                P2pMessage::Message(m) => {
                    // Waits while the application's queue is full: backpressure.
                    let pushed = match sinks.inbox.try_push(&shared.queue, m, size, reservation) {
                        Ok(()) => Ok(()),
                        Err(Refused::Closed(m)) => Err(m),
                        Err(Refused::Full(waiting)) => {
                            let push = Box::pin(sinks.inbox.push_waiting(&shared.queue, waiting));
                            push.await
                        }
                    };
                    if pushed.is_err() {
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
            if tell(&sinks.notices, Notice::Control(Box::new(control)))
                .await
                .is_err()
            {
                return CloseReason::Local(DisconnectReason::Shutdown);
            }
        }
        // A message has started: reserve all of it before reading its body.
        if let Some(n) = decoder.pending_len() {
            let want = n.saturating_add(4);
            if held.bytes() < want {
                held.merge(reserve(&sinks.budget, want - held.bytes()).await);
                if want > sinks.budget.small_request() {
                    due = deadline(sinks.slow, want);
                }
            }
        }
    }
}
