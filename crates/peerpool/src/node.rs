//! The node: the pool's owner task, the welcome worker (accept loop), the dialer, the
//! handshake and admission of connections, control messages (Bootstrap → Advertise), the
//! peers file, and events.
//!
//! One owner task holds all node state: the pool (points and peers with their state
//! machines, ACL, GC: [`peerpool_proto::pool`]), the established connections, and the
//! connection attempts in flight. Every other task talks to it through [`NodeHandle`] over a
//! bounded channel (ARCHITECTURE.md "Contracts").
//!
//! Connection attempts, both directions (BEHAVIOUR.md §1.2-1.4):
//! 1. outgoing: the point is registered, checked (`check_dial`: not ours, not banned,
//!    trusted in private mode) and set Requested; incoming: the address is checked against
//!    the ACL before any byte is read, and at most `max_incoming_handshakes` run at once;
//! 2. the handshake runs under its timeout; a failure that shows garbage or malice
//!    greylists the address;
//! 3. admission: version selection, then the pool's `check_connection` (expected peer id,
//!    bans, private mode, already connected), then the slot check; refusals with a motive
//!    are answered with a Nack carrying up to 50 known points;
//! 4. point and peer go Accepted, the Ack exchange runs, then Running; every later failure
//!    or disconnection sets them back to Disconnected, with the point's backoff.
//!
//! When two nodes dial each other at once, the connection dialed by the smaller peer id
//! wins on both sides; a duplicate that still completes is closed.
//!
//! While fewer than `min_connections` are running, the node dials the pool's candidates
//! (known points past their backoff); trusted points (`--peer`) are redialed whenever they
//! are not connected. The full maintenance worker comes in its own module.

use crate::connection::{
    self, CloseReason, ConnectionHandle, ConnectionInfo, ConnectionNotice, ControlMessage,
    QueueConfig,
};
use crate::io_scheduler::{IoScheduler, IoSchedulerConfig, IoSchedulerError, Stat};
use crate::peers_file;
use crate::scheduled_stream::ScheduledStream;
use crate::socket::{self, SocketError};
use peerpool_proto::connection_message::{ConnectionMetadata, NackMotive, SupportedVersions};
use peerpool_proto::framing::MAX_CHUNK_PAYLOAD;
use peerpool_proto::handshake::{Direction, HandshakeConfig, HandshakeError};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use peerpool_proto::pool::{
    Failure, IdPoint, Medium, P2pEvent, PeerState, PointState, Pool, PoolConfig, PoolError, Time,
    Trigger,
};
use rand::{RngCore, SeedableRng};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Most points sent in one Advertise or Nack (octez sends up to 50).
pub const ADVERTISE_POINTS: usize = 50;

/// Peer metadata kept by the node's pool: opaque JSON, so an octez peers file (whose
/// metadata is the shell's) loads and saves unchanged.
pub type NodePeerMeta = serde_json::Value;

/// The node's pool.
pub type NodePool = Pool<NodePeerMeta>;

/// Node settings. Defaults follow octez (WIRE.md §9, BEHAVIOUR.md §9).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Our identity.
    pub identity: Arc<Identity>,
    /// Where to listen; `None` for a node that only dials.
    pub listen_addr: Option<SocketAddr>,
    /// Chain name and supported versions (default `TEZOS_MAINNET`, ddb {0,1,2}, p2p {0,1}).
    pub versions: SupportedVersions,
    /// Proof of work demanded from peers (default difficulty 26).
    pub pow_target: PowTarget,
    /// Our connection metadata.
    pub metadata: ConnectionMetadata,
    /// Outgoing: TCP connect plus the whole handshake (default 10 s).
    pub connection_timeout: Duration,
    /// Incoming: the whole handshake (default 5 s).
    pub authentication_timeout: Duration,
    /// Incoming handshakes in progress at once; more are closed at accept (default 20).
    pub max_incoming_handshakes: usize,
    /// Plaintext bytes per chunk (default 65517).
    pub chunk_payload_size: usize,
    /// Per-connection queue sizes.
    pub queues: QueueConfig,
    /// Send Bootstrap to each new peer, to learn points (default true).
    pub bootstrap_on_connect: bool,
    /// The pool: known points and peers bounds, backoff, ACL sizes, private mode,
    /// `min_connections` (the node dials known points while fewer run, default 10) and
    /// `max_connections` (the slot check, default 100).
    pub pool: PoolConfig,
    /// Where `peers.json` lives (loaded at start, saved every `peers_file_interval` and at
    /// shutdown); `None` keeps the pool in memory only.
    pub data_dir: Option<PathBuf>,
    /// How often the peers file is saved (default 5 min).
    pub peers_file_interval: Duration,
    /// The I/O scheduler every connection's bytes go through: global upload and download
    /// caps (bytes per second), read size, queue bounds (BEHAVIOUR.md §6).
    pub io_scheduler: IoSchedulerConfig,
    /// How long closing a connection may wait for its queued bytes to go out (default 3 s).
    pub close_timeout: Duration,
    /// Seed of the node's decisions (point sampling, hash keys); `None` draws one.
    pub seed: Option<u64>,
    /// Events buffered for each subscriber (default 1024); a subscriber further behind
    /// loses the oldest and is told how many.
    pub event_capacity: usize,
}

impl NodeConfig {
    /// Defaults for `identity` on `chain_name`.
    pub fn new(identity: Arc<Identity>, chain_name: &str) -> Self {
        NodeConfig {
            identity,
            listen_addr: None,
            versions: SupportedVersions::octez(chain_name),
            // invariant: 26 is within [0, 256].
            pow_target: PowTarget::new(26.0).unwrap_or_else(|_| unreachable!()),
            metadata: ConnectionMetadata::default(),
            connection_timeout: Duration::from_secs(10),
            authentication_timeout: Duration::from_secs(5),
            max_incoming_handshakes: 20,
            chunk_payload_size: MAX_CHUNK_PAYLOAD,
            queues: QueueConfig::default(),
            bootstrap_on_connect: true,
            pool: PoolConfig::default(),
            data_dir: None,
            peers_file_interval: Duration::from_secs(300),
            io_scheduler: IoSchedulerConfig::default(),
            close_timeout: Duration::from_secs(3),
            seed: None,
            event_capacity: 1024,
        }
    }

