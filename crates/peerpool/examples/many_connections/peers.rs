//! The peers' side, run in a child process (`--peers-child`): `count` light peers, each
//! one TCP stream from its own 127.1.x.y address that runs the real handshake
//! (`peerpool::socket`) to the node, then only reads: it opens the node's chunks
//! (`peerpool_proto::framing`) and counts the broadcast messages it decrypts.
//!
//! It talks to the parent through its standard streams, one line each:
//! - out `ready`: identities made; in `go`: start connecting;
//! - out `established K` (progress, and at the end), `failed I REASON`, then
//!   `done ESTABLISHED FAILED RETRIES` once every peer has an outcome;
//! - out `received M` each time every established peer has one more broadcast message
//!   (M counts messages over all peers);
//! - in `ping`: every established peer sends the node one application message (a body
//!   of `body_len` bytes);
//! - out `closed K` when the node closes connections;
//! - in: end of input (or `quit`): exit.

use peerpool::socket::{self, Established, SocketError};
use peerpool_proto::connection_message::{ConnectionMetadata, SupportedVersions};
use peerpool_proto::framing::{ChunkOpener, ChunkSealer, MessageDecoder, MAX_CHUNK_PAYLOAD};
use peerpool_proto::handshake::{Direction, HandshakeConfig};
use peerpool_proto::identity::{Identity, PowTarget};
use peerpool_proto::message::{P2pMessage, RawMessage};
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Largest peer index: the last byte pair of 127.1.x.y gives 256 × 250 addresses.
pub const MAX_PEERS: usize = 256 * 250;
/// Attempts per peer before it gives up.
const ATTEMPTS: u32 = 5;
/// One attempt: TCP connect and the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// What one child is asked to do.
#[derive(Debug, Clone)]
pub struct ChildOptions {
    /// The node's listening address.
    pub node: SocketAddr,
    /// Index of the first peer (its source address), over all children.
    pub first: usize,
    /// Peers in this child.
    pub count: usize,
    /// Handshakes in flight at once in this child.
    pub in_flight: usize,
    /// The node's chain name.
    pub chain: String,
    /// Worker threads of the child's runtime (1: a current-thread runtime).
    pub threads: usize,
    /// Body length of the broadcast message the peers count, bytes.
    pub body_len: usize,
}

/// The loopback source address of peer `index` (127.1.x.y, y in 1..=250).
pub fn source_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (index / 250) as u8, (1 + index % 250) as u8)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Counters of the child, and the lines they trigger.
struct Report {
    count: usize,
    step: usize,
    established: AtomicUsize,
    failed: AtomicUsize,
    finished: AtomicUsize,
    retries: AtomicUsize,
    received: AtomicU64,
    closed: AtomicUsize,
}

impl Report {
    fn outcome(&self, ok: bool) {
        if ok {
            let e = self.established.fetch_add(1, Ordering::AcqRel) + 1;
            if e % self.step == 0 || e == self.count {
                say(&format!("established {e}"));
            }
        } else {
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
        // Exactly one task, the last to finish, sees every outcome counted.
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.count {
            let e = self.established.load(Ordering::Acquire);
            let f = self.failed.load(Ordering::Acquire);
            let retries = self.retries.load(Ordering::Acquire);
            say(&format!("done {e} {f} {retries}"));
        }
    }

    fn received(&self) {
        let m = self.received.fetch_add(1, Ordering::AcqRel) + 1;
        let live = self.established.load(Ordering::Acquire) as u64;
        if live > 0 && m % live == 0 {
            say(&format!("received {m}"));
        }
    }

    fn closed(&self) {
        let k = self.closed.fetch_add(1, Ordering::AcqRel) + 1;
        if k == 1 || k % self.step == 0 || k == self.count {
            say(&format!("closed {k}"));
        }
    }
}

/// Runs the child until its standard input ends.
///
/// Errors: the runtime cannot start, the identity target is refused, or stdin fails.
pub fn run(o: ChildOptions) -> Result<(), Box<dyn Error>> {
    let rt = if o.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.threads)
            .enable_all()
            .build()?
    };
    let result = rt.block_on(child(o));
    // The peers' tasks end with the runtime; do not wait for them.
    rt.shutdown_background();
    result
}

