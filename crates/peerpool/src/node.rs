//! The node: a listener (welcome), a dialer, a table of established connections owned by
//! one task, control-message handling (Bootstrap → Advertise), events.
//!
//! One owner task holds all node state; every other task talks to it through
//! [`NodeHandle`] over a bounded channel (ARCHITECTURE.md "Contracts"). The full pool
//! (points and peers with their state machines, ACL, GC) comes in its own module; this
//! table is the minimal one the wire-compatible node needs.

use crate::connection::{
    self, CloseReason, ConnectionHandle, ConnectionInfo, ConnectionNotice, ControlMessage,
    QueueConfig,
};
use crate::io_scheduler::{IoScheduler, IoSchedulerConfig, IoSchedulerError, Stat};
use crate::scheduled_stream::ScheduledStream;
use crate::socket::{self, SocketError};
use peerpool_proto::connection_message::{ConnectionMetadata, NackMotive, SupportedVersions};
use peerpool_proto::framing::MAX_CHUNK_PAYLOAD;
use peerpool_proto::handshake::{Direction, HandshakeConfig, HandshakeError};
use peerpool_proto::identity::{Identity, PeerId, PowTarget};
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use rand::RngCore;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Most points sent in one Advertise or Nack (octez sends up to 50).
pub const ADVERTISE_POINTS: usize = 50;

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
    /// Established connections above which new ones are refused with
    /// `Too_many_connections` (default 100).
    pub max_connections: usize,
    /// Incoming handshakes in progress at once; more are closed at accept (default 20).
    pub max_incoming_handshakes: usize,
    /// Plaintext bytes per chunk (default 65517).
    pub chunk_payload_size: usize,
    /// Per-connection queue sizes.
    pub queues: QueueConfig,
    /// Send Bootstrap to each new peer, to learn points (default true).
    pub bootstrap_on_connect: bool,
    /// Most known points kept (default 400).
    pub max_known_points: usize,
    /// First delay before redialing a persistent peer (default 1 s); grows by 1.2 per
    /// failure up to `redial_max_delay` (default 60 s).
    pub redial_initial_delay: Duration,
    /// Cap of the redial delay.
    pub redial_max_delay: Duration,
    /// The I/O scheduler every connection's bytes go through: global upload and download
    /// caps (bytes per second), read size, queue bounds (BEHAVIOUR.md §6).
    pub io_scheduler: IoSchedulerConfig,
    /// How long closing a connection may wait for its queued bytes to go out (default 3 s).
    pub close_timeout: Duration,
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
            max_connections: 100,
            max_incoming_handshakes: 20,
            chunk_payload_size: MAX_CHUNK_PAYLOAD,
            queues: QueueConfig::default(),
            bootstrap_on_connect: true,
            max_known_points: 400,
            redial_initial_delay: Duration::from_secs(1),
            redial_max_delay: Duration::from_secs(60),
            io_scheduler: IoSchedulerConfig::default(),
            close_timeout: Duration::from_secs(3),
        }
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
    /// The peer is not the one expected at this point.
    #[error("expected peer {expected} but {actual} answered")]
    UnexpectedPeer {
        /// Who we wanted.
        expected: PeerId,
        /// Who answered.
        actual: PeerId,
    },
    /// We refused the peer with this Nack motive.
    #[error("we rejected the peer: {0}")]
    RejectedByUs(NackMotive),
    /// The node is shutting down.
    #[error("node stopped")]
    NodeStopped,
}

impl ConnectError {
    /// Whether this is an expected outcome of two nodes dialing each other at once
    /// (`Already_connected` either way), logged at debug level only.
    pub fn is_routine(&self) -> bool {
        matches!(
            self,
            ConnectError::RejectedByUs(NackMotive::AlreadyConnected)
        ) || matches!(self.nack(), Some((NackMotive::AlreadyConnected, _)))
    }

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
}

/// What happens in the node, for subscribers (logs, sandbox, tests).
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
}

/// Totals of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Established connections now.
    pub connections: usize,
    /// The I/O scheduler's totals and current flows over every connection, handshakes and
    /// closed connections included (bytes, bytes per second).
    pub io: Stat,
}

