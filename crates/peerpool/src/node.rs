//! The embedding facade, in the shape of octez's `P2p` module: a [`Node`] is a cloneable
//! handle to a running node. Build it from a checked configuration ([`NodeConfig`] →
//! [`ValidConfig`]) with the application's message type `M` and its own peer metadata
//! type `P`; [`Node::activate`]; send and receive; connect and disconnect; query
//! connections, peers and points; subscribe to events; [`Node::shutdown`].
//!
//! Sending and receiving go straight to the connections (no hop through the owner task);
//! everything else is a command to the owner over a bounded channel. Dropping the last
//! `Node` handle shuts the node down as [`Node::shutdown`] does.
//!
//! [`NodeConfig`]: crate::config::NodeConfig

use crate::builder::NodeBuilder;
use crate::clock::SystemClock;
use crate::config::ValidConfig;
use crate::connection::{envelope, Connection, ConnectionInfo};
use crate::error::{ConnectError, DisconnectError, SendError, StartError, TrySendError};
use crate::event::Events;
use crate::inbox::Received;
use crate::io_scheduler::{self, Stat};
use crate::persist::StoreError;
use crate::shared::{Command, NodeShared, Query};
use crate::transport::TcpTransport;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::ConnectionPolicy;
use peerpool_proto::pool::{PeerInfo, PeerMeta, PointInfo, PoolError, Time};
use rand::{RngCore, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The application's peer metadata: how the pool makes and scores it ([`PeerMeta`]), and
/// how it is written to the peers file (serde). `()` is the empty metadata.
pub trait PeerMetadata: PeerMeta + Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: PeerMeta + Serialize + DeserializeOwned + Send + Sync + 'static> PeerMetadata for T {}

/// Totals of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Messages received over all connections since the node started (control messages
    /// included).
    pub messages_received: u64,
    /// Messages sent over all connections since the node started.
    pub messages_sent: u64,
}

/// The outcome of a [`Node::broadcast`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// Connections that queued the message.
    pub sent: usize,
    /// Connections that could not take it (queue full, or closing); nothing waits.
    pub refused: usize,
}

/// A cloneable handle to a running node (see the module doc). `M` is the application's
/// message type, `P` its peer metadata.
pub struct Node<M, P = ()> {
    pub(crate) commands: mpsc::Sender<Command<P>>,
    pub(crate) shared: Arc<NodeShared<M>>,
}

impl<M, P> Clone for Node<M, P> {
    fn clone(&self) -> Self {
        Node {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M, P> std::fmt::Debug for Node<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.shared.peer_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl<M: AppMessage, P: PeerMetadata> Node<M, P> {
    /// A builder over TCP, the system clock, and the peers file of `config` (if any).
    pub fn builder(config: ValidConfig) -> NodeBuilder<TcpTransport, M, P> {
        NodeBuilder {
            transport: TcpTransport::new(config.get().tcp),
            config,
            store: None,
            clock: Arc::new(SystemClock),
            _types: std::marker::PhantomData,
        }
    }

    /// Starts a node over TCP (see [`NodeBuilder::start`]).
    pub async fn start(config: ValidConfig) -> Result<Self, StartError> {
        Self::builder(config).start().await
    }

    async fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ConnectionPolicy<P>, Time) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let query: Query<P> = Box::new(move |policy, now| {
            let _ = tx.send(f(policy, now));
        });
        self.commands.send(Command::Query(query)).await.ok()?;
        rx.await.ok()
    }

    async fn tell(&self, command: Command<P>) {
        let _ = self.commands.send(command).await;
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The bound listening address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.local_addr
    }

    /// Starts accepting connections and dialing on its own (octez `activate`).
    pub async fn activate(&self) {
        self.tell(Command::Activate).await;
    }

    /// Dials `point` once and waits for the outcome: the peer's id once established.
    /// `expected` checks the peer's identity (`addr:port#peer_id`) and is recorded on the
    /// point (BEHAVIOUR.md §4.5). The whole attempt is bounded by `connection_timeout`.
    ///
    /// Errors: [`ConnectError`]: refused by the pool or the slot check before dialing, or
    /// the dial, the handshake or the admission failed.
    pub async fn connect(
        &self,
        point: Point,
        expected: Option<PeerId>,
    ) -> Result<PeerId, ConnectError> {
        self.connect_with_timeout(point, expected, None).await
    }

    /// [`Node::connect`] with its own timeout (octez `?timeout`).
    pub async fn connect_with_timeout(
        &self,
        point: Point,
        expected: Option<PeerId>,
        timeout: Option<Duration>,
    ) -> Result<PeerId, ConnectError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Connect {
            point,
            expected,
            trusted: false,
            timeout,
            reply,
        };
        if self.commands.send(cmd).await.is_err() {
            return Err(ConnectError::NodeStopped);
        }
        rx.await.unwrap_or(Err(ConnectError::NodeStopped))
    }