async fn child(o: ChildOptions) -> Result<(), Box<dyn Error>> {
    let target = PowTarget::new(0.0)?;
    let mut rng = rand::rng();
    let identities: Vec<Arc<Identity>> = (0..o.count)
        .map(|_| Arc::new(Identity::generate(&target, &mut rng)))
        .collect();
    say("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match stdin.next_line().await? {
            Some(l) if l.trim() == "go" => break,
            Some(_) => {}
            None => return Ok(()),
        }
    }
    let report = Arc::new(Report {
        count: o.count,
        step: (o.count / 20).max(1),
        established: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
        received: AtomicU64::new(0),
        closed: AtomicUsize::new(0),
    });
    let permits = Arc::new(Semaphore::new(o.in_flight.max(1)));
    let (ping_tx, ping_rx) = watch::channel(0u64);
    let versions = SupportedVersions::octez(o.chain.clone());
    let dialing = {
        let o = o.clone();
        tokio::spawn(async move {
            for (i, identity) in identities.into_iter().enumerate() {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let config = HandshakeConfig {
                    identity,
                    versions: versions.clone(),
                    listening_port: None,
                    metadata: ConnectionMetadata::default(),
                    pow_target: target,
                    chunk_payload_size: MAX_CHUNK_PAYLOAD,
                };
                tokio::spawn(peer(
                    o.first + i,
                    config,
                    o.node,
                    permit,
                    report.clone(),
                    o.body_len,
                    ping_rx.clone(),
                ));
            }
        })
    };
    while let Some(l) = stdin.next_line().await? {
        match l.trim() {
            "quit" => break,
            "ping" => ping_tx.send_modify(|n| *n += 1),
            _ => {}
        }
    }
    dialing.abort();
    Ok(())
}

/// One peer: handshake (with retries), then read until the node closes, and send one
/// message at each ping.
async fn peer(
    index: usize,
    config: HandshakeConfig,
    node: SocketAddr,
    permit: OwnedSemaphorePermit,
    report: Arc<Report>,
    body_len: usize,
    ping: watch::Receiver<u64>,
) {
    let mut attempt = 1;
    let established = loop {
        match handshake(index, config.clone(), node).await {
            Ok(e) => break e,
            Err(e) if attempt < ATTEMPTS => {
                report.retries.fetch_add(1, Ordering::AcqRel);
                // A refused peer backs off before it dials again, as a real one would.
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                attempt += 1;
                if attempt == ATTEMPTS {
                    eprintln!("peer {index}: {e}; last attempt");
                }
            }
            Err(e) => {
                say(&format!("failed {index} {e}"));
                drop(permit);
                report.outcome(false);
                return;
            }
        }
    };
    drop(permit);
    report.outcome(true);
    let Established {
        stream, session, ..
    } = established;
    let (read, write) = stream.into_split();
    let input = std::io::Cursor::new(session.leftover).chain(read);
    tokio::select! {
        _ = receive(input, session.opener, &report, body_len) => {}
        _ = send_on_ping(write, session.sealer, ping, body_len) => {}
    }
    report.closed();
}

/// Sends one application message of `body_len` bytes each time `ping` changes.
async fn send_on_ping(
    mut out: tokio::net::tcp::OwnedWriteHalf,
    mut sealer: ChunkSealer,
    mut ping: watch::Receiver<u64>,
    body_len: usize,
) {
    let envelope = P2pMessage::Message(RawMessage {
        tag: 0x1000,
        body: vec![0xCD; body_len],
    })
    .to_bytes();
    let mut wire = Vec::new();
    while ping.changed().await.is_ok() {
        wire.clear();
        sealer.seal_message(&envelope, &mut wire);
        if out.write_all(&wire).await.is_err() {
            return;
        }
    }
    // The child is ending: keep the stream open for the reader until then.
    std::future::pending::<()>().await;
}

/// TCP connect from the peer's own address, then the handshake as the dialer.
async fn handshake(
    index: usize,
    config: HandshakeConfig,
    node: SocketAddr,
) -> Result<Established<TcpStream>, Box<dyn Error + Send + Sync>> {
    let versions = config.versions.clone();
    let run = async move {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source_ip(index).into(), 0))?;
        let stream = socket.connect(node).await?;
        stream.set_nodelay(true)?;
        let nonce: [u8; 24] = rand::random();
        let auth = socket::authenticate(stream, config, Direction::Outgoing, nonce).await?;
        let version = versions
            .select(&auth.connection_message.version)
            .map_err(|motive| format!("no common version: {motive}"))?;
        let established: Established<TcpStream> = auth.accept(version).await?;
        Ok::<_, Box<dyn Error + Send + Sync>>(established)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(Box::new(SocketError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        )))),
    }
}

/// Reads the node's chunks until the stream ends or a Disconnect; counts the application
/// messages of `body_len` bytes.
async fn receive(
    mut input: impl tokio::io::AsyncRead + Unpin,
    mut opener: ChunkOpener,
    report: &Report,
    body_len: usize,
) {
    let mut decoder = MessageDecoder::new(P2pMessage::<RawMessage>::max_len());
    let mut chunk = Vec::new();
    loop {
        let mut header = [0u8; 2];
        if input.read_exact(&mut header).await.is_err() {
            return;
        }
        let Ok(len) = ChunkOpener::chunk_len(header) else {
            return;
        };
        chunk.resize(len, 0);
        if input.read_exact(&mut chunk).await.is_err() {
            return;
        }
        let Ok(plain) = opener.open(&mut chunk) else {
            return;
        };
        decoder.push(plain);
        while let Ok(Some(body)) = decoder.next_message() {
            match P2pMessage::<RawMessage>::decode_body(body) {
                Ok(P2pMessage::Message(m)) if m.body.len() == body_len => report.received(),
                Ok(P2pMessage::Disconnect) => return,
                _ => {}
            }
        }
    }
}