enum Command<M> {
    Connect {
        point: Point,
        expected: Option<PeerId>,
        reply: oneshot::Sender<Result<PeerId, ConnectError>>,
    },
    AddPeer {
        point: Point,
        expected: Option<PeerId>,
    },
    Admit {
        peer_id: PeerId,
        direction: Direction,
        reply: oneshot::Sender<Result<(), (NackMotive, Vec<Point>)>>,
    },
    AdmitCancelled {
        peer_id: PeerId,
    },
    NackPoints {
        reply: oneshot::Sender<Vec<Point>>,
    },
    Established {
        connection: ConnectionHandle<M>,
    },
    DialEnded {
        point: Point,
        result: Result<PeerId, Arc<ConnectError>>,
    },
    Connections {
        reply: oneshot::Sender<Vec<ConnectionHandle<M>>>,
    },
    KnownPoints {
        reply: oneshot::Sender<Vec<Point>>,
    },
    Stats {
        reply: oneshot::Sender<NodeStats>,
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
    /// `expected` checks the peer's identity (`addr:port#peer_id`).
    pub async fn connect(
        &self,
        point: Point,
        expected: Option<PeerId>,
    ) -> Result<PeerId, ConnectError> {
        self.ask(|reply| Command::Connect {
            point,
            expected,
            reply,
        })
        .await
        .unwrap_or(Err(ConnectError::NodeStopped))
    }

    /// Adds a persistent peer: dialed now and redialed with backoff whenever it is not
    /// connected.
    pub async fn add_peer(&self, point: Point, expected: Option<PeerId>) {
        let _ = self
            .commands
            .send(Command::AddPeer { point, expected })
            .await;
    }

    /// The established connections.
    pub async fn connections(&self) -> Vec<ConnectionHandle<M>> {
        self.ask(|reply| Command::Connections { reply })
            .await
            .unwrap_or_default()
    }

    /// The points this node knows (from its peers, Advertise and Nack).
    pub async fn known_points(&self) -> Vec<Point> {
        self.ask(|reply| Command::KnownPoints { reply })
            .await
            .unwrap_or_default()
    }

    /// Connection count and byte totals.
    pub async fn stats(&self) -> NodeStats {
        self.ask(|reply| Command::Stats { reply })
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

    /// Closes every connection (each gets a Disconnect) and stops the node's tasks.
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

impl<M: AppMessage> Node<M> {
    /// Binds the listener (if any) and starts the node's tasks.
    ///
    /// Errors with [`NodeError::Bind`] when the address cannot be bound.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
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
        let (commands, command_rx) = mpsc::channel(1024);
        let (notices, notice_rx) = mpsc::channel(1024);
        let (events, _) = broadcast::channel(1024);
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
            connections: HashMap::new(),
            admitted: HashMap::new(),
            known_points: BTreeSet::new(),
            persistent: HashMap::new(),
            point_peer: HashMap::new(),
            own_point: local_addr.map(Point::from),
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

/// The welcome worker: accepts connections and starts their handshakes, refusing at once
/// beyond `max_incoming_handshakes` in flight (BEHAVIOUR.md §1.2).
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let timeout = shared.config.authentication_timeout;
            let result = tokio::time::timeout(
                timeout,
                handshake(stream, remote_addr, Direction::Incoming, None, &shared),
            )
            .await;
            drop(permit);
            let result = result.unwrap_or(Err(ConnectError::Timeout(timeout)));
            if let Err(e) = result {
                report_failure(&shared, remote_addr, Direction::Incoming, e);
            }
        });
    }
}

fn report_failure<M>(
    shared: &Shared<M>,
    remote_addr: SocketAddr,
    direction: Direction,
    error: ConnectError,
) {
    if error.is_routine() {
        debug!(%remote_addr, ?direction, error = %error, "handshake ended");
    } else {
        warn!(%remote_addr, ?direction, error = %error, "handshake failed");
    }
    let _ = shared.events.send(NodeEvent::HandshakeFailed {
        remote_addr,
        direction,
        error: Arc::new(error),
    });
}

/// Releases an admission slot if the handshake does not reach `Established`.
struct AdmitGuard<M> {
    commands: mpsc::Sender<Command<M>>,
    peer_id: PeerId,
    armed: bool,
}