    /// Adds a trusted point (octez `--peer`): dialed whenever it is not connected, with
    /// its backoff, once the node is active; never garbage-collected.
    pub async fn add_peer(&self, point: Point, expected: Option<PeerId>) {
        self.tell(Command::AddTrustedPoint { point, expected })
            .await;
    }

    /// Closes the connection with `peer_id` (a Disconnect is sent), if there is one.
    pub async fn disconnect(&self, peer_id: PeerId) {
        self.tell(Command::Disconnect { peer_id }).await;
    }

    /// Closes the connection with `peer_id` (a Disconnect is sent) and returns once both
    /// sides have forgotten it (octez `disconnect ~wait:true`): this node has removed it
    /// from the pool and its connections, and the peer has closed its end of the stream,
    /// which a peerpool peer does only after it has removed the connection too. A new
    /// connection between the two is then admitted on either side, with no polling.
    ///
    /// Errors: [`DisconnectError::NotConnected`]; [`DisconnectError::Unacknowledged`] if
    /// the peer did not close within `close_timeout` (this node has forgotten it anyway).
    pub async fn disconnect_and_wait(&self, peer_id: PeerId) -> Result<(), DisconnectError> {
        let connection = self
            .connection(&peer_id)
            .ok_or(DisconnectError::NotConnected)?;
        self.tell(Command::Disconnect { peer_id }).await;
        if connection.closed_on_both_sides().await {
            Ok(())
        } else {
            Err(DisconnectError::Unacknowledged)
        }
    }

    /// Closes every connection (octez `tear_down_connections`); the node keeps running.
    pub async fn tear_down_connections(&self) {
        self.tell(Command::TearDown).await;
    }

    /// The connection with `peer_id`, if any.
    pub fn connection(&self, peer_id: &PeerId) -> Option<Connection<M>> {
        self.shared.connection(peer_id)
    }

    /// The established connections, by peer id.
    pub fn connections(&self) -> Vec<Connection<M>> {
        self.shared.connections()
    }