    /// `<data_dir>/peers.json`, when there is a data directory.
    pub fn peers_file(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join("peers.json"))
    }
}

/// Why a connection attempt failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable …).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The I/O scheduler refused the connection (it is shutting down).
    #[error("i/o scheduler: {0}")]
    Scheduler(IoSchedulerError),
    /// The whole attempt took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] SocketError),
    /// The pool refused the point or the peer (ours, banned, private mode, unexpected peer
    /// id, already connected or pending).
    #[error("refused by the pool: {0}")]
    Pool(PoolError),
    /// We refused the peer with this Nack motive.
    #[error("we rejected the peer: {0}")]
    RejectedByUs(NackMotive),
    /// The node is shutting down.
    #[error("node stopped")]
    NodeStopped,
}

impl ConnectError {
    /// The Nack motive and points, if the peer refused us.
    pub fn nack(&self) -> Option<(NackMotive, &[Point])> {
        match self {
            ConnectError::Handshake(SocketError::Handshake(HandshakeError::RejectedByNack {
                motive,
                points,
            })) => Some((*motive, points)),
            _ => None,
        }
    }

    /// Whether this is an expected outcome of two nodes dialing each other at once
    /// (`Already_connected` either way), logged at debug level only.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            ConnectError::RejectedByUs(NackMotive::AlreadyConnected)
                | ConnectError::Pool(PoolError::AlreadyConnected(_))
        ) || matches!(self.nack(), Some((NackMotive::AlreadyConnected, _)))
    }

    /// How the pool's ACL sees this failure (BEHAVIOUR.md §5), if it cares. An unexpected
    /// peer id at the handshake greylists nothing (BEHAVIOUR.md §1.2).
    fn acl_failure(&self) -> Option<Failure> {
        match self {
            ConnectError::Handshake(e) if e.greylists_peer_address() => {
                Some(Failure::HandshakeMisbehaviour)
            }
            _ => None,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The I/O scheduler configuration is invalid.
    #[error(transparent)]
    Scheduler(#[from] IoSchedulerError),
    /// The pool configuration is invalid.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What happens in the node, for subscribers (logs, sandbox, tests). Delivered through a
/// bounded channel: a subscriber that falls behind loses the oldest events and is told
/// how many (`RecvError::Lagged`); it never blocks the node.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A connection is established.
    ConnectionEstablished {
        /// The peer.
        peer_id: PeerId,
        /// Its socket address.
        remote_addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The peer.
        peer_id: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// A handshake (either direction) failed; the node goes on.
    HandshakeFailed {
        /// The remote address.
        remote_addr: SocketAddr,
        /// Who dialed.
        direction: Direction,
        /// Why.
        error: Arc<ConnectError>,
    },
    /// A peer sent Bootstrap; we answered with these points.
    BootstrapAnswered {
        /// The peer.
        peer_id: PeerId,
        /// What we advertised.
        points: Vec<Point>,
    },
    /// A peer advertised points.
    AdvertiseReceived {
        /// The peer.
        peer_id: PeerId,
        /// The points.
        points: Vec<Point>,
    },
    /// An event of the pool (BEHAVIOUR.md §11), in the pool's order.
    Pool(P2pEvent),
}

/// Totals of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Established connections now.
    pub connections: usize,
    /// Known points.
    pub known_points: usize,
    /// Known peer ids.
    pub known_peer_ids: usize,
    /// The I/O scheduler's totals and current flows over every connection, handshakes and
    /// closed connections included (bytes, bytes per second).
    pub io: Stat,
}

type PoolFn = Box<dyn FnOnce(&mut NodePool, Time) + Send>;

/// What the owner decided about an authenticated peer.
#[derive(Debug)]
enum Admission {
    /// Send Ack.
    Accept,
    /// Send a Nack with this motive and these points.
    Nack(NackMotive, Vec<Point>),
    /// Close without a word (bans, private mode, unexpected peer id).
    Close(PoolError),
}

enum Command<M> {
    Connect {
        point: Point,
        expected: Option<PeerId>,
        trusted: bool,
        reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
    },
    Incoming {
        remote_addr: SocketAddr,
        reply: oneshot::Sender<Option<u64>>,
    },
    Admit {
        attempt: u64,
        peer_id: PeerId,
        announced_port: Option<u16>,
        metadata: ConnectionMetadata,
        reply: oneshot::Sender<Admission>,
    },
    NackPoints {
        reply: oneshot::Sender<Vec<Point>>,
    },
    Established {
        attempt: u64,
        connection: ConnectionHandle<M>,
    },
    AttemptEnded {
        attempt: u64,
        result: Result<PeerId, ConnectError>,
    },
    Connections {
        reply: oneshot::Sender<Vec<ConnectionHandle<M>>>,
    },
    Stats {
        reply: oneshot::Sender<NodeStats>,
    },
    IoConnections {
        reply: oneshot::Sender<Vec<crate::io_scheduler::ConnectionInfo>>,
    },
    WithPool(PoolFn),
    GreylistPeer {
        peer_id: PeerId,
    },
    BanPeer {
        peer_id: PeerId,
    },
    BanPoint {
        point: Point,
    },
    Disconnect {
        peer_id: Option<PeerId>,
    },
    SavePeers {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable handle to a running node.
pub struct NodeHandle<M> {
    commands: mpsc::Sender<Command<M>>,
    events: broadcast::Sender<NodeEvent>,
    peer_id: PeerId,
}

impl<M> Clone for NodeHandle<M> {
    fn clone(&self) -> Self {
        NodeHandle {
            commands: self.commands.clone(),
            events: self.events.clone(),
            peer_id: self.peer_id,
        }
    }
}

impl<M> std::fmt::Debug for NodeHandle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl<M: AppMessage> NodeHandle<M> {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command<M>) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Dials `point` once and waits for the outcome: the peer's id once established.
    /// `expected` checks the peer's identity (`addr:port#peer_id`) and is recorded on the
    /// point (BEHAVIOUR.md §4.5).
    pub async fn connect(
        &self,
        point: Point,
        expected: Option<PeerId>,
    ) -> Result<PeerId, ConnectError> {
        self.ask(|reply| Command::Connect {
            point,
            expected,
            trusted: false,
            reply: Some(reply),
        })
        .await
        .unwrap_or(Err(ConnectError::NodeStopped))
    }

    /// Adds a trusted point (octez `--peer`): dialed now, and again with the point's backoff
    /// whenever it is not connected; it is never garbage-collected.
    pub async fn add_peer(&self, point: Point, expected: Option<PeerId>) {
        let _ = self
            .commands
            .send(Command::Connect {
                point,
                expected,
                trusted: true,
                reply: None,
            })
            .await;
    }

    /// The established connections.
    pub async fn connections(&self) -> Vec<ConnectionHandle<M>> {
        self.ask(|reply| Command::Connections { reply })
            .await
            .unwrap_or_default()
    }

    /// The points the pool knows, sorted.
    pub async fn known_points(&self) -> Vec<Point> {
        let mut points = self
            .with_pool(|pool, _| pool.points().map(|p| p.point()).collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        points.sort();
        points
    }

    /// Runs `f` on the pool inside the owner task, with the current time, and returns its
    /// result (`None` once the node has stopped). For queries and settings of the pool's
    /// API (point and peer info, state, trust, metadata …); bans and greylisting that
    /// must also close connections have their own methods below.
    pub async fn with_pool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodePool, Time) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let job: PoolFn = Box::new(move |pool, now| {
            let _ = tx.send(f(pool, now));
        });
        self.commands.send(Command::WithPool(job)).await.ok()?;
        rx.await.ok()
    }

    /// Greylists a peer (its id and its last known address) and closes its connection.
    pub async fn greylist_peer(&self, peer_id: PeerId) {
        let _ = self.commands.send(Command::GreylistPeer { peer_id }).await;
    }

    /// Blacklists a peer id and closes its connection.
    pub async fn ban_peer(&self, peer_id: PeerId) {
        let _ = self.commands.send(Command::BanPeer { peer_id }).await;
    }

    /// Blacklists a point's address and closes the connections from it.
    pub async fn ban_point(&self, point: Point) {
        let _ = self.commands.send(Command::BanPoint { point }).await;
    }

    /// Closes the connection with `peer_id` (a Disconnect is sent), if there is one.
    pub async fn disconnect(&self, peer_id: PeerId) {
        let _ = self
            .commands
            .send(Command::Disconnect {
                peer_id: Some(peer_id),
            })
            .await;
    }

    /// Closes every connection (octez `tear_down_connections`); the node keeps running and
    /// may dial again.
    pub async fn tear_down_connections(&self) {
        let _ = self
            .commands
            .send(Command::Disconnect { peer_id: None })
            .await;
    }

    /// Saves the peers file now (atomically); errors are described in text.
    pub async fn save_peers(&self) -> Result<(), String> {
        self.ask(|reply| Command::SavePeers { reply })
            .await
            .unwrap_or(Err("node stopped".into()))
    }

    /// Connection count, pool sizes and I/O totals.
    pub async fn stats(&self) -> NodeStats {
        self.ask(|reply| Command::Stats { reply })
            .await
            .unwrap_or_default()
    }

    /// The I/O scheduler's view of every registered connection: statistics, weight, caps.
    pub async fn io_connections(&self) -> Vec<crate::io_scheduler::ConnectionInfo> {
        self.ask(|reply| Command::IoConnections { reply })
            .await
            .unwrap_or_default()
    }

    /// A new subscription to node events (bounded; a slow subscriber misses events and
    /// is told how many by `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Sends `message` to every connection without waiting, encoding it once. Returns
    /// how many connections could not take it (queue full or closing).
    pub async fn broadcast(&self, message: &M) -> usize {
        let mut envelope = Vec::new();
        let at = peerpool_proto::encoding::begin_dynamic(&mut envelope);
        message.encode(&mut envelope);
        peerpool_proto::encoding::end_dynamic(&mut envelope, at);
        let envelope = Arc::new(envelope);
        self.connections()
            .await
            .iter()
            .filter(|c| !c.try_send_encoded(envelope.clone()))
            .count()
    }

    /// Closes every connection (each gets a Disconnect), saves the peers file, and stops
    /// the node's tasks.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

/// Settings and channels shared by the node's tasks.
struct Shared<M> {
    config: NodeConfig,
    listening_port: Option<u16>,
    local_ip: Option<IpAddr>,
    commands: mpsc::Sender<Command<M>>,
    events: broadcast::Sender<NodeEvent>,
    notices: mpsc::Sender<ConnectionNotice>,
    next_id: AtomicU64,
    scheduler: IoScheduler,
}

impl<M: AppMessage> Shared<M> {
    fn handshake_config(&self) -> HandshakeConfig {
        HandshakeConfig {
            identity: self.config.identity.clone(),
            versions: self.config.versions.clone(),
            listening_port: self.listening_port,
            metadata: self.config.metadata,
            pow_target: self.config.pow_target,
            chunk_payload_size: self.config.chunk_payload_size,
        }
    }
}

/// A running node.
pub struct Node<M> {
    handle: NodeHandle<M>,
    local_addr: Option<SocketAddr>,
}

impl<M> std::fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// The pool's clock: wall-clock time (the peers file stores dates) advanced by tokio's
/// clock, so a paused test clock drives the pool too.
#[derive(Debug, Clone, Copy)]
struct Clock {
    origin: Instant,
    wall: Duration,
}

impl Clock {
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    fn now(&self) -> Time {
        Time::from_unix(self.wall + self.origin.elapsed())
    }
}

impl<M: AppMessage> Node<M> {
    /// Binds the listener (if any), loads the peers file (if any), and starts the node's
    /// tasks.
    ///
    /// Errors: [`NodeError::Bind`] when the address cannot be bound; invalid scheduler or
    /// pool settings. An unusable peers file is not an error: it is moved aside, logged,
    /// and the node starts with an empty pool.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let mut rng = match config.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
        };
        let clock = Clock::new();
        let mut pool = NodePool::new(config.pool.clone(), &mut rng)?;
        let scheduler = IoScheduler::new(config.io_scheduler)?;
        let listener = match config.listen_addr {
            Some(addr) => Some(
                bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(addr) = local_addr.filter(|a| !a.ip().is_unspecified()) {
            pool.add_to_id_points(Point::from(addr));
        }
        if let Some(path) = config.peers_file() {
            match peers_file::load::<NodePeerMeta>(&path) {
                Ok(records) => {
                    let added = pool.load_peer_records(clock.now(), records);
                    info!(path = %path.display(), peers = added, points = pool.known_points_len(), "peers file loaded");
                }
                Err(e) => error!(error = %e, "peers file not loaded; starting with an empty pool"),
            }
        }
        let (commands, command_rx) = mpsc::channel(1024);
        let (notices, notice_rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let shared = Arc::new(Shared {
            listening_port: local_addr.map(|a| a.port()),
            local_ip: local_addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()),
            config,
            commands: commands.clone(),
            events: events.clone(),
            notices,
            next_id: AtomicU64::new(1),
            scheduler,
        });
        let welcome = listener.map(|l| tokio::spawn(welcome(l, shared.clone())));
        let owner = Owner {
            shared: shared.clone(),
            pool,
            rng,
            clock,
            connections: HashMap::new(),
            attempts: HashMap::new(),
            next_attempt: 1,
            pending: HashMap::new(),
            point_owner: HashMap::new(),
        };
        tokio::spawn(owner.run(command_rx, notice_rx, welcome));
        let peer_id = shared.config.identity.peer_id;
        Ok(Node {
            handle: NodeHandle {
                commands,
                events,
                peer_id,
            },
            local_addr,
        })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle<M> {
        self.handle.clone()
    }

    /// The bound listening address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The welcome worker: accepts connections, asks the owner whether the address may
/// connect (ACL) and starts their handshakes, refusing at once beyond
/// `max_incoming_handshakes` in flight (BEHAVIOUR.md §1.2).
async fn welcome<M: AppMessage>(listener: TcpListener, shared: Arc<Shared<M>>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_incoming_handshakes));
    loop {
        let (stream, remote_addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%remote_addr, "too many incoming handshakes: closing");
            continue;
        };
        let (tx, rx) = oneshot::channel();
        if shared
            .commands
            .send(Command::Incoming {
                remote_addr,
                reply: tx,
            })
            .await
            .is_err()
        {
            return;
        }
        let Ok(Some(attempt)) = rx.await else {
            debug!(%remote_addr, "incoming connection from a banned address: closing");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let timeout = shared.config.authentication_timeout;
            let result = tokio::time::timeout(
                timeout,
                handshake(stream, remote_addr, Direction::Incoming, attempt, &shared),
            )
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)));
            drop(permit);
            let _ = shared
                .commands
                .send(Command::AttemptEnded { attempt, result })
                .await;
        });
    }
}

