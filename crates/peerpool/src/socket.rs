//! The handshake and encrypted framing over any byte stream (WIRE.md §2–6): drives the
//! pure [`Handshake`] machine with real reads and writes.
//!
//! [`authenticate`] runs up to the decision step and returns an [`Authenticated`] value;
//! the caller then [`Authenticated::accept`]s or [`Authenticated::reject`]s. Timeouts are
//! the caller's (`tokio::time::timeout`), so the whole exchange can be bounded.

use peerpool_proto::connection_message::{
    ConnectionMessage, ConnectionMetadata, NackMotive, NetworkVersion,
};
use peerpool_proto::handshake::{
    Direction, Handshake, HandshakeConfig, HandshakeError, HandshakeEvent, Session,
};
use peerpool_proto::identity::PeerId;
use peerpool_proto::point::Point;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why a handshake over a socket failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The peer closed the connection, or a read or write failed.
    #[error("i/o error: {0}")]
    Io(std::sync::Arc<std::io::Error>),
    /// The peer closed the connection before the handshake ended.
    #[error("connection closed by the peer during the handshake")]
    ClosedDuringHandshake,
    /// The handshake protocol failed (bad PoW, bad MAC, Nack, ourselves …).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

impl From<std::io::Error> for SocketError {
    fn from(e: std::io::Error) -> Self {
        SocketError::Io(std::sync::Arc::new(e))
    }
}

impl SocketError {
    /// Whether the peer's address should be greylisted (BEHAVIOUR.md §1.2).
    pub fn greylists_peer_address(&self) -> bool {
        matches!(self, SocketError::Handshake(e) if e.greylists_peer_address())
    }
}

/// When each handshake step completed, measured from the start of [`authenticate`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HandshakeTimings {
    /// The peer's connection message was read and its PoW checked.
    pub connection_message: Option<Duration>,
    /// The peer's metadata was read (authenticated).
    pub metadata: Option<Duration>,
    /// The peer's Ack (or Nack) was read.
    pub ack: Option<Duration>,
}

/// A peer that proved its key and sent its metadata, waiting for our decision.
#[derive(Debug)]
pub struct Authenticated<S> {
    stream: S,
    handshake: Handshake,
    started: Instant,
    /// The step timings so far.
    pub timings: HandshakeTimings,
    /// The peer's id.
    pub peer_id: PeerId,
    /// The peer's connection message.
    pub connection_message: ConnectionMessage,
    /// The peer's metadata.
    pub metadata: ConnectionMetadata,
}

/// An established connection: the stream and the session keys.
#[derive(Debug)]
pub struct Established<S> {
    /// The byte stream.
    pub stream: S,
    /// Keys, nonces, the peer's details, and bytes already read past the Ack.
    pub session: Session,
    /// Step timings.
    pub timings: HandshakeTimings,
}

async fn flush_transmit<S: AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut Handshake,
) -> Result<(), SocketError> {
    while let Some(bytes) = hs.poll_transmit() {
        stream.write_all(&bytes).await?;
    }
    stream.flush().await?;
    Ok(())
}

async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    hs: &mut Handshake,
    buf: &mut [u8],
) -> Result<(), SocketError> {
    let n = stream.read(buf).await?;
    if n == 0 {
        return Err(SocketError::ClosedDuringHandshake);
    }
    hs.handle_input(&buf[..n])?;
    Ok(())
}

/// Runs the handshake until the peer is authenticated: sends our connection message,
/// reads the peer's, checks its PoW, exchanges metadata, refuses ourselves.
pub async fn authenticate<S>(
    mut stream: S,
    config: HandshakeConfig,
    direction: Direction,
    message_nonce: [u8; 24],
) -> Result<Authenticated<S>, SocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut hs = Handshake::new(config, direction, message_nonce)?;
    let mut timings = HandshakeTimings::default();
    let mut buf = vec![0u8; 4096];
    loop {
        flush_transmit(&mut stream, &mut hs).await?;
        if let Some(event) = hs.poll_event() {
            if let HandshakeEvent::Authenticated {
                peer_id,
                connection_message,
                metadata,
            } = event
            {
                timings.metadata = Some(started.elapsed());
                return Ok(Authenticated {
                    stream,
                    handshake: hs,
                    started,
                    timings,
                    peer_id,
                    connection_message,
                    metadata,
                });
            }
            continue;
        }
        read_some(&mut stream, &mut hs, &mut buf).await?;
        if timings.connection_message.is_none() && hs.remote_peer_id().is_some() {
            timings.connection_message = Some(started.elapsed());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Authenticated<S> {
    /// The peer's announced listening point (its address with the announced port), if any.
    pub fn listening_point(&self, peer_addr: std::net::SocketAddr) -> Option<Point> {
        self.connection_message
            .port
            .map(|port| Point::new(peer_addr.ip(), port))
    }

    /// Sends our Ack and waits for the peer's. Errors with
    /// [`HandshakeError::RejectedByNack`] (and its referral points) if the peer refuses.
    pub async fn accept(mut self, version: NetworkVersion) -> Result<Established<S>, SocketError> {
        self.handshake.accept(version)?;
        let mut buf = vec![0u8; 4096];
        loop {
            flush_transmit(&mut self.stream, &mut self.handshake).await?;
            if let Some(HandshakeEvent::Established) = self.handshake.poll_event() {
                self.timings.ack = Some(self.started.elapsed());
                let session = self.handshake.into_session()?;
                return Ok(Established {
                    stream: self.stream,
                    session,
                    timings: self.timings,
                });
            }
            if let Err(e) = read_some(&mut self.stream, &mut self.handshake, &mut buf).await {
                self.timings.ack = Some(self.started.elapsed());
                return Err(e);
            }
        }
    }

    /// Sends a Nack (form chosen from the peer's announced p2p version) and closes.
    pub async fn reject(
        mut self,
        motive: NackMotive,
        points: Vec<Point>,
    ) -> Result<(), SocketError> {
        self.handshake.reject(motive, points)?;
        flush_transmit(&mut self.stream, &mut self.handshake).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// The stream, for callers that close it without answering (bans, private mode).
    pub fn into_stream(self) -> S {
        self.stream
    }
}

/// Bytes a [`Counted`] stream has moved, readable once the stream is gone (an attempt
/// that fails drops its stream with its error).
#[derive(Debug, Default)]
pub(crate) struct Moved {
    pub(crate) read: std::sync::atomic::AtomicU64,
    pub(crate) written: std::sync::atomic::AtomicU64,
}

impl Moved {
    /// `(written, read)` so far.
    pub(crate) fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.written.load(Relaxed), self.read.load(Relaxed))
    }
}

/// A byte stream that counts the bytes read from it and written to it (the handshake's,
/// which runs before the stream is handed to the I/O scheduler; see
/// `ScheduledConnection::record_moved` and `IoScheduler::record_unattached`).
#[derive(Debug)]
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    moved: std::sync::Arc<Moved>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, moved: std::sync::Arc<Moved>) -> Self {
        Counted { inner, moved }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.moved
            .read
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.moved
                .written
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