    /// What is known about each established connection.
    pub fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.connections()
            .iter()
            .map(|c| c.info().clone())
            .collect()
    }

    /// Sends `message` to `peer_id`, waiting while its queue is full.
    ///
    /// Errors: [`SendError::NotConnected`], [`SendError::Closed`].
    pub async fn send(&self, peer_id: &PeerId, message: &M) -> Result<(), SendError> {
        let c = self.connection(peer_id).ok_or(SendError::NotConnected)?;
        c.send(message).await
    }

    /// Sends `message` to `peer_id` without waiting.
    ///
    /// Errors: [`TrySendError::NotConnected`], [`TrySendError::Full`],
    /// [`TrySendError::Closed`].
    pub fn try_send(&self, peer_id: &PeerId, message: &M) -> Result<(), TrySendError> {
        let c = self.connection(peer_id).ok_or(TrySendError::NotConnected)?;
        c.try_send(message)
    }

    /// Sends `message` to every connection whose peer `except` does not match, without
    /// waiting; the message is encoded once. Connections whose queue is full are counted
    /// in [`Broadcast::refused`] (octez drops silently).
    pub fn broadcast(&self, message: &M, except: impl Fn(&PeerId) -> bool) -> Broadcast {
        let bytes = Arc::new(envelope(message));
        let mut outcome = Broadcast::default();
        for c in self.connections() {
            if except(&c.info().peer_id) {
                continue;
            }
            match c.try_send_encoded(bytes.clone()) {
                Ok(()) => outcome.sent += 1,
                Err(_) => outcome.refused += 1,
            }
        }
        outcome
    }

    /// The next application message from any connection, connections served in turn;
    /// `None` once the node has stopped.
    pub async fn recv_any(&self) -> Option<Received<M>> {
        tokio::select! {
            biased;
            r = self.shared.inbox.recv_any() => Some(r),
            _ = self.shared.stopped.cancelled() => None,
        }
    }

    /// A new subscription to the node's events.
    pub fn events(&self) -> Events {
        Events::new(self.shared.events.subscribe())
    }

    /// Connection count, pool sizes and I/O totals. Errors: the node has stopped.
    pub async fn stats(&self) -> NodeStats {
        let io = self.shared.scheduler.global_stat();
        let messages_received = self.shared.totals.received.load(Ordering::Relaxed);
        let messages_sent = self.shared.totals.sent.load(Ordering::Relaxed);
        self.ask(move |policy, _| NodeStats {
            connections: policy.connection_count(),
            known_points: policy.pool().known_points_len(),
            known_peer_ids: policy.pool().known_peer_ids_len(),
            io,
            messages_received,
            messages_sent,
        })
        .await
        .unwrap_or(NodeStats {
            io,
            messages_received,
            messages_sent,
            ..NodeStats::default()
        })
    }

    /// The I/O scheduler's view of every registered connection: statistics, weight, caps.
    pub fn io_connections(&self) -> Vec<io_scheduler::ConnectionInfo> {
        self.shared.scheduler.connections()
    }

    /// Everything the pool knows about a peer.
    pub async fn peer_info(&self, peer_id: PeerId) -> Option<PeerInfo<P>> {
        self.ask(move |policy, _| policy.pool().peer(&peer_id).cloned())
            .await
            .flatten()
    }

    /// Every known peer, sorted by peer id.
    pub async fn peers(&self) -> Vec<PeerInfo<P>> {
        let mut peers = self
            .ask(|policy, _| policy.pool().peers().cloned().collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        peers.sort_by_key(|p| p.peer_id());
        peers
    }

    /// Everything the pool knows about a point.
    pub async fn point_info(&self, point: Point) -> Option<PointInfo> {
        self.ask(move |policy, _| policy.pool().point(&point).cloned())
            .await
            .flatten()
    }

    /// Every known point, sorted.
    pub async fn points(&self) -> Vec<PointInfo> {
        let mut points = self
            .ask(|policy, _| policy.pool().points().cloned().collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        points.sort_by_key(|p| p.point());
        points
    }

    /// The known points, sorted.
    pub async fn known_points(&self) -> Vec<Point> {
        self.points().await.iter().map(PointInfo::point).collect()
    }

    /// Up to `size` points we would share in a Bootstrap answer or a Nack now (BEHAVIOUR.md
    /// §4.4: public points only, 3/5 best and 2/5 random).
    pub async fn advertisable_points(&self, size: usize) -> Vec<Point> {
        let seed = rand::rng().next_u64();
        self.ask(move |policy, _| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            policy.pool().list_known_points(true, size, &mut rng)
        })
        .await
        .unwrap_or_default()
    }

    /// The greylisted peer ids (octez `GET /network/greylist/peers`).
    pub async fn greylisted_peers(&self) -> Vec<PeerId> {
        self.ask(|policy, _| {
            policy
                .pool()
                .acl()
                .peer_greylist()
                .iter()
                .copied()
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The greylisted IP addresses the node can list (the greylist itself is a Bloom
    /// filter), and since when that list is incomplete (octez `GET /network/greylist/ips`).
    pub async fn greylisted_ips(&self) -> (Vec<IpAddr>, Option<Time>) {
        self.ask(|policy, _| {
            let g = policy.pool().acl().ip_greylist();
            (g.listed().copied().collect(), g.list_unreliable_since())
        })
        .await
        .unwrap_or_default()
    }

    /// The node's broken invariants (empty when all hold), checked at one instant inside
    /// the owner: the policy's ([`ConnectionPolicy::audit`]: connections within
    /// `max_connections`, no point or peer Running without a connection, no stuck
    /// attempt, no dial to a greylisted address) and the runtime's (the connections
    /// callers can send on are the policy's). For soak runs and health checks.
    pub async fn audit(&self) -> Vec<String> {
        let shared = self.shared.clone();
        self.ask(move |policy, _| {
            let mut found: Vec<String> = policy.audit().iter().map(|v| v.to_string()).collect();
            let registered = shared
                .registry
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if registered != policy.connection_count() {
                found.push(format!(
                    "{registered} connections registered to send on, the policy holds {}",
                    policy.connection_count()
                ));
            }
            found
        })
        .await
        .unwrap_or_default()
    }

    /// Whether an address is blacklisted or greylisted.
    pub async fn is_addr_banned(&self, ip: IpAddr) -> bool {
        self.ask(move |policy, _| policy.pool().acl().banned_addr(ip))
            .await
            .unwrap_or(false)
    }

    /// Whether a peer is blacklisted or greylisted (a trusted peer never is).
    pub async fn is_peer_banned(&self, peer_id: PeerId) -> bool {
        self.ask(move |policy, _| policy.pool().peer_banned(&peer_id))
            .await
            .unwrap_or(false)
    }

    /// A peer's metadata.
    pub async fn peer_metadata(&self, peer_id: PeerId) -> Option<P> {
        self.ask(move |policy, _| policy.pool().peer_metadata(&peer_id).cloned())
            .await
            .flatten()
    }

    /// Replaces a peer's metadata. Errors: [`PoolError::UnknownPeer`].
    pub async fn set_peer_metadata(&self, peer_id: PeerId, metadata: P) -> Result<(), PoolError> {
        let (reply, rx) = oneshot::channel();
        self.tell(Command::SetPeerMetadata {
            peer_id,
            metadata,
            reply,
        })
        .await;
        rx.await.unwrap_or(Err(PoolError::UnknownPeer(peer_id)))
    }

    /// Greylists a peer (its id and its last known address) and closes its connection.
    pub async fn greylist_peer(&self, peer_id: PeerId) {
        self.tell(Command::GreylistPeer(peer_id)).await;
    }

    /// Greylists an address.
    pub async fn greylist_addr(&self, ip: IpAddr) {
        self.tell(Command::GreylistAddr(ip)).await;
    }

    /// Blacklists a peer id and closes its connection.
    pub async fn ban_peer(&self, peer_id: PeerId) {
        self.tell(Command::BanPeer(peer_id)).await;
    }

    /// Blacklists a point's address and closes the connections from it.
    pub async fn ban_point(&self, point: Point) {
        self.tell(Command::BanPoint(point)).await;
    }

    /// Unbans a point's address and the peers connected from it, then trusts the point.
    pub async fn trust_point(&self, point: Point) {
        self.tell(Command::TrustPoint(point)).await;
    }

    /// Unbans and untrusts a point.
    pub async fn open_point(&self, point: Point) {
        self.tell(Command::OpenPoint(point)).await;
    }

    /// Unbans, then trusts a peer.
    pub async fn trust_peer(&self, peer_id: PeerId) {
        self.tell(Command::TrustPeer(peer_id)).await;
    }

    /// Unbans and untrusts a peer.
    pub async fn open_peer(&self, peer_id: PeerId) {
        self.tell(Command::OpenPeer(peer_id)).await;
    }

    /// Records that `point` must present `peer_id` (BEHAVIOUR.md §4.5).
    pub async fn set_expected_peer_id(&self, point: Point, peer_id: PeerId) {
        self.tell(Command::SetExpectedPeerId(point, peer_id)).await;
    }

    /// Empties the peer and IP greylists; manual bans stay.
    pub async fn clear_greylist(&self) {
        self.tell(Command::ClearGreylist).await;
    }

    /// Empties all four access lists (octez `DELETE /network/greylist`).
    pub async fn acl_clear(&self) {
        self.tell(Command::AclClear).await;
    }

    /// Saves the peers file now (atomically) and waits for the result.
    ///
    /// Errors: [`StoreError`] from the store; [`StoreError::Stopped`] if the node stopped.
    pub async fn save_peers(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::SavePeers { reply })
            .await
            .is_err()
        {
            return Err(StoreError::Stopped);
        }
        rx.await.unwrap_or(Err(StoreError::Stopped))
    }

    /// Runs a maintenance cycle now and returns once it has run (octez `P2p.maintain`):
    /// the node is within its bounds, or has dialled what it could and is waiting for
    /// points. Returns at once if the node has stopped.
    pub async fn maintain(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Maintain { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// The maintenance bounds (BEHAVIOUR.md §3.1) in use.
    pub async fn bounds(&self) -> Option<peerpool_proto::policy::Bounds> {
        self.ask(|policy, _| policy.bounds()).await
    }

    /// Bytes of received messages buffered now (being assembled, or waiting for the
    /// application), out of the node-wide budget.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.budget.in_use()
    }

    /// Outgoing bytes in flight beyond the connections' guarantees, out of
    /// `outgoing_budget_bytes` (what each connection has in flight in all:
    /// [`Connection::queued_outgoing`](crate::Connection::queued_outgoing)).
    pub fn outgoing_budget_in_use(&self) -> usize {
        self.shared.outgoing.in_use()
    }

    /// Tasks of the node still running, the owner task excepted: connection readers and
    /// writers, the welcome worker, the peers-file saver, and the I/O scheduler's. Zero
    /// once [`Node::shutdown`] has returned.
    pub fn live_tasks(&self) -> usize {
        self.shared.tracker.len() + self.shared.scheduler.live_tasks()
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.is_cancelled()
    }

    /// Stops accepting, closes every connection (each gets a Disconnect), waits for them
    /// (at most `close_timeout`), saves the peers file, and returns when every task of
    /// the node has ended. Calling it again, or from another handle, waits the same way.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Shutdown { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        self.shared.stopped.cancelled().await;
    }
}