/// Authenticates, asks the owner for admission, and on success registers the connection.
async fn handshake<M: AppMessage>(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    direction: Direction,
    attempt: u64,
    shared: &Arc<Shared<M>>,
) -> Result<PeerId, ConnectError> {
    let _ = tcp.set_nodelay(true);
    // From here on every byte, the handshake's included, goes through the scheduler.
    let scheduled = shared
        .scheduler
        .register(tcp)
        .map_err(ConnectError::Scheduler)?;
    let stream = ScheduledStream::new(scheduled, shared.config.close_timeout);
    let io = stream.writer().clone();
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let auth = socket::authenticate(stream, shared.handshake_config(), direction, nonce).await?;
    let peer_id = auth.peer_id;
    let announced = auth.connection_message.version.clone();
    let version = match shared.config.versions.select(&announced) {
        Ok(v) => v,
        Err(motive) => {
            let (tx, rx) = oneshot::channel();
            let _ = shared
                .commands
                .send(Command::NackPoints { reply: tx })
                .await;
            let points = rx.await.unwrap_or_default();
            auth.reject(motive, points).await?;
            return Err(ConnectError::RejectedByUs(motive));
        }
    };
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(Command::Admit {
            attempt,
            peer_id,
            announced_port: auth.connection_message.port,
            metadata: auth.metadata,
            reply: tx,
        })
        .await
        .map_err(|_| ConnectError::NodeStopped)?;
    match rx.await.map_err(|_| ConnectError::NodeStopped)? {
        Admission::Accept => {}
        Admission::Nack(motive, points) => {
            auth.reject(motive, points).await?;
            return Err(ConnectError::RejectedByUs(motive));
        }
        Admission::Close(e) => {
            drop(auth.into_stream());
            return Err(ConnectError::Pool(e));
        }
    }
    let listening_point = auth.listening_point(remote_addr);
    let metadata = auth.metadata;
    let established = auth.accept(version.clone()).await?;
    let info = ConnectionInfo {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        peer_id,
        remote_addr,
        listening_point,
        direction,
        version,
        announced_version: announced,
        metadata,
    };
    let connection = connection::spawn::<M, _>(
        established,
        info,
        shared.config.queues,
        shared.notices.clone(),
    )
    .with_scheduler(io);
    shared
        .commands
        .send(Command::Established {
            attempt,
            connection,
        })
        .await
        .map_err(|_| ConnectError::NodeStopped)?;
    Ok(peer_id)
}

