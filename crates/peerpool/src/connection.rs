//! One established connection: a reader task and a writer task around an encrypted
//! session (WIRE.md §6–7, BEHAVIOUR.md §1.4, §7.3).
//!
//! - The **reader** opens chunks, reassembles messages, sends control messages (Bootstrap,
//!   Advertise, Swap) to the node's owner task and application messages to a bounded
//!   queue (`incoming_app_message_queue_size`, default 10). When that queue is full the
//!   reader waits, so this socket stops being read (TCP flow control) while every other
//!   connection goes on. A received Disconnect closes the connection.
//! - The **writer** seals queued messages into chunks. Control messages have their own
//!   queue and always go first, so they never wait behind application messages.
//!
//! Every queue is bounded: [`ConnectionHandle::send`] waits for room,
//! [`ConnectionHandle::try_send`] refuses and returns `false`.

use crate::io_scheduler::ScheduledWriter;
use crate::socket::Established;
use peerpool_proto::connection_message::{ConnectionMetadata, NetworkVersion};
use peerpool_proto::framing::{ChunkOpener, FramingError, MessageDecoder};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::{AppMessage, P2pMessage};
use peerpool_proto::point::Point;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseReason {
    /// The peer sent Disconnect.
    #[error("the peer sent Disconnect")]
    RemoteDisconnect,
    /// The peer closed the TCP stream.
    #[error("the peer closed the connection")]
    Eof,
    /// A read or write failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The peer sent bytes that are not valid chunks or messages (greylists the peer).
    #[error("protocol error: {0}")]
    Protocol(FramingError),
    /// We closed it (shutdown, duplicate, API call).
    #[error("closed locally: {0}")]
    Local(&'static str),
}

impl CloseReason {
    /// Whether the reason shows the peer misbehaved (BEHAVIOUR.md §7.3: decoding errors
    /// greylist the peer).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, CloseReason::Protocol(_))
    }
}

/// A control message received from a peer, for the node's owner task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Asks for known points.
    Bootstrap,
    /// Known points.
    Advertise(Vec<Point>),
    /// A swap proposal.
    SwapRequest(Point, PeerId),
    /// A swap acceptance.
    SwapAck(Point, PeerId),
}

/// What connection tasks report to their owner.
#[derive(Debug)]
pub enum ConnectionNotice {
    /// A control message arrived.
    Control {
        /// Connection id.
        id: u64,
        /// Sender.
        peer_id: PeerId,
        /// The message.
        message: ControlMessage,
    },
    /// The connection is closed; both tasks have ended or are ending.
    Closed {
        /// Connection id.
        id: u64,
        /// The peer.
        peer_id: PeerId,
        /// Why.
        reason: CloseReason,
    },
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

/// Sizes of a connection's queues.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Incoming application messages buffered before the socket stops being read
    /// (octez `incoming_app_message_queue_size`, default 10), messages.
    pub incoming_app_messages: usize,
    /// Outgoing application messages waiting for the writer (default 100), messages.
    pub outgoing_app_messages: usize,
    /// Outgoing control messages waiting for the writer (default 16), messages.
    pub outgoing_control_messages: usize,
    /// Largest message accepted from the peer (the envelope's `N`), bytes.
    pub max_message_len: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            incoming_app_messages: 10,
            outgoing_app_messages: 100,
            outgoing_control_messages: 16,
            max_message_len: peerpool_proto::message::MAX_ENVELOPE_LEN,
        }
    }
}

/// What is known about the peer of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Connection id, unique in this process.
    pub id: u64,
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

/// A cloneable handle to one connection.
#[derive(Debug)]
pub struct ConnectionHandle<M> {
    /// Who and where.
    pub info: Arc<ConnectionInfo>,
    /// Counters.
    pub stats: Arc<ConnectionStats>,
    control_tx: mpsc::Sender<Arc<Vec<u8>>>,
    app_tx: mpsc::Sender<Arc<Vec<u8>>>,
    app_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<M>>>,
    close_tx: Arc<watch::Sender<Option<CloseReason>>>,
    io: Option<ScheduledWriter>,
}

