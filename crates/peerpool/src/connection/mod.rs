//! One established connection: a reader task and a writer task around an encrypted
//! session (WIRE.md §6–7, BEHAVIOUR.md §1.4, §7.3).
//!
//! - The **reader** (`reader`) opens chunks and reassembles messages. Before it buffers
//!   a message's body it reserves the whole message, at its 4-byte length prefix, from the
//!   node-wide [`ByteBudget`]: when the budget is spent it waits, and this socket stops
//!   being read. Application messages go to the connection's bounded queue (messages and
//!   bytes, `inbox`), control messages to the owner task through this
//!   connection's own small channel (the owner serves connections in turn, so one peer's
//!   flood cannot starve the others), and a Disconnect closes the connection.
//! - The **writer** (`writer`) seals queued messages into chunks. Control messages have
//!   their own queue and always go first. Application messages are bounded per connection
//!   in messages and in bytes.
//!
//! [`Connection::send`] waits for room; [`Connection::try_send`] refuses at once. What a
//! connection has in flight (queued, or written to the I/O scheduler but not yet to the
//! socket) beyond [`QueueConfig::outgoing_guaranteed_bytes`] comes out of the node-wide
//! outgoing budget (`charge`).

mod charge;
mod closing;
mod outbox;
mod reader;
mod writer;

use crate::budget::ByteBudget;
use crate::error::{SendError, TrySendError};
use crate::inbox::{ConnQueue, Inbox};
use crate::io_scheduler::ScheduledWriter;
use crate::socket::Established;
use closing::Closing;
use outbox::Outbox;
use peerpool_proto::connection_message::{ConnectionMetadata, NetworkVersion};
use peerpool_proto::framing::FramingError;
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::{AppMessage, P2pMessage};
use peerpool_proto::point::Point;
use peerpool_proto::policy::{ConnectionId, ControlMessage, DisconnectReason};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// Why a connection closed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent Disconnect.
    #[error("the peer sent Disconnect")]
    RemoteDisconnect,
    /// The peer closed the TCP stream.
    #[error("the peer closed the connection")]
    Eof,
    /// A read or write failed.
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// The peer sent bytes that are not valid chunks or messages (greylists the peer).
    #[error("protocol error: {0}")]
    Protocol(FramingError),
    /// We closed it.
    #[error("closed locally: {0}")]
    Local(DisconnectReason),
}

/// Equal reasons; two I/O errors are equal when their kinds are.
impl PartialEq for CloseReason {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CloseReason::RemoteDisconnect, CloseReason::RemoteDisconnect)
            | (CloseReason::Eof, CloseReason::Eof) => true,
            (CloseReason::Io(a), CloseReason::Io(b)) => a.kind() == b.kind(),
            (CloseReason::Protocol(a), CloseReason::Protocol(b)) => a == b,
            (CloseReason::Local(a), CloseReason::Local(b)) => a == b,
            _ => false,
        }
    }
}

impl CloseReason {
    /// Whether the reason shows the peer misbehaved (BEHAVIOUR.md §7.3: decoding errors
    /// greylist the peer).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, CloseReason::Protocol(_))
    }
}

/// What a connection's tasks tell the owner, in order; `Closed` is the last.
#[derive(Debug)]
pub(crate) enum Notice {
    /// A control message arrived.
    /// Boxed: the notice channel's slots are allocated a block at a time, so a small
    /// variant keeps an idle connection's channel small (about 4 KiB less per end).
    Control(Box<ControlMessage>),
    /// The connection is closed; both tasks have ended or are ending.
    Closed(CloseReason),
}

/// Byte and message counters of one connection (read-mostly gauges).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Bytes received on the socket, including chunk headers and tags.
    pub bytes_in: AtomicU64,
    /// Bytes written to the socket.
    pub bytes_out: AtomicU64,
    /// Messages received.
    pub messages_in: AtomicU64,
    /// Messages sent.
    pub messages_out: AtomicU64,
}