/// Dials `point` (from our listening IP when we have one) under `connection_timeout`.
async fn dial<M: AppMessage>(
    point: Point,
    attempt: u64,
    shared: Arc<Shared<M>>,
) -> Result<PeerId, ConnectError> {
    let timeout = shared.config.connection_timeout;
    let run = async {
        let addr = point.socket_addr();
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ConnectError::Connect)?;
        if let Some(ip) = shared.local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(ConnectError::Connect)?;
        }
        let stream = socket.connect(addr).await.map_err(ConnectError::Connect)?;
        handshake(stream, addr, Direction::Outgoing, attempt, &shared).await
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

/// A connection attempt in flight.
struct Attempt {
    direction: Direction,
    remote_addr: SocketAddr,
    /// Outgoing: the dialed point; incoming: the peer's listening point, once announced.
    point: Option<Point>,
    /// Set when admitted.
    peer_id: Option<PeerId>,
    expected: Option<PeerId>,
    reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
}

/// The single task owning node state.
struct Owner<M> {
    shared: Arc<Shared<M>>,
    pool: NodePool,
    rng: rand::rngs::StdRng,
    clock: Clock,
    connections: HashMap<PeerId, ConnectionHandle<M>>,
    attempts: HashMap<u64, Attempt>,
    next_attempt: u64,
    /// The admitted attempt that owns each peer's Accepted state.
    pending: HashMap<PeerId, u64>,
    /// The attempt that owns each point's Requested/Accepted state.
    point_owner: HashMap<Point, u64>,
}

