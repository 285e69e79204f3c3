//! The node-wide buffer budget under load: sixteen raw clients push large messages at a
//! node whose application does not read. The node buffers no more than the message share
//! of its budget, the clients are pushed back, and once the application reads, every
//! message arrives intact and in order.
//!
//! In memory, with tokio's clock paused, over pipes of 16 KiB (a transport of this test's
//! own: the in-memory network's 256 KiB streams would need far more bytes, all sealed and
//! opened by unoptimised crypto, before every client felt the pushback). The sizes are a
//! quarter of a production-like setting (budget 4 MiB, messages up to 512 KiB, 400 KiB
//! sent) for the same reason; the ratios are the same.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peerpool::config::split_budget;
use peerpool::socket;
use peerpool::transport::{Listener, Transport, TransportStream};
use peerpool::{Node, NodeEvent};
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::{P2pMessage, RawMessage};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

const KIB: usize = 1024;
const BUDGET: usize = 4096 * KIB;
const MAX_MESSAGE: usize = 512 * KIB;
const CLIENTS: usize = 16;
const MESSAGES: usize = 2;
const BODY: usize = 400 * KIB;
/// What the node reserves for one message: length prefix, tag, body.
const RESERVED: usize = 4 + 2 + BODY;
/// Bytes each pipe holds in each direction.
const PIPE: usize = 16 * KIB;
/// Plaintext bytes per chunk the clients send.
const CHUNK: usize = 4 * KIB;
/// Virtual time (the clock is paused): it passes only while every task waits.
const QUIET: Duration = Duration::from_secs(30);
/// Safety net, virtual time.
const LIMIT: Duration = Duration::from_secs(600);

/// The body of message `seq` of client `client`: both numbers, then bytes that depend on
/// both, so a mixed-up or damaged message cannot pass for the right one.
fn body(client: usize, seq: usize) -> Vec<u8> {
    let mut state = ((client as u64) << 32) | seq as u64 | 1;
    let mut body = Vec::with_capacity(BODY);
    body.extend_from_slice(&(client as u32).to_be_bytes());
    body.extend_from_slice(&(seq as u32).to_be_bytes());
    while body.len() < BODY {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        body.extend_from_slice(&state.to_le_bytes());
    }
    body.truncate(BODY);
    body
}

fn message(client: usize, seq: usize) -> RawMessage {
    RawMessage {
        tag: 0x100,
        body: body(client, seq),
    }
}

/// One end of a pipe of [`Pipes`].
#[derive(Debug)]
struct PipeEnd {
    inner: DuplexStream,
    local: SocketAddr,
    peer: SocketAddr,
}

impl AsyncRead for PipeEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl TransportStream for PipeEnd {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// A pipe's node end and where it comes from, on its way to the listener.
type Incoming = (PipeEnd, SocketAddr);

/// A transport for one listening node: the test dials it with [`Pipes::dial`]; the node
/// itself never dials.
#[derive(Debug, Clone)]
struct Pipes {
    incoming: mpsc::UnboundedSender<Incoming>,
    accept: Arc<Mutex<Option<mpsc::UnboundedReceiver<Incoming>>>>,
    addr: SocketAddr,
}

#[derive(Debug)]
struct PipeListener {
    incoming: mpsc::UnboundedReceiver<Incoming>,
    addr: SocketAddr,
}

impl Pipes {
    fn new() -> Self {
        let (incoming, accept) = mpsc::unbounded_channel();
        Pipes {
            incoming,
            accept: Arc::new(Mutex::new(Some(accept))),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9732)),
        }
    }

    /// A new pipe to the node, from `from`; the test's end.
    fn dial(&self, from: SocketAddr) -> PipeEnd {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let server = PipeEnd {
            inner: theirs,
            local: self.addr,
            peer: from,
        };
        self.incoming.send((server, from)).unwrap();
        PipeEnd {
            inner: ours,
            local: from,
            peer: self.addr,
        }
    }
}

impl Listener for PipeListener {
    type Stream = PipeEnd;

    async fn accept(&mut self) -> io::Result<(PipeEnd, SocketAddr)> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Transport for Pipes {
    type Stream = PipeEnd;
    type Listener = PipeListener;

    async fn bind(&self, _addr: SocketAddr, _backlog: u32) -> io::Result<PipeListener> {
        let incoming = self
            .accept
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| io::Error::from(io::ErrorKind::AddrInUse))?;
        Ok(PipeListener {
            incoming,
            addr: self.addr,
        })
    }