/// Sizes of a connection's queues. Checked once, with the node's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Incoming application messages buffered before the socket stops being read
    /// (octez `incoming_app_message_queue_size`, default 10), messages. ≥ 1.
    pub incoming_app_messages: usize,
    /// The same queue's bound in bytes (default 16 MiB); a message is always taken by an
    /// empty queue, so a single larger message still passes. ≥ 1.
    pub incoming_app_bytes: usize,
    /// Outgoing application messages waiting for the writer (default 100), messages. ≥ 1.
    pub outgoing_app_messages: usize,
    /// The same queue's bound in bytes (default 16 MiB); [`Connection::send`] waits and
    /// [`Connection::try_send`] refuses beyond it. ≥ 1.
    pub outgoing_app_bytes: usize,
    /// Outgoing control messages waiting for the writer (default 16), messages. ≥ 1.
    pub outgoing_control_messages: usize,
    /// Application bytes a connection may have in flight (queued here or in the I/O
    /// scheduler's write queue, until written to the socket) without drawing on the
    /// node-wide [`NodeConfig::outgoing_budget_bytes`](crate::NodeConfig::outgoing_budget_bytes):
    /// beyond it, [`Connection::send`] waits for that budget and [`Connection::try_send`]
    /// refuses when it is spent (default 1 MiB; 0: everything comes from the budget).
    pub outgoing_guaranteed_bytes: usize,
    /// Largest message accepted from the peer (the envelope's `N`), bytes; the effective
    /// bound is the smaller of this and the message type's
    /// [`AppMessage::MAX_SIZE`]. A longer length is refused at its 4-byte prefix.
    /// Default 8 MiB.
    pub max_message_bytes: usize,
    /// The slowest a large message may arrive, bytes per second, once its reservation is
    /// granted. A message too large for the receive budget's small-message lane (over
    /// 64 KiB) is reserved whole at its prefix; if it is still incomplete
    /// `slow_message_grace + size / slow_message_rate` after that, while other large
    /// messages wait for the budget, the connection is closed
    /// ([`DisconnectReason::SlowMessage`], nothing greylisted): a peer trickling a large
    /// message cannot hold the budget other peers' large messages need (issue 11).
    /// Default 64 KiB/s; `None`: never. With a download cap, the node uses at most a half
    /// of each connection's fair share of it (`cap / (2 × max_connections)`). ≥ 1.
    pub slow_message_rate: Option<usize>,
    /// The time a large message is given on top of `size / slow_message_rate` (default
    /// 10 s).
    pub slow_message_grace: std::time::Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            incoming_app_messages: 10,
            incoming_app_bytes: 16 * 1024 * 1024,
            outgoing_app_messages: 100,
            outgoing_app_bytes: 16 * 1024 * 1024,
            outgoing_control_messages: 16,
            outgoing_guaranteed_bytes: 1024 * 1024,
            slow_message_rate: Some(64 * 1024),
            slow_message_grace: std::time::Duration::from_secs(10),
            max_message_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What is known about the peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection's id (the attempt's id).
    pub id: ConnectionId,
    /// The peer.
    pub peer_id: PeerId,
    /// The remote socket address.
    pub remote_addr: SocketAddr,
    /// The peer's listening point, if it announced a port.
    pub listening_point: Option<Point>,
    /// Who dialed.
    pub direction: Direction,
    /// The negotiated version.
    pub version: NetworkVersion,
    /// The peer's announced version.
    pub announced_version: NetworkVersion,
    /// The peer's metadata.
    pub metadata: ConnectionMetadata,
}

struct Shared<M> {
    info: ConnectionInfo,
    stats: ConnectionStats,
    totals: Arc<MessageTotals>,
    /// Messages waiting for the writer, control first.
    outbox: Outbox,
    outgoing: ByteBudget,
    /// Bytes in flight, and the node-wide budget for those beyond the guarantee.
    in_flight: charge::Outgoing,
    queue: Arc<ConnQueue<M>>,
    /// Why the connection closed, once it has, and how far the close has gone.
    closing: Closing,
    io: ScheduledWriter,
}

/// The node's hold on a connection: the owner keeps it while the connection counts as
/// one of the node's. Dropping it lets the writer close the stream, so a peer reading
/// our end of the stream closed knows this node has forgotten the connection.
pub(crate) struct Held<M>(Arc<Shared<M>>);

impl<M> Drop for Held<M> {
    fn drop(&mut self) {
        self.0.closing.update_ends(|e| e.forgotten = true);
    }
}

/// A cloneable handle to one connection.
pub struct Connection<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Connection<M> {
    fn clone(&self) -> Self {
        Connection {
            shared: self.shared.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Connection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.shared.info)
            .finish_non_exhaustive()
    }
}

/// Encodes an application message in its envelope, `u30 N ‖ u16 tag ‖ body`.
pub(crate) fn envelope<M: AppMessage>(message: &M) -> Vec<u8> {
    let mut out = Vec::new();
    let at = peerpool_proto::encoding::begin_dynamic(&mut out);
    message.encode(&mut out);
    peerpool_proto::encoding::end_dynamic(&mut out, at);
    out
}