impl<M> Drop for AdmitGuard<M> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.try_send(Command::AdmitCancelled {
                peer_id: self.peer_id,
            });
        }
    }
}

/// Authenticates, decides, and on success registers the connection with the owner.
async fn handshake<M: AppMessage>(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    direction: Direction,
    expected: Option<PeerId>,
    shared: &Arc<Shared<M>>,
) -> Result<PeerId, ConnectError> {
    let _ = tcp.set_nodelay(true);
    // From here on every byte, the handshake's included, goes through the scheduler.
    let scheduled = shared
        .scheduler
        .register(tcp)
        .map_err(ConnectError::Scheduler)?;
    let stream = ScheduledStream::new(scheduled, shared.config.close_timeout);
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let auth = socket::authenticate(stream, shared.handshake_config(), direction, nonce).await?;
    let peer_id = auth.peer_id;
    if let Some(expected) = expected.filter(|e| *e != peer_id) {
        drop(auth.into_stream());
        return Err(ConnectError::UnexpectedPeer {
            expected,
            actual: peer_id,
        });
    }
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
            peer_id,
            direction,
            reply: tx,
        })
        .await
        .map_err(|_| ConnectError::NodeStopped)?;
    if let Err((motive, points)) = rx.await.map_err(|_| ConnectError::NodeStopped)? {
        auth.reject(motive, points).await?;
        return Err(ConnectError::RejectedByUs(motive));
    }
    let mut guard = AdmitGuard {
        commands: shared.commands.clone(),
        peer_id,
        armed: true,
    };
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
    );
    guard.armed = false;
    shared
        .commands
        .send(Command::Established { connection })
        .await
        .map_err(|_| ConnectError::NodeStopped)?;
    Ok(peer_id)
}