impl<M: AppMessage> Owner<M> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command<M>>,
        mut notices: mpsc::Receiver<ConnectionNotice>,
        welcome: Option<tokio::task::JoinHandle<()>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save = tokio::time::interval(self.shared.config.peers_file_interval);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save.tick().await;
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        if let Some(w) = &welcome {
                            w.abort();
                        }
                        self.shutdown(&mut notices).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.handle_command(cmd),
                    None => return,
                },
                Some(notice) = notices.recv() => self.handle_notice(notice),
                _ = tick.tick() => self.maintain(),
                _ = save.tick() => {
                    if let Err(e) = self.save_peers().await {
                        error!(error = %e, "peers file not saved");
                    }
                }
            }
            self.forward_pool_events();
        }
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.shared.events.send(event);
    }

    /// Moves the pool's events to subscribers and acts on its triggers.
    fn forward_pool_events(&mut self) {
        while let Some(event) = self.pool.poll_event() {
            self.emit(NodeEvent::Pool(event));
        }
        let mut dial = false;
        while let Some(trigger) = self.pool.poll_trigger() {
            dial |= matches!(trigger, Trigger::TooFewConnections | Trigger::NewPoint);
        }
        if dial {
            self.maintain();
        }
    }

    /// Up to 50 public points to share, never the asking peer's own point.
    fn shareable_points(&mut self, except: Option<Point>) -> Vec<Point> {
        let mut points = self
            .pool
            .list_known_points(true, ADVERTISE_POINTS + 1, &mut self.rng);
        points.retain(|p| Some(*p) != except);
        points.truncate(ADVERTISE_POINTS);
        points
    }

    fn new_attempt(&mut self, attempt: Attempt) -> u64 {
        let id = self.next_attempt;
        self.next_attempt += 1;
        self.attempts.insert(id, attempt);
        id
    }

    fn start_dial(
        &mut self,
        point: Point,
        expected: Option<PeerId>,
        trusted: bool,
        reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
    ) {
        let now = self.clock.now();
        let refuse = |reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>, e| {
            debug!(%point, error = %e, "not dialing");
            if let Some(reply) = reply {
                let _ = reply.send(Err(ConnectError::Pool(e)));
            }
        };
        if !self.pool.is_my_point(&point) {
            self.pool
                .register_point(now, point, trusted.then_some(true), expected);
        }
        if let Err(e) = self.pool.check_dial(&point) {
            return refuse(reply, e);
        }
        if self.pool.active_connections() >= self.pool.config().max_connections {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ConnectError::RejectedByUs(
                    NackMotive::TooManyConnections,
                )));
            }
            return;
        }
        match self.pool.point_state(&point) {
            Some(PointState::Disconnected) => {}
            Some(_) => return refuse(reply, PoolError::AlreadyConnected(point)),
            None => return refuse(reply, PoolError::UnknownPoint(point)),
        }
        if let Err(e) = self.pool.set_point_requested(now, &point) {
            return refuse(reply, e);
        }
        let attempt = self.new_attempt(Attempt {
            direction: Direction::Outgoing,
            remote_addr: point.socket_addr(),
            point: Some(point),
            peer_id: None,
            expected,
            reply,
        });
        self.point_owner.insert(point, attempt);
        self.pool.push_event(P2pEvent::OutgoingConnection { point });
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = dial(point, attempt, shared.clone()).await;
            let _ = shared
                .commands
                .send(Command::AttemptEnded { attempt, result })
                .await;
        });
    }

    fn handle_command(&mut self, cmd: Command<M>) {
        match cmd {
            Command::Connect {
                point,
                expected,
                trusted,
                reply,
            } => self.start_dial(point, expected, trusted, reply),
            Command::Incoming { remote_addr, reply } => {
                let allowed = self.pool.check_incoming_addr(remote_addr.ip()).is_ok();
                if allowed {
                    self.pool.push_event(P2pEvent::IncomingConnection {
                        point: Point::from(remote_addr),
                    });
                }
                let attempt = allowed.then(|| {
                    self.new_attempt(Attempt {
                        direction: Direction::Incoming,
                        remote_addr,
                        point: None,
                        peer_id: None,
                        expected: None,
                        reply: None,
                    })
                });
                let _ = reply.send(attempt);
            }
            Command::Admit {
                attempt,
                peer_id,
                announced_port,
                metadata,
                reply,
            } => {
                let admission = self.admit(attempt, peer_id, announced_port, metadata);
                if let Some(a) = self.attempts.get(&attempt) {
                    let point = Point::from(a.remote_addr);
                    let id_point = IdPoint {
                        addr: a.remote_addr.ip(),
                        port: announced_port,
                    };
                    self.pool.push_event(match admission {
                        Admission::Accept => P2pEvent::AcceptingRequest {
                            point,
                            id_point,
                            peer_id,
                        },
                        _ => P2pEvent::RejectingRequest {
                            point,
                            id_point,
                            peer_id,
                        },
                    });
                }
                let _ = reply.send(admission);
            }
            Command::NackPoints { reply } => {
                let points = self.shareable_points(None);
                let _ = reply.send(points);
            }
            Command::Established {
                attempt,
                connection,
            } => self.established(attempt, connection),
            Command::AttemptEnded { attempt, result } => self.attempt_ended(attempt, result),
            Command::Connections { reply } => {
                let _ = reply.send(self.connections.values().cloned().collect());
            }
            Command::Stats { reply } => {
                let _ = reply.send(NodeStats {
                    connections: self.connections.len(),
                    known_points: self.pool.known_points_len(),
                    known_peer_ids: self.pool.known_peer_ids_len(),
                    io: self.shared.scheduler.global_stat(),
                });
            }
            Command::WithPool(f) => f(&mut self.pool, self.clock.now()),
            Command::IoConnections { reply } => {
                let _ = reply.send(self.shared.scheduler.connections());
            }
            Command::GreylistPeer { peer_id } => {
                self.pool.greylist_peer(self.clock.now(), &peer_id);
                self.close_peer(&peer_id, "greylisted");
            }
            Command::BanPeer { peer_id } => {
                if let Some(d) = self.pool.ban_peer(&peer_id) {
                    self.close_peer(&d.peer_id, "banned");
                }
                self.close_peer(&peer_id, "banned");
            }
            Command::BanPoint { point } => {
                for d in self.pool.ban_point(&point) {
                    self.close_peer(&d.peer_id, "banned");
                }
            }
            Command::Disconnect {
                peer_id: Some(peer_id),
            } => {
                self.close_peer(&peer_id, "disconnected by request");
            }
            Command::Disconnect { peer_id: None } => {
                for c in self.connections.values() {
                    c.close("tear down");
                }
            }
            Command::SavePeers { reply } => {
                let result = self.save_peers_blocking();
                let _ = reply.send(result);
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn close_peer(&self, peer_id: &PeerId, why: &'static str) {
        if let Some(c) = self.connections.get(peer_id) {
            c.close(why);
        }
    }

    /// Between two simultaneous connections with one peer, the one dialed by the smaller
    /// peer id wins; both sides compute the same answer.
    fn wins_tie(&self, peer_id: PeerId, direction: Direction) -> bool {
        let ours = self.shared.config.identity.peer_id;
        let dialer = if direction == Direction::Outgoing {
            ours
        } else {
            peer_id
        };
        dialer == ours.min(peer_id)
    }

    /// The admission decision (BEHAVIOUR.md §1.2 "Acceptability", after version selection).
    fn admit(
        &mut self,
        attempt_id: u64,
        peer_id: PeerId,
        announced_port: Option<u16>,
        metadata: ConnectionMetadata,
    ) -> Admission {
        let now = self.clock.now();
        let Some(attempt) = self.attempts.get(&attempt_id) else {
            return Admission::Close(PoolError::UnknownPeer(peer_id));
        };
        let direction = attempt.direction;
        let expected = attempt.expected;
        let incoming = direction == Direction::Incoming;
        let point = match direction {
            Direction::Outgoing => attempt.point,
            Direction::Incoming => {
                announced_port.map(|port| Point::new(attempt.remote_addr.ip(), port))
            }
        };
        self.pool.register_peer(now, peer_id);
        if let (true, Some(p)) = (incoming, point) {
            if !self.pool.is_my_point(&p) {
                self.pool.register_new_point(now, p);
            }
        }
        if let (Some(p), Some(e)) = (point, expected) {
            if e != peer_id {
                return Admission::Close(PoolError::IdentityCheckFailure {
                    point: p,
                    expected: e,
                    got: peer_id,
                });
            }
        }
        // Duplicates first: established, or another admitted attempt (tie-break).
        if self.connections.contains_key(&peer_id) {
            return Admission::Nack(NackMotive::AlreadyConnected, self.shareable_points(point));
        }
        let takeover = match self.pending.get(&peer_id) {
            Some(_) if !self.wins_tie(peer_id, direction) => {
                return Admission::Nack(NackMotive::AlreadyConnected, self.shareable_points(point))
            }
            Some(_) => true,
            None => false,
        };
        // Our own dial to the same point in flight: the tie-break decides, as above.
        let point_taken = point
            .and_then(|p| self.point_owner.get(&p))
            .is_some_and(|owner| *owner != attempt_id);
        if point_taken && !takeover && !self.wins_tie(peer_id, direction) {
            return Admission::Nack(NackMotive::AlreadyConnected, self.shareable_points(point));
        }
        if !takeover {
            let check = match point {
                Some(p) => self
                    .pool
                    .check_connection(&p, &peer_id, incoming && !point_taken),
                None => self.check_peer_only(&peer_id),
            };
            match check {
                Ok(()) => {}
                Err(PoolError::AlreadyConnected(_)) => {
                    return Admission::Nack(
                        NackMotive::AlreadyConnected,
                        self.shareable_points(point),
                    )
                }
                Err(e) => return Admission::Close(e),
            }
        }
        if self.pool.active_connections() + self.pending.len() >= self.pool.config().max_connections
            && !takeover
        {
            return Admission::Nack(NackMotive::TooManyConnections, self.shareable_points(point));
        }
        // Accepted: take ownership of the point's and the peer's states.
        if let Some(p) = point {
            let _ = self.pool.set_known_public(&p, !metadata.private_node);
            if self.pool.point_state(&p) != Some(PointState::Accepted { peer_id }) {
                let _ = self.pool.set_point_accepted(now, &p, peer_id);
            }
            self.point_owner.insert(p, attempt_id);
        }
        let id_point = IdPoint {
            addr: self
                .attempts
                .get(&attempt_id)
                .map(|a| a.remote_addr.ip())
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            port: point.map(|p| p.port()),
        };
        if self.pool.peer_state(&peer_id) == Some(PeerState::Disconnected) {
            let _ = self.pool.set_peer_accepted(now, &peer_id, id_point);
        }
        self.pending.insert(peer_id, attempt_id);
        if let Some(a) = self.attempts.get_mut(&attempt_id) {
            a.point = point;
            a.peer_id = Some(peer_id);
        }
        Admission::Accept
    }

    /// Checks for a peer that announced no listening port (no point to check).
    fn check_peer_only(&self, peer_id: &PeerId) -> Result<(), PoolError> {
        if self.pool.peer_banned(peer_id) {
            return Err(PoolError::PeerBanned(*peer_id));
        }
        let trusted = self.pool.peer(peer_id).is_some_and(|p| p.trusted);
        if self.pool.config().private_mode && !trusted {
            return Err(PoolError::PrivateMode(Point::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                0,
            )));
        }
        match self.pool.peer_state(peer_id) {
            Some(PeerState::Disconnected) | None => Ok(()),
            Some(_) => Err(PoolError::AlreadyConnected(Point::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                0,
            ))),
        }
    }

    fn established(&mut self, attempt_id: u64, connection: ConnectionHandle<M>) {
        let info = connection.info.clone();
        let peer_id = info.peer_id;
        let owns = self.pending.get(&peer_id) == Some(&attempt_id);
        if !owns || self.connections.contains_key(&peer_id) {
            debug!(%peer_id, "duplicate connection: closing the newer one");
            connection.close("duplicate connection");
            return;
        }
        self.pending.remove(&peer_id);
        let now = self.clock.now();
        let point = self.attempts.get(&attempt_id).and_then(|a| a.point);
        if connection.is_closed() {
            // Its tasks ended before the owner heard of it; their Closed notice was ignored
            // as it came first, so nothing else would reset the pool's states.
            debug!(%peer_id, "connection closed before it was registered");
            self.release_states(attempt_id, peer_id, point);
            return;
        }
        if let Some(p) = point {
            let _ = self.pool.set_point_running(now, &p, peer_id);
            self.point_owner.remove(&p);
        }
        let id_point = IdPoint {
            addr: info.remote_addr.ip(),
            port: point.map(|p| p.port()),
        };
        let _ = self.pool.set_peer_running(now, &peer_id, id_point);
        // The peer's bandwidth share follows its score (ANCHORS.md: none of the anchors
        // weighs bandwidth by peer quality).
        if let (Some(io), Some(score)) = (connection.scheduler(), self.pool.score(&peer_id)) {
            let _ = io.set_weight(weight_of_score(score));
        }
        info!(%peer_id, remote_addr = %info.remote_addr, direction = ?info.direction, "connection established");
        if self.shared.config.bootstrap_on_connect
            && connection.send_control(ControlMessage::Bootstrap)
        {
            self.pool
                .push_event(P2pEvent::BootstrapSent { source: peer_id });
        }
        self.connections.insert(peer_id, connection);
        self.emit(NodeEvent::ConnectionEstablished {
            peer_id,
            remote_addr: info.remote_addr,
            direction: info.direction,
        });
    }

    /// Sets a failed attempt's point and peer back to Disconnected, if it owned them.
    fn release_states(&mut self, attempt_id: u64, peer_id: PeerId, point: Option<Point>) {
        let now = self.clock.now();
        if self.pending.get(&peer_id) == Some(&attempt_id) {
            self.pending.remove(&peer_id);
        }
        let free = !self.connections.contains_key(&peer_id) && !self.pending.contains_key(&peer_id);
        if free
            && matches!(
                self.pool.peer_state(&peer_id),
                Some(PeerState::Accepted { .. })
            )
        {
            let _ = self.pool.set_peer_disconnected(now, &peer_id, false);
        }
        if let Some(p) = point {
            if self.point_owner.get(&p) == Some(&attempt_id) {
                self.point_owner.remove(&p);
                let _ = self.pool.set_point_disconnected(now, &p, false);
            }
        }
    }

    fn attempt_ended(&mut self, attempt_id: u64, result: Result<PeerId, ConnectError>) {
        let Some(mut attempt) = self.attempts.remove(&attempt_id) else {
            return;
        };
        let now = self.clock.now();
        match &result {
            Ok(_) => {}
            Err(e) => {
                if let Some(peer_id) = attempt.peer_id {
                    self.release_states(attempt_id, peer_id, attempt.point);
                } else if let Some(p) = attempt.point {
                    if self.point_owner.get(&p) == Some(&attempt_id) {
                        self.point_owner.remove(&p);
                        let _ = self.pool.set_point_disconnected(now, &p, false);
                    }
                }
                if matches!(e, ConnectError::Handshake(_)) {
                    self.pool.push_event(P2pEvent::AuthenticationFailed {
                        point: Point::from(attempt.remote_addr),
                    });
                }
                if let Some(failure) = e.acl_failure() {
                    let _ = self.pool.apply_failure(
                        now,
                        failure,
                        attempt.remote_addr.ip(),
                        attempt.peer_id,
                    );
                }
                if let ConnectError::Handshake(SocketError::Handshake(HandshakeError::Myself)) = e {
                    if let Some(p) = attempt.point {
                        self.pool.add_to_id_points(p);
                    }
                }
                if let Some((_, points)) = e.nack() {
                    // A Nack's referral points are worth knowing (BEHAVIOUR.md §1.2).
                    self.pool.register_list_of_new_points(
                        now,
                        Medium::Nack,
                        attempt.peer_id,
                        points.iter().copied(),
                    );
                }
                if e.is_routine() {
                    debug!(remote_addr = %attempt.remote_addr, direction = ?attempt.direction, error = %e, "connection attempt ended");
                } else {
                    warn!(remote_addr = %attempt.remote_addr, direction = ?attempt.direction, error = %e, "connection attempt failed");
                }
                self.emit(NodeEvent::HandshakeFailed {
                    remote_addr: attempt.remote_addr,
                    direction: attempt.direction,
                    error: Arc::new(clone_error(e)),
                });
            }
        }
        if let Some(reply) = attempt.reply.take() {
            let _ = reply.send(result);
        }
    }

    fn handle_notice(&mut self, notice: ConnectionNotice) {
        match notice {
            ConnectionNotice::Closed {
                id,
                peer_id,
                reason,
            } => {
                let Some(conn) = self
                    .connections
                    .get(&peer_id)
                    .filter(|c| c.info.id == id)
                    .cloned()
                else {
                    return;
                };
                self.connections.remove(&peer_id);
                let now = self.clock.now();
                let requested = matches!(reason, CloseReason::Local(_));
                let point = conn.info.listening_point.or_else(|| {
                    (conn.info.direction == Direction::Outgoing)
                        .then(|| Point::from(conn.info.remote_addr))
                });
                if let Some(p) = point {
                    if matches!(self.pool.point_state(&p), Some(PointState::Running { peer_id: q }) if q == peer_id)
                    {
                        let _ = self.pool.set_point_disconnected(now, &p, requested);
                    }
                }
                let _ = self.pool.set_peer_disconnected(now, &peer_id, requested);
                if reason.is_peer_fault() {
                    // A decoding error greylists the peer: its id and its address.
                    self.pool.greylist_peer(now, &peer_id);
                    warn!(%peer_id, %reason, "connection closed; peer greylisted");
                } else {
                    info!(%peer_id, %reason, "connection closed");
                }
                self.emit(NodeEvent::ConnectionClosed { peer_id, reason });
            }
            ConnectionNotice::Control {
                id: _,
                peer_id,
                message,
            } => {
                let Some(conn) = self.connections.get(&peer_id).cloned() else {
                    return;
                };
                match message {
                    ControlMessage::Bootstrap => {
                        if conn.info.metadata.private_node {
                            return;
                        }
                        self.pool
                            .push_event(P2pEvent::BootstrapReceived { source: peer_id });
                        let points = self.shareable_points(conn.info.listening_point);
                        if !points.is_empty()
                            && conn.send_control(ControlMessage::Advertise(points.clone()))
                        {
                            self.pool
                                .push_event(P2pEvent::AdvertiseSent { source: peer_id });
                        }
                        self.emit(NodeEvent::BootstrapAnswered { peer_id, points });
                    }
                    ControlMessage::Advertise(points) => {
                        let now = self.clock.now();
                        self.pool
                            .push_event(P2pEvent::AdvertiseReceived { source: peer_id });
                        self.pool.register_list_of_new_points(
                            now,
                            Medium::Advertise,
                            Some(peer_id),
                            points.iter().copied(),
                        );
                        self.emit(NodeEvent::AdvertiseReceived { peer_id, points });
                    }
                    ControlMessage::SwapRequest(..) | ControlMessage::SwapAck(..) => {
                        debug!(%peer_id, "swap message ignored (swap is not enabled)");
                    }
                }
            }
        }
    }

    /// Dials trusted points that are not connected, and other known points while fewer
    /// than `min_connections` run; runs the greylist's countdown.
    fn maintain(&mut self) {
        let now = self.clock.now();
        if self.pool.poll_timeout().is_some_and(|t| t <= now) {
            self.pool.gc_greylist(now);
        }
        let dialing = self
            .attempts
            .values()
            .filter(|a| a.direction == Direction::Outgoing)
            .count();
        let mut wanted = self
            .pool
            .config()
            .min_connections
            .saturating_sub(self.pool.active_connections() + dialing);
        for point in self.pool.candidates(now) {
            let trusted = self.pool.point(&point).is_some_and(|p| p.trusted);
            if trusted {
                self.start_dial(point, None, true, None);
            } else if wanted > 0 {
                wanted -= 1;
                self.start_dial(point, None, false, None);
            } else {
                break;
            }
        }
    }

    fn save_peers_blocking(&self) -> Result<(), String> {
        let Some(path) = self.shared.config.peers_file() else {
            return Ok(());
        };
        peers_file::save(&path, &self.pool.peer_records()).map_err(|e| e.to_string())
    }

    async fn save_peers(&self) -> Result<(), String> {
        let Some(path) = self.shared.config.peers_file() else {
            return Ok(());
        };
        let records = self.pool.peer_records();
        tokio::task::spawn_blocking(move || peers_file::save(&path, &records))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn shutdown(&mut self, notices: &mut mpsc::Receiver<ConnectionNotice>) {
        for c in self.connections.values() {
            c.close("shutdown");
        }
        let deadline = Instant::now() + self.shared.config.close_timeout;
        while !self.connections.is_empty() {
            match tokio::time::timeout_at(deadline, notices.recv()).await {
                Ok(Some(notice)) => self.handle_notice(notice),
                _ => break,
            }
        }
        if let Err(e) = self.save_peers().await {
            error!(error = %e, "peers file not saved at shutdown");
        }
        self.forward_pool_events();
        self.shared
            .scheduler
            .shutdown(self.shared.config.close_timeout)
            .await;
    }
}

/// The I/O scheduler weight for a peer's score: the score rounded, within 1..=1000
/// (octez's constant score 1.0 gives the default weight 1).
pub fn weight_of_score(score: f64) -> u32 {
    if score.is_finite() {
        score.round().clamp(1.0, 1000.0) as u32
    } else {
        1
    }
}

/// A copy of a connect error for a second receiver (io errors keep their kind and text).
fn clone_error(e: &ConnectError) -> ConnectError {
    let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
    match e {
        ConnectError::Connect(e) => ConnectError::Connect(io(e)),
        ConnectError::Scheduler(_) => ConnectError::Scheduler(IoSchedulerError::Shutdown),
        ConnectError::Timeout(d) => ConnectError::Timeout(*d),
        ConnectError::Handshake(SocketError::Io(e)) => {
            ConnectError::Handshake(SocketError::Io(io(e)))
        }
        ConnectError::Handshake(SocketError::ClosedDuringHandshake) => {
            ConnectError::Handshake(SocketError::ClosedDuringHandshake)
        }
        ConnectError::Handshake(SocketError::Handshake(h)) => {
            ConnectError::Handshake(SocketError::Handshake(h.clone()))
        }
        ConnectError::Pool(e) => ConnectError::Pool(e.clone()),
        ConnectError::RejectedByUs(m) => ConnectError::RejectedByUs(*m),
        ConnectError::NodeStopped => ConnectError::NodeStopped,
    }
}