impl<M: AppMessage> Connection<M> {
    /// Who and where.
    pub fn info(&self) -> &ConnectionInfo {
        &self.shared.info
    }

    /// Counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.shared.stats
    }

    /// Queues an application message, waiting while the queue is full (in messages or
    /// bytes), or while the node-wide outgoing budget lacks what this connection has in
    /// flight beyond [`QueueConfig::outgoing_guaranteed_bytes`].
    ///
    /// Errors: [`SendError::Closed`] once the connection is closed, waiting or not.
    pub async fn send(&self, message: &M) -> Result<(), SendError> {
        self.send_encoded(Arc::new(envelope(message))).await
    }

    /// Queues an encoded envelope, waiting for room.
    pub(crate) async fn send_encoded(&self, bytes: Arc<Vec<u8>>) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let len = bytes.len();
        // Room now, or a wait that a close ends (the node-wide part can be held long by
        // peers that do not read).
        let reservation = match self.shared.outgoing.try_reserve(len) {
            Some(r) => r,
            None => self.until_closed(self.shared.outgoing.reserve(len)).await?,
        };
        let charge = match self.shared.in_flight.try_charge(len) {
            Some(c) => c,
            None => self.until_closed(self.shared.in_flight.charge(len)).await?,
        };
        self.shared
            .outbox
            .app(bytes, reservation, Some(charge))
            .await
    }

    /// What `wait` gives, unless the connection closes first.
    async fn until_closed<T>(
        &self,
        wait: impl std::future::Future<Output = T>,
    ) -> Result<T, SendError> {
        tokio::select! {
            biased;
            () = self.shared.closing.wait() => Err(SendError::Closed),
            t = wait => Ok(t),
        }
    }

    /// Queues an application message without waiting.
    ///
    /// Errors: [`TrySendError::Full`] (messages or bytes, or the node-wide outgoing budget
    /// beyond this connection's guarantee), [`TrySendError::Closed`].
    pub fn try_send(&self, message: &M) -> Result<(), TrySendError> {
        self.try_send_encoded(Arc::new(envelope(message)))
    }

    /// Queues an encoded envelope without waiting (broadcast encodes once).
    pub(crate) fn try_send_encoded(&self, bytes: Arc<Vec<u8>>) -> Result<(), TrySendError> {
        if self.is_closed() {
            return Err(TrySendError::Closed);
        }
        let reservation = self
            .shared
            .outgoing
            .try_reserve(bytes.len())
            .ok_or(TrySendError::Full)?;
        let charge = self
            .shared
            .in_flight
            .try_charge(bytes.len())
            .ok_or(TrySendError::Full)?;
        self.shared.outbox.try_app(bytes, reservation, Some(charge))
    }

    /// Queues a control message ahead of application messages; `false` if its queue is
    /// full or the connection is closed (octez `write_now`: dropped, not waited for). The
    /// node sends these itself (Bootstrap on connect, Advertise answers); an application
    /// rarely needs to.
    pub fn send_control(&self, message: ControlMessage) -> bool {
        let msg: P2pMessage<M> = match message {
            ControlMessage::Bootstrap => P2pMessage::Bootstrap,
            ControlMessage::Advertise(points) => P2pMessage::Advertise(points),
            ControlMessage::SwapRequest(p, id) => P2pMessage::SwapRequest(p, id),
            ControlMessage::SwapAck(p, id) => P2pMessage::SwapAck(p, id),
            _ => return false,
        };
        self.shared.outbox.try_control(Arc::new(msg.to_bytes()))
    }

    /// The next application message from this peer; `None` once the connection is closed
    /// and its queue drained. Messages taken here are not seen by the node's `recv_any`.
    pub async fn recv(&self) -> Option<M> {
        self.shared.queue.recv().await
    }

    /// Closes the connection: queued control messages are flushed, a Disconnect is sent,
    /// then the socket is shut down. The node hears of it and updates the pool.
    pub fn close(&self) {
        self.close_with(DisconnectReason::Requested);
    }

    pub(crate) fn close_with(&self, reason: DisconnectReason) {
        self.shared.closing.record(CloseReason::Local(reason));
    }

    /// The I/O scheduler's handle of this connection: statistics (`stat`), weight
    /// (`set_weight`) and per-connection caps (`set_cap`).
    pub fn scheduler(&self) -> &ScheduledWriter {
        &self.shared.io
    }

    /// Whether the connection has closed or is closing.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.is_closed()
    }

    /// Why it closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closing.reason()
    }

    /// Waits until the connection is closed (either side).
    pub async fn closed(&self) {
        self.shared.closing.wait().await;
    }

    /// Waits until the connection is closed on both sides: this node has forgotten it (a
    /// new connection with the peer is admitted) and the peer has closed its end of the
    /// stream. A peerpool peer closes its end only once it has forgotten the connection
    /// too, so after `true` either side may dial the other again at once. `false`: the
    /// peer did not close within the node's `close_timeout` after our close (or there was
    /// nothing to wait for: a protocol error, the node shutting down). Does not close the
    /// connection itself: see [`Connection::close`] and `Node::disconnect_and_wait`.
    pub async fn closed_on_both_sides(&self) -> bool {
        self.shared.closing.both_sides().await.peer_closed == Some(true)
    }

    /// Incoming application messages and bytes waiting for the application.
    pub fn queued_incoming(&self) -> (usize, usize) {
        self.shared.queue.len()
    }

    /// Outgoing application bytes in flight: queued, or handed to the I/O scheduler and
    /// not yet written to the socket (envelopes, before sealing).
    pub fn queued_outgoing(&self) -> usize {
        self.shared.in_flight.in_flight()
    }
}