    async fn connect(
        &self,
        _local: Option<std::net::IpAddr>,
        _remote: SocketAddr,
    ) -> io::Result<PipeEnd> {
        Err(io::Error::from(io::ErrorKind::ConnectionRefused))
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_buffers_at_most_its_budget_and_pushes_back_on_its_peers() {
    let pipes = Pipes::new();
    let mut c = config(1, "127.0.0.1");
    c.buffer_budget_bytes = BUDGET;
    c.queues.max_message_bytes = MAX_MESSAGE;
    let share = split_budget(BUDGET).1;
    assert_eq!(share, 3072 * KIB);
    // Seven messages fit in the share, not eight.
    assert!((7 * RESERVED..8 * RESERVED).contains(&share));
    let node = Node::<RawMessage>::builder(c.validate().unwrap())
        .transport(pipes.clone())
        .start()
        .await
        .unwrap();
    node.activate().await;
    let node = TestNode {
        addr: node.local_addr().unwrap(),
        handle: node,
    };
    let mut events = node.handle.events();

    // Sixteen raw clients with real sessions, from addresses of their own.
    let mut sessions = Vec::new();
    let mut ids = HashSet::new();
    for client in 0..CLIENTS {
        // Each from a netgroup of its own: one /16 takes at most its share of incoming
        // connections (the connection manager's cap).
        let from = SocketAddr::from((Ipv4Addr::new(10, client as u8 + 1, 0, 1), 40_000));
        let stream = pipes.dial(from);
        let identity = identity(100 + client as u64);
        ids.insert(identity.peer_id);
        let mut cfg = client_config(identity);
        cfg.chunk_payload_size = CHUNK;
        let auth = socket::authenticate(stream, cfg, Direction::Outgoing, [client as u8; 24])
            .await
            .unwrap();
        let version = auth.connection_message.version.clone();
        sessions.push(auth.accept(version).await.unwrap());
    }
    let mut established = HashSet::new();
    while established.len() < CLIENTS {
        let peer = wait_for_within(&mut events, LIMIT, |e| match e {
            NodeEvent::ConnectionEstablished { peer_id, .. } => Some(*peer_id),
            _ => None,
        })
        .await;
        assert!(ids.contains(&peer));
        established.insert(peer);
    }

    // Each client writes its messages as fast as the node takes them, counting the
    // writes that completed.
    let written: Arc<Vec<AtomicUsize>> = Arc::new((0..CLIENTS).map(|_| 0.into()).collect());
    let mut writers = Vec::new();
    for (client, mut est) in sessions.into_iter().enumerate() {
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let mut wire = Vec::new();
            for seq in 0..MESSAGES {
                wire.clear();
                let envelope = P2pMessage::Message(message(client, seq)).to_bytes();
                est.session.sealer.seal_message(&envelope, &mut wire);
                est.stream.write_all(&wire).await.unwrap();
                written[client].fetch_add(1, Ordering::SeqCst);
            }
            // Kept open: the node reads the last message before it sees an end.
            est
        }));
    }

    // The application does not read. The clock being paused, this wait ends only once
    // every task is waiting: the clients cannot finish, and the node stops taking bytes.
    let all = futures_util::future::join_all(writers.iter_mut());
    assert!(
        tokio::time::timeout(QUIET, all).await.is_err(),
        "every client finished writing to a node that does not read"
    );
    let buffered = node.handle.buffered_bytes();
    assert!(
        buffered <= share,
        "{buffered} bytes buffered, share {share}"
    );
    // It is the budget that stops them: not one more message would fit.
    assert!(
        buffered + RESERVED > share,
        "only {buffered} bytes buffered of {share}: something else stops the clients"
    );
    let done: Vec<usize> = written.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    assert!(
        done.iter().all(|&n| n < MESSAGES),
        "a client wrote all its messages: {done:?}"
    );
    // What the clients could hand over: the node's budget (both shares), plus what each
    // pipe holds, plus the chunk each reader opens before it asks for a reservation.
    let handed: usize = done.iter().sum::<usize>() * RESERVED;
    let bound = BUDGET + CLIENTS * (PIPE + CHUNK);
    assert!(handed <= bound, "{handed} bytes written, bound {bound}");
    assert!(writers.iter().all(|w| !w.is_finished()));

    // The application reads: every message of every client, intact, in order.
    let mut next: BTreeMap<PeerId, usize> = BTreeMap::new();
    let mut clients: BTreeMap<PeerId, usize> = BTreeMap::new();
    for _ in 0..CLIENTS * MESSAGES {
        let r = tokio::time::timeout(LIMIT, node.handle.recv_any())
            .await
            .expect("a message did not come")
            .expect("the node stopped");
        let buffered = node.handle.buffered_bytes();
        assert!(
            buffered <= share,
            "{buffered} bytes buffered, share {share}"
        );
        assert!(ids.contains(&r.peer_id));
        let client = u32::from_be_bytes(r.message.body[..4].try_into().unwrap()) as usize;
        // One client per connection.
        assert_eq!(*clients.entry(r.peer_id).or_insert(client), client);
        let seq = next.entry(r.peer_id).or_insert(0);
        assert!(
            r.message == message(client, *seq),
            "client {client}: message {} is not the expected one",
            *seq
        );
        *seq += 1;
    }
    assert_eq!(next.len(), CLIENTS);
    assert!(next.values().all(|&n| n == MESSAGES), "{next:?}");
    for w in writers {
        tokio::time::timeout(LIMIT, w).await.unwrap().unwrap();
    }
    assert!(written.iter().all(|n| n.load(Ordering::SeqCst) == MESSAGES));
    assert_eq!(node.handle.buffered_bytes(), 0);
    node.handle.shutdown().await;
}