/// Dials `point` (from our listening IP when we have one) under `connection_timeout`.
async fn dial<M: AppMessage>(
    point: Point,
    expected: Option<PeerId>,
    shared: Arc<Shared<M>>,
) -> Result<PeerId, ConnectError> {
    let timeout = shared.config.connection_timeout;
    let attempt = async {
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
        handshake(stream, addr, Direction::Outgoing, expected, &shared).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

struct Persistent {
    expected: Option<PeerId>,
    delay: Duration,
    next_attempt: Instant,
    dialing: bool,
}

/// The single task owning node state.
struct Owner<M> {
    shared: Arc<Shared<M>>,
    connections: HashMap<PeerId, ConnectionHandle<M>>,
    admitted: HashMap<PeerId, usize>,
    known_points: BTreeSet<Point>,
    persistent: HashMap<Point, Persistent>,
    point_peer: HashMap<Point, PeerId>,
    own_point: Option<Point>,
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
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        if let Some(w) = &welcome { w.abort(); }
                        self.shutdown(&mut notices).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.handle_command(cmd),
                    None => return,
                },
                Some(notice) = notices.recv() => self.handle_notice(notice),
                _ = tick.tick() => self.redial(),
            }
        }
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.shared.events.send(event);
    }

    fn add_known(&mut self, point: Point) -> bool {
        if Some(point) == self.own_point
            || point.port() == 0
            || self.known_points.len() >= self.shared.config.max_known_points
        {
            return false;
        }
        self.known_points.insert(point)
    }

    /// Up to 50 points to share, never the asking peer's own point nor private peers'.
    fn shareable_points(&self, except: Option<Point>) -> Vec<Point> {
        let private: Vec<Point> = self
            .connections
            .values()
            .filter(|c| c.info.metadata.private_node)
            .filter_map(|c| c.info.listening_point)
            .collect();
        self.known_points
            .iter()
            .filter(|p| Some(**p) != except && !private.contains(p))
            .take(ADVERTISE_POINTS)
            .copied()
            .collect()
    }

    fn is_point_connected(&self, point: &Point) -> bool {
        self.point_peer.get(point).is_some_and(|peer| {
            self.connections.contains_key(peer) || self.admitted.contains_key(peer)
        })
    }

    fn start_dial(
        &mut self,
        point: Point,
        expected: Option<PeerId>,
        reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
    ) {
        let shared = self.shared.clone();
        let commands = self.shared.commands.clone();
        tokio::spawn(async move {
            let result = dial(point, expected, shared.clone()).await;
            let for_owner = match result {
                Ok(peer) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(peer));
                    }
                    Ok(peer)
                }
                Err(e) => {
                    if e.is_routine() {
                        debug!(%point, error = %e, "dial ended");
                    } else {
                        warn!(%point, error = %e, "dial failed");
                    }
                    let e = Arc::new(e);
                    let _ = shared.events.send(NodeEvent::HandshakeFailed {
                        remote_addr: point.socket_addr(),
                        direction: Direction::Outgoing,
                        error: e.clone(),
                    });
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(clone_error(&e)));
                    }
                    Err(e)
                }
            };
            let _ = commands
                .send(Command::DialEnded {
                    point,
                    result: for_owner,
                })
                .await;
        });
    }

    fn handle_command(&mut self, cmd: Command<M>) {
        match cmd {
            Command::Connect {
                point,
                expected,
                reply,
            } => self.start_dial(point, expected, Some(reply)),
            Command::AddPeer { point, expected } => {
                self.add_known(point);
                self.persistent.insert(
                    point,
                    Persistent {
                        expected,
                        delay: self.shared.config.redial_initial_delay,
                        next_attempt: Instant::now(),
                        dialing: false,
                    },
                );
                self.redial();
            }
            Command::Admit {
                peer_id,
                direction,
                reply,
            } => {
                let decision = if self.connections.contains_key(&peer_id)
                    || (self.admitted.contains_key(&peer_id) && !self.wins_tie(peer_id, direction))
                {
                    Err(NackMotive::AlreadyConnected)
                } else if self.connections.len() + self.admitted.values().sum::<usize>()
                    >= self.shared.config.max_connections
                {
                    Err(NackMotive::TooManyConnections)
                } else {
                    Ok(())
                };
                match decision {
                    Ok(()) => {
                        *self.admitted.entry(peer_id).or_default() += 1;
                        let _ = reply.send(Ok(()));
                    }
                    Err(motive) => {
                        let _ = reply.send(Err((motive, self.shareable_points(None))));
                    }
                }
            }
            Command::AdmitCancelled { peer_id } => self.release(peer_id),
            Command::NackPoints { reply } => {
                let _ = reply.send(self.shareable_points(None));
            }
            Command::Established { connection } => self.established(connection),
            Command::DialEnded { point, result } => {
                match &result {
                    Ok(peer) => {
                        self.point_peer.insert(point, *peer);
                    }
                    Err(e) => {
                        // A Nack's referral points are worth knowing (BEHAVIOUR.md §1.2).
                        for q in e.nack().map(|(_, points)| points).unwrap_or_default() {
                            self.add_known(*q);
                        }
                    }
                }
                let config = &self.shared.config;
                if let Some(p) = self.persistent.get_mut(&point) {
                    p.dialing = false;
                    if result.is_ok() {
                        p.delay = config.redial_initial_delay;
                    } else {
                        p.next_attempt = Instant::now() + p.delay;
                        p.delay = p.delay.mul_f64(1.2).min(config.redial_max_delay);
                    }
                }
            }
            Command::Connections { reply } => {
                let _ = reply.send(self.connections.values().cloned().collect());
            }
            Command::KnownPoints { reply } => {
                let _ = reply.send(self.known_points.iter().copied().collect());
            }
            Command::Stats { reply } => {
                let _ = reply.send(NodeStats {
                    connections: self.connections.len(),
                    io: self.shared.scheduler.global_stat(),
                });
            }
            Command::Shutdown { .. } => {}
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

    fn release(&mut self, peer_id: PeerId) {
        if let Some(n) = self.admitted.get_mut(&peer_id) {
            *n -= 1;
            if *n == 0 {
                self.admitted.remove(&peer_id);
            }
        }
    }

    fn established(&mut self, connection: ConnectionHandle<M>) {
        let info = connection.info.clone();
        self.release(info.peer_id);
        if connection.is_closed() {
            // Its tasks ended before the owner heard of it; their Closed notice was ignored
            // as it came first, so nothing else will remove it.
            debug!(peer_id = %info.peer_id, "connection closed before it was registered");
            connection.close("closed during registration");
            return;
        }
        if self.connections.contains_key(&info.peer_id) {
            debug!(peer_id = %info.peer_id, "duplicate connection: closing the newer one");
            connection.close("duplicate connection");
            return;
        }
        info!(peer_id = %info.peer_id, remote_addr = %info.remote_addr, direction = ?info.direction, "connection established");
        if let Some(p) = info.listening_point {
            self.add_known(p);
            self.point_peer.insert(p, info.peer_id);
        }
        if self.shared.config.bootstrap_on_connect {
            connection.send_control(ControlMessage::Bootstrap);
        }
        self.connections.insert(info.peer_id, connection);
        self.emit(NodeEvent::ConnectionEstablished {
            peer_id: info.peer_id,
            remote_addr: info.remote_addr,
            direction: info.direction,
        });
    }

    fn handle_notice(&mut self, notice: ConnectionNotice) {
        match notice {
            ConnectionNotice::Closed {
                id,
                peer_id,
                reason,
            } => {
                if self
                    .connections
                    .get(&peer_id)
                    .is_none_or(|c| c.info.id != id)
                {
                    return;
                }
                self.connections.remove(&peer_id);
                if reason.is_peer_fault() {
                    warn!(%peer_id, %reason, "connection closed");
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
                let Some(conn) = self.connections.get(&peer_id) else {
                    return;
                };
                match message {
                    ControlMessage::Bootstrap => {
                        if conn.info.metadata.private_node {
                            return;
                        }
                        let points = self.shareable_points(conn.info.listening_point);
                        if !points.is_empty() {
                            conn.send_control(ControlMessage::Advertise(points.clone()));
                        }
                        self.emit(NodeEvent::BootstrapAnswered { peer_id, points });
                    }
                    ControlMessage::Advertise(points) => {
                        for p in &points {
                            self.add_known(*p);
                        }
                        self.emit(NodeEvent::AdvertiseReceived { peer_id, points });
                    }
                    ControlMessage::SwapRequest(..) | ControlMessage::SwapAck(..) => {
                        debug!(%peer_id, "swap message ignored (swap is not enabled)");
                    }
                }
            }
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        let due: Vec<(Point, Option<PeerId>)> = self
            .persistent
            .iter()
            .filter(|(point, p)| {
                !p.dialing && p.next_attempt <= now && !self.is_point_connected(point)
            })
            .map(|(point, p)| (*point, p.expected))
            .collect();
        for (point, expected) in due {
            if let Some(p) = self.persistent.get_mut(&point) {
                p.dialing = true;
            }
            self.start_dial(point, expected, None);
        }
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
        self.shared
            .scheduler
            .shutdown(self.shared.config.close_timeout)
            .await;
    }
}

/// A copy of a connect error for a second receiver (io errors keep their kind and text).
fn clone_error(e: &ConnectError) -> ConnectError {
    match e {
        ConnectError::Connect(io) => {
            ConnectError::Connect(std::io::Error::new(io.kind(), io.to_string()))
        }
        ConnectError::Scheduler(_) => ConnectError::Scheduler(IoSchedulerError::Shutdown),
        ConnectError::Timeout(d) => ConnectError::Timeout(*d),
        ConnectError::Handshake(SocketError::Io(io)) => ConnectError::Handshake(SocketError::Io(
            std::io::Error::new(io.kind(), io.to_string()),
        )),
        ConnectError::Handshake(SocketError::ClosedDuringHandshake) => {
            ConnectError::Handshake(SocketError::ClosedDuringHandshake)
        }
        ConnectError::Handshake(SocketError::Handshake(h)) => {
            ConnectError::Handshake(SocketError::Handshake(h.clone()))
        }
        ConnectError::UnexpectedPeer { expected, actual } => ConnectError::UnexpectedPeer {
            expected: *expected,
            actual: *actual,
        },
        ConnectError::RejectedByUs(m) => ConnectError::RejectedByUs(*m),
        ConnectError::NodeStopped => ConnectError::NodeStopped,
    }
}