impl<M> Clone for ConnectionHandle<M> {
    fn clone(&self) -> Self {
        ConnectionHandle {
            info: self.info.clone(),
            stats: self.stats.clone(),
            control_tx: self.control_tx.clone(),
            app_tx: self.app_tx.clone(),
            app_rx: self.app_rx.clone(),
            close_tx: self.close_tx.clone(),
            io: self.io.clone(),
        }
    }
}

impl<M: AppMessage> ConnectionHandle<M> {
    /// Queues an application message, waiting while the queue is full. Returns `false`
    /// if the connection is closed.
    pub async fn send(&self, message: &M) -> bool {
        let bytes = Arc::new(P2pMessage::Message(message).to_bytes_ref());
        self.app_tx.send(bytes).await.is_ok()
    }

    /// Queues an already encoded envelope without waiting; `false` if the queue is full
    /// or the connection closed (used by broadcast, which encodes once).
    pub fn try_send_encoded(&self, envelope: Arc<Vec<u8>>) -> bool {
        self.app_tx.try_send(envelope).is_ok()
    }

    /// Queues an application message without waiting; `false` if full or closed.
    pub fn try_send(&self, message: &M) -> bool {
        self.try_send_encoded(Arc::new(P2pMessage::Message(message).to_bytes_ref()))
    }

    /// Queues a control message ahead of application messages; `false` if its queue is
    /// full or the connection closed.
    pub fn send_control(&self, message: ControlMessage) -> bool {
        let msg: P2pMessage<M> = match message {
            ControlMessage::Bootstrap => P2pMessage::Bootstrap,
            ControlMessage::Advertise(points) => P2pMessage::Advertise(points),
            ControlMessage::SwapRequest(p, id) => P2pMessage::SwapRequest(p, id),
            ControlMessage::SwapAck(p, id) => P2pMessage::SwapAck(p, id),
        };
        self.control_tx.try_send(Arc::new(msg.to_bytes())).is_ok()
    }

    /// The next application message from this peer; `None` once the connection is closed
    /// and the queue drained.
    pub async fn recv(&self) -> Option<M> {
        self.app_rx.lock().await.recv().await
    }

    /// Closes the connection: queued control messages are flushed, a Disconnect is sent,
    /// then the socket is shut down.
    pub fn close(&self, why: &'static str) {
        self.close_tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(CloseReason::Local(why));
                true
            } else {
                false
            }
        });
    }

    /// Attaches the I/O scheduler's handle of this connection's stream.
    pub fn with_scheduler(mut self, io: ScheduledWriter) -> Self {
        self.io = Some(io);
        self
    }

    /// The I/O scheduler's handle of this connection, when its stream is scheduled:
    /// statistics (`stat`), weight (`set_weight`) and per-connection caps (`set_cap`).
    pub fn scheduler(&self) -> Option<&ScheduledWriter> {
        self.io.as_ref()
    }

    /// Whether the connection has closed or is closing.
    pub fn is_closed(&self) -> bool {
        self.close_tx.borrow().is_some()
    }
}

/// Encodes a borrowed app message in an envelope (avoids cloning the message).
trait EncodeRef {
    fn to_bytes_ref(&self) -> Vec<u8>;
}

impl<M: AppMessage> EncodeRef for P2pMessage<&M> {
    fn to_bytes_ref(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let P2pMessage::Message(m) = self {
            let at = peerpool_proto::encoding::begin_dynamic(&mut out);
            m.encode(&mut out);
            peerpool_proto::encoding::end_dynamic(&mut out, at);
        }
        out
    }
}