/// What a new connection is wired to.
pub(crate) struct Wiring<M> {
    pub queues: QueueConfig,
    /// The node's message totals, counted beside the connection's own.
    pub totals: Arc<MessageTotals>,
    pub budget: ByteBudget,
    /// The node-wide budget of outgoing bytes in flight beyond each connection's guarantee.
    pub outgoing: ByteBudget,
    pub inbox: Arc<Inbox<M>>,
    pub notices: mpsc::Sender<Notice>,
    pub tracker: TaskTracker,
    /// The I/O scheduler's writer of the same stream: the writer task queues its sealed
    /// bytes there directly (the stream itself is only shut down through its write side).
    pub io: ScheduledWriter,
    /// After we close, how long the reader waits for the peer to close its end.
    pub linger: std::time::Duration,
}

/// Messages received and sent by every connection of a node since it started (closed
/// connections included).
#[derive(Debug, Default)]
pub struct MessageTotals {
    /// Messages received.
    pub received: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
}

/// Starts the reader and writer tasks (tracked) of an established connection and returns
/// its handle and the node's hold on it ([`Held`]: keep it while the node counts the
/// connection). Its notices go to `wiring.notices`; the last one is [`Notice::Closed`].
pub(crate) fn spawn<M, S>(
    established: Established<S>,
    info: ConnectionInfo,
    wiring: Wiring<M>,
) -> (Connection<M>, Held<M>)
where
    M: AppMessage,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Established {
        stream, session, ..
    } = established;
    let q = wiring.queues;
    let (read_half, write_half) = tokio::io::split(stream);
    let queue = wiring.inbox.queue(
        info.id,
        info.peer_id,
        q.incoming_app_messages,
        q.incoming_app_bytes,
    );
    let shared = Arc::new(Shared {
        info,
        stats: ConnectionStats::default(),
        totals: wiring.totals,
        outbox: Outbox::new(q.outgoing_control_messages, q.outgoing_app_messages),
        outgoing: ByteBudget::new(q.outgoing_app_bytes),
        in_flight: charge::Outgoing::new(q.outgoing_guaranteed_bytes, wiring.outgoing),
        queue,
        closing: Closing::default(),
        io: wiring.io,
    });
    let max_len = q.max_message_bytes.min(P2pMessage::<M>::max_len());
    wiring.tracker.spawn(writer::run::<M, _>(
        write_half,
        session.sealer,
        shared.clone(),
    ));
    // The bytes read past the peer's Ack, usually none: keep no spare capacity.
    let mut leftover = session.leftover;
    leftover.shrink_to_fit();
    wiring.tracker.spawn(reader::run::<M, _>(
        // The bytes read past the Ack first, then the stream.
        std::io::Cursor::new(leftover).chain(read_half),
        session.opener,
        max_len,
        reader::Sinks {
            inbox: wiring.inbox,
            budget: wiring.budget,
            notices: wiring.notices,
            slow: q.slow_message_rate.map(|rate| (q.slow_message_grace, rate)),
        },
        wiring.linger,
        shared.clone(),
    ));
    (
        Connection {
            shared: shared.clone(),
        },
        Held(shared),
    )
}