fn record(close: &watch::Sender<Option<CloseReason>>, reason: CloseReason) {
    close.send_if_modified(|r| {
        if r.is_none() {
            *r = Some(reason);
            true
        } else {
            false
        }
    });
}

/// Starts the reader and writer tasks of an established connection and returns its handle.
/// Notices go to `notices`; the last one for this connection is [`ConnectionNotice::Closed`].
pub fn spawn<M, S>(
    established: Established<S>,
    info: ConnectionInfo,
    queues: QueueConfig,
    notices: mpsc::Sender<ConnectionNotice>,
) -> ConnectionHandle<M>
where
    M: AppMessage,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Established {
        stream, session, ..
    } = established;
    let (read_half, write_half) = tokio::io::split(stream);
    let stats = Arc::new(ConnectionStats::default());
    let (control_tx, control_rx) = mpsc::channel(queues.outgoing_control_messages.max(1));
    let (app_tx, app_rx_out) = mpsc::channel(queues.outgoing_app_messages.max(1));
    let (in_tx, in_rx) = mpsc::channel(queues.incoming_app_messages.max(1));
    let (close_tx, close_rx) = watch::channel(None);
    let close_tx = Arc::new(close_tx);
    let info = Arc::new(info);

    tokio::spawn(writer_task::<M, _>(
        write_half,
        session.sealer,
        control_rx,
        app_rx_out,
        close_rx.clone(),
        close_tx.clone(),
        stats.clone(),
    ));
    let max_len = queues.max_message_len.min(P2pMessage::<M>::max_len());
    tokio::spawn(reader_task::<M, _>(
        std::io::Cursor::new(session.leftover).chain(read_half),
        session.opener,
        MessageDecoder::new(max_len),
        in_tx,
        notices,
        close_rx,
        close_tx.clone(),
        stats.clone(),
        info.clone(),
    ));
    ConnectionHandle {
        info,
        stats,
        control_tx,
        app_tx,
        app_rx: Arc::new(tokio::sync::Mutex::new(in_rx)),
        close_tx,
        io: None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn writer_task<M: AppMessage, W: AsyncWrite + Unpin>(
    mut out: W,
    mut sealer: peerpool_proto::framing::ChunkSealer,
    mut control: mpsc::Receiver<Arc<Vec<u8>>>,
    mut app: mpsc::Receiver<Arc<Vec<u8>>>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    close_tx: Arc<watch::Sender<Option<CloseReason>>>,
    stats: Arc<ConnectionStats>,
) {
    let mut wire = Vec::with_capacity(64 * 1024);
    loop {
        let next = tokio::select! {
            biased;
            _ = close_rx.changed() => None,
            m = control.recv() => m,
            m = app.recv() => m,
        };
        let Some(first) = next else { break };
        wire.clear();
        sealer.seal_message(&first, &mut wire);
        let mut count = 1;
        // Coalesce what is already queued, control first, into one write.
        while wire.len() < 256 * 1024 {
            match control.try_recv().or_else(|_| app.try_recv()) {
                Ok(m) => {
                    sealer.seal_message(&m, &mut wire);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = out.write_all(&wire).await {
            record(&close_tx, CloseReason::Io(e.to_string()));
            return;
        }
        stats
            .bytes_out
            .fetch_add(wire.len() as u64, Ordering::Relaxed);
        stats.messages_out.fetch_add(count, Ordering::Relaxed);
    }
    // Closing: flush queued control messages, then say Disconnect unless the peer did.
    let reason = close_tx.borrow().clone();
    wire.clear();
    while let Ok(m) = control.try_recv() {
        sealer.seal_message(&m, &mut wire);
    }
    if matches!(reason, Some(CloseReason::Local(_))) {
        sealer.seal_message(&P2pMessage::<M>::Disconnect.to_bytes(), &mut wire);
    }
    if !wire.is_empty() && out.write_all(&wire).await.is_ok() {
        stats
            .bytes_out
            .fetch_add(wire.len() as u64, Ordering::Relaxed);
    }
    let _ = out.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn reader_task<M: AppMessage, R: AsyncRead + Unpin>(
    input: R,
    mut opener: ChunkOpener,
    mut decoder: MessageDecoder,
    app: mpsc::Sender<M>,
    notices: mpsc::Sender<ConnectionNotice>,
    mut close_rx: watch::Receiver<Option<CloseReason>>,
    close_tx: Arc<watch::Sender<Option<CloseReason>>>,
    stats: Arc<ConnectionStats>,
    info: Arc<ConnectionInfo>,
) {
    // No read buffer of our own: the stream is the I/O scheduler's, which already reads
    // the socket in large pieces into its queue; a buffer here would only add a copy.
    let mut input = input;
    let reason = tokio::select! {
        r = read_loop(&mut input, &mut opener, &mut decoder, &app, &notices, &stats, &info) => r,
        _ = close_rx.wait_for(|r| r.is_some()) => None,
    };
    if let Some(reason) = reason {
        record(&close_tx, reason);
    }
    let reason = close_tx
        .borrow()
        .clone()
        .unwrap_or(CloseReason::Local("closed"));
    let _ = notices
        .send(ConnectionNotice::Closed {
            id: info.id,
            peer_id: info.peer_id,
            reason,
        })
        .await;
}

/// Reads until an error or Disconnect; returns why it stopped.
async fn read_loop<M: AppMessage, R: AsyncRead + Unpin>(
    input: &mut R,
    opener: &mut ChunkOpener,
    decoder: &mut MessageDecoder,
    app: &mpsc::Sender<M>,
    notices: &mpsc::Sender<ConnectionNotice>,
    stats: &ConnectionStats,
    info: &ConnectionInfo,
) -> Option<CloseReason> {
    let mut chunk = vec![0u8; 0];
    loop {
        let mut header = [0u8; 2];
        match input.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Some(CloseReason::Eof)
            }
            Err(e) => return Some(CloseReason::Io(e.to_string())),
        }
        let len = match ChunkOpener::chunk_len(header) {
            Ok(len) => len,
            Err(e) => return Some(CloseReason::Protocol(e)),
        };
        chunk.resize(len, 0);
        match input.read_exact(&mut chunk).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Some(CloseReason::Eof)
            }
            Err(e) => return Some(CloseReason::Io(e.to_string())),
        }
        stats.bytes_in.fetch_add(2 + len as u64, Ordering::Relaxed);
        match opener.open(&mut chunk) {
            Ok(plain) => decoder.push(plain),
            Err(e) => return Some(CloseReason::Protocol(e)),
        }
        loop {
            let body = match decoder.next_message() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => return Some(CloseReason::Protocol(e)),
            };
            let message = match P2pMessage::<M>::decode_body(body) {
                Ok(m) => m,
                Err(e) => return Some(CloseReason::Protocol(e.into())),
            };
            stats.messages_in.fetch_add(1, Ordering::Relaxed);
            let control = match message {
                P2pMessage::Message(m) => {
                    // Waits while the application's queue is full: backpressure.
                    if app.send(m).await.is_err() {
                        return Some(CloseReason::Local("application queue dropped"));
                    }
                    continue;
                }
                P2pMessage::Disconnect => return Some(CloseReason::RemoteDisconnect),
                P2pMessage::Bootstrap => ControlMessage::Bootstrap,
                P2pMessage::Advertise(p) => ControlMessage::Advertise(p),
                P2pMessage::SwapRequest(p, id) => ControlMessage::SwapRequest(p, id),
                P2pMessage::SwapAck(p, id) => ControlMessage::SwapAck(p, id),
            };
            let notice = ConnectionNotice::Control {
                id: info.id,
                peer_id: info.peer_id,
                message: control,
            };
            if notices.send(notice).await.is_err() {
                return Some(CloseReason::Local("node stopped"));
            }
        }
    }
}
