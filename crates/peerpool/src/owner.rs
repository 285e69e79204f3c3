//! The owner task: the one task that holds the node's state (the connection policy and
//! its pool, the connection handles, the attempts in flight). It performs I/O and applies
//! the policy's actions; every decision is the policy's. It sleeps until the next of: a
//! command from a handle, an attempt's decision or end, a notice from a connection, an accepted
//! stream, or the policy's own deadline (no fixed tick).

use crate::attempt::{self, AttemptContext, Decide, Step};
use crate::clock::NodeClock;
use crate::config::ValidConfig;
use crate::connection::{CloseReason, Connection, Held, Notice};
use crate::error::ConnectError;
use crate::event::NodeEvent;
use crate::io_scheduler::IoScheduler;
use crate::node::PeerMetadata;
use crate::persist::SaveJob;
use crate::shared::{Command, NodeShared};
use crate::transport::Transport;
use futures_util::stream::{FuturesUnordered, SelectAll};
use futures_util::StreamExt;
use peerpool_proto::handshake::Direction;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::AppMessage;
use peerpool_proto::policy::{Action, ClosedBy, ConnectionId, ConnectionPolicy};
use rand::rngs::StdRng;
use rand::RngCore;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod attempts;
mod summary;

/// Notices of one connection, tagged with its id.
type NoticeStream = Pin<Box<dyn futures_util::Stream<Item = (ConnectionId, Notice)> + Send>>;

fn notice_stream(id: ConnectionId, mut rx: mpsc::Receiver<Notice>) -> NoticeStream {
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|n| n.map(|n| (id, n)))
    }))
}

/// The next point local discovery heard of; never, when discovery is off.
async fn discovered(link: &mut Option<DiscoveryLink>) -> Option<peerpool_proto::point::Point> {
    match link {
        Some(l) => l.found.recv().await,
        None => std::future::pending().await,
    }
}

/// An attempt's task, polled for its end.
type AttemptFuture<M> = Pin<Box<dyn std::future::Future<Output = Step<M>> + Send>>;

/// What the owner remembers of an attempt in flight.
struct AttemptMeta {
    remote_addr: SocketAddr,
    direction: Direction,
    deadline: Instant,
    timeout: Duration,
    reply: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
}

/// Everything the owner task holds.
pub(crate) struct Owner<T: Transport, M: AppMessage, P: PeerMetadata> {
    pub config: ValidConfig,
    pub transport: T,
    pub listener: Option<T::Listener>,
    pub local_ip: Option<IpAddr>,
    pub policy: ConnectionPolicy<P>,
    pub clock: NodeClock,
    pub rng: StdRng,
    pub scheduler: Arc<IoScheduler>,
    pub ctx: AttemptContext<M>,
    /// Authenticated peers of attempts in flight, waiting for the policy's decision.
    pub decisions: mpsc::UnboundedReceiver<Decide>,
    pub shared: Arc<NodeShared<M>>,
    pub tracker: TaskTracker,
    pub stop_welcome: CancellationToken,
    pub saver: Option<mpsc::Sender<SaveJob<P>>>,
    pub commands: mpsc::Receiver<Command<P>>,
    pub discovery: Option<DiscoveryLink>,
}

/// Local discovery, when it runs: what the owner asks of it, and the points it hears of.
pub(crate) struct DiscoveryLink {
    pub handle: crate::discovery::Discovery,
    pub found: mpsc::Receiver<peerpool_proto::point::Point>,
}

/// The owner's working state while running.
struct Running<T: Transport, M: AppMessage, P: PeerMetadata> {
    o: Owner<T, M, P>,
    steps: FuturesUnordered<AttemptFuture<M>>,
    meta: BTreeMap<ConnectionId, AttemptMeta>,
    notices: SelectAll<NoticeStream>,
    /// The node's connections, with its hold on each (dropped when it forgets one).
    conns: BTreeMap<ConnectionId, (Connection<M>, Held<M>)>,
    accepted_tx: mpsc::Sender<(T::Stream, SocketAddr)>,
    accepted_rx: mpsc::Receiver<(T::Stream, SocketAddr)>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    maintain_waiters: Vec<oneshot::Sender<()>>,
    /// The policy's next deadline, and the instant `timer` is set to (`None`: no deadline).
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    /// Routine refusals and failures, logged as one line per period.
    summary: summary::RefusalSummary,
}

impl<T: Transport, M: AppMessage, P: PeerMetadata> Owner<T, M, P> {
    /// Runs until shutdown (asked, or every handle dropped), then shuts down cleanly.
    pub(crate) async fn run(self) {
        let backlog = self.o_backlog();
        let (accepted_tx, accepted_rx) = mpsc::channel(backlog);
        let mut r = Running {
            o: self,
            steps: FuturesUnordered::new(),
            meta: BTreeMap::new(),
            notices: SelectAll::new(),
            conns: BTreeMap::new(),
            accepted_tx,
            accepted_rx,
            shutdown_waiters: Vec::new(),
            maintain_waiters: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
            summary: summary::RefusalSummary::new(Instant::now()),
        };
        r.apply_actions();
        r.serve().await;
        r.shut_down().await;
    }

    fn o_backlog(&self) -> usize {
        self.config.get().policy.max_incoming_handshakes.max(1)
    }
}

impl<T: Transport, M: AppMessage, P: PeerMetadata> Running<T, M, P> {
    fn now(&self) -> peerpool_proto::pool::Time {
        self.o.clock.now()
    }

    fn emit(&self, event: NodeEvent) {
        let _ = self.o.shared.events.send(event);
    }

    fn nonce(&mut self) -> [u8; 24] {
        let mut nonce = [0u8; 24];
        self.o.rng.fill_bytes(&mut nonce);
        nonce
    }

    /// The main loop; returns when shutdown is asked or every handle is gone.
    async fn serve(&mut self) {
        loop {
            // Deadlines first, so a busy loop never starves the policy's timers.
            let now = self.now();
            if self.o.policy.poll_timeout().is_some_and(|t| t <= now) {
                self.o.policy.handle_timeout(now);
                self.apply_actions();
            }
            self.summary.flush_if_due(Instant::now());
            let deadline = self
                .o
                .policy
                .poll_timeout()
                .map(|t| self.o.clock.instant_of(t));
            // One timer, moved only when the deadline moves: registering a new timer on
            // every turn costs a lock on the time driver (and may wake its thread) before
            // the tasks this turn started get to run.
            if let Some(at) = deadline {
                if self.timer_at != Some(at) {
                    self.timer.as_mut().reset(at);
                    self.timer_at = Some(at);
                }
            } else {
                self.timer_at = None;
            }
            tokio::select! {
                // Order: the handles' commands, attempts in progress, connections' notices
                // (served in turn across connections), then new incoming streams; timers
                // run at the top of every turn as well.
                biased;
                cmd = self.o.commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown_waiters.push(reply);
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                // Before the attempts' ends, so a decision asked for by an attempt that has
                // ended since is still seen before its end.
                Some(d) = self.o.decisions.recv() => self.decide(d),
                Some(step) = self.steps.next(), if !self.steps.is_empty() => self.step(step),
                Some((id, notice)) = self.notices.next(), if !self.notices.is_empty() => {
                    self.notice(id, notice)
                }
                Some((stream, addr)) = self.accepted_rx.recv() => self.incoming(stream, addr),
                Some(point) = discovered(&mut self.o.discovery) => {
                    let now = self.now();
                    self.o.policy.handle_discovered(now, point);
                }
                _ = &mut self.timer, if self.timer_at.is_some() => {}
            }
            self.apply_actions();
        }
    }

    fn command(&mut self, cmd: Command<P>) {
        let now = self.now();
        let policy = &mut self.o.policy;
        match cmd {
            Command::Activate => {
                if let Some(listener) = self.o.listener.take() {
                    self.o.tracker.spawn(crate::welcome::run(
                        listener,
                        self.accepted_tx.clone(),
                        self.o.stop_welcome.clone(),
                    ));
                }
                policy.activate(now);
            }
            Command::Connect {
                point,
                expected,
                trusted,
                timeout,
                reply,
            } => match policy.connect(now, point, expected, trusted) {
                Ok(id) => {
                    // The Dial action (applied next) starts it; remember whom to tell.
                    let timeout = timeout.unwrap_or(self.o.config.get().connection_timeout);
                    self.meta.insert(
                        id,
                        AttemptMeta {
                            remote_addr: point.socket_addr(),
                            direction: Direction::Outgoing,
                            deadline: Instant::now() + timeout,
                            timeout,
                            reply: Some(reply),
                        },
                    );
                }
                Err(refusal) => {
                    debug!(%point, reason = %refusal, "not dialing");
                    let _ = reply.send(Err(refusal.into()));
                }
            },
            Command::AddTrustedPoint { point, expected } => {
                policy.add_trusted_point(now, point, expected)
            }
            Command::Disconnect { peer_id } => policy.disconnect(now, &peer_id),
            Command::TearDown => policy.tear_down(now),
            Command::GreylistPeer(peer_id) => policy.greylist_peer(now, &peer_id),
            Command::GreylistAddr(ip) => policy.greylist_addr(now, ip),
            Command::BanPeer(peer_id) => policy.ban_peer(now, &peer_id),
            Command::BanPoint(point) => policy.ban_point(now, &point),
            Command::TrustPoint(point) => policy.trust_point(now, point),
            Command::OpenPoint(point) => policy.open_point(now, &point),
            Command::TrustPeer(peer_id) => policy.trust_peer(now, peer_id),
            Command::OpenPeer(peer_id) => policy.open_peer(now, &peer_id),
            Command::SetExpectedPeerId(point, peer_id) => {
                policy.set_expected_peer_id(now, point, peer_id)
            }
            Command::ClearGreylist => policy.clear_greylist(),
            Command::AclClear => policy.acl_clear(),
            Command::SetPeerMetadata {
                peer_id,
                metadata,
                reply,
            } => {
                let _ = reply.send(policy.set_peer_metadata(&peer_id, metadata));
            }
            Command::Query(f) => f(policy, now),
            Command::Change(f) => f(policy, now),
            Command::Maintain { reply } => {
                self.maintain_waiters.push(reply);
                policy.maintain(now);
            }
            Command::SavePeers { reply } => {
                let job = SaveJob {
                    records: policy.peer_records(),
                    reply: Some(reply),
                };
                match &self.o.saver {
                    Some(saver) => {
                        if let Err(mpsc::error::TrySendError::Full(job)) = saver.try_send(job) {
                            if let Some(reply) = job.reply {
                                let _ = reply.send(Err(crate::persist::StoreError::Busy));
                            }
                        }
                    }
                    None => {
                        if let Some(reply) = job.reply {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Command::Shutdown { .. } => {}
        }
    }

    /// Carries out the policy's actions, in order.
    fn apply_actions(&mut self) {
        while let Some(action) = self.o.policy.poll_action() {
            match action {
                Action::Dial { id, point } => self.dial(id, point.socket_addr()),
                Action::Close { id, reason } => {
                    if let Some((c, _)) = self.conns.get(&id) {
                        c.close_with(reason);
                    }
                }
                Action::Send { id, message } => {
                    if let Some((c, _)) = self.conns.get(&id) {
                        if !c.send_control(message) {
                            debug!(%id, "control message dropped: queue full");
                        }
                    }
                }
                Action::SetWeight { id, weight } => {
                    if let Some((c, _)) = self.conns.get(&id) {
                        let _ = c.scheduler().set_weight(weight);
                    }
                }
                Action::SavePeers(records) => {
                    if let Some(saver) = &self.o.saver {
                        let job = SaveJob {
                            records,
                            reply: None,
                        };
                        if saver.try_send(job).is_err() {
                            debug!("periodic save skipped: the saver is busy");
                        }
                    }
                }
                Action::Event(e) => {
                    if let Some(e) = NodeEvent::from_policy(e) {
                        self.emit(e);
                    }
                }
                Action::Maintained => {
                    for waiter in self.maintain_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                Action::WakeDiscovery => {
                    if let Some(d) = &self.o.discovery {
                        d.handle.wake();
                    }
                }
                _ => {}
            }
        }
    }

    fn notice(&mut self, id: ConnectionId, notice: Notice) {
        let now = self.now();
        match notice {
            Notice::Control(message) => self.o.policy.handle_control(now, id, *message),
            Notice::Closed(reason) => {
                // The hold is dropped at the end of this turn, once the pool and the
                // registry have forgotten the connection.
                let Some((conn, _held)) = self.conns.remove(&id) else {
                    return;
                };
                let peer_id = conn.info().peer_id;
                self.o.shared.unregister(&peer_id, id);
                let by = match reason {
                    CloseReason::Local(_) => ClosedBy::Us,
                    CloseReason::Protocol(_) => ClosedBy::PeerFault,
                    _ => ClosedBy::Peer,
                };
                self.o.policy.handle_closed(now, id, by);
                if reason.is_peer_fault() {
                    warn!(%peer_id, %reason, "connection closed; peer greylisted");
                } else {
                    info!(%peer_id, %reason, "connection closed");
                }
                self.emit(NodeEvent::ConnectionClosed {
                    id,
                    peer_id,
                    reason,
                });
            }
        }
    }

    /// Stops accepting, closes every connection (each is sent a Disconnect), waits for
    /// them within `close_timeout`, saves the peers file, stops the I/O scheduler, and
    /// waits until every task of the node has ended.
    async fn shut_down(&mut self) {
        let now = self.now();
        self.o.stop_welcome.cancel();
        self.o.listener = None;
        self.o.policy.shutdown(now);
        self.apply_actions();
        // Attempts in flight are dropped (their streams close); callers are told.
        self.steps = FuturesUnordered::new();
        let ids: Vec<ConnectionId> = self.meta.keys().copied().collect();
        for id in ids {
            self.failed(id, ConnectError::NodeStopped);
        }
        // Streams accepted but not yet handled are dropped.
        self.accepted_rx.close();
        while self.accepted_rx.try_recv().is_ok() {}
        let close_timeout = self.o.config.get().close_timeout;
        let deadline = Instant::now() + close_timeout;
        while !self.conns.is_empty() {
            match tokio::time::timeout_at(deadline, self.notices.next()).await {
                Ok(Some((id, notice))) => self.notice(id, notice),
                _ => break,
            }
            self.apply_actions();
        }
        if !self.conns.is_empty() {
            warn!(
                left = self.conns.len(),
                "connections still closing at shutdown"
            );
        }
        // The last save, and the saver's end.
        if let Some(saver) = self.o.saver.take() {
            let (tx, rx) = oneshot::channel();
            let job = SaveJob {
                records: self.o.policy.peer_records(),
                reply: Some(tx),
            };
            if saver.send(job).await.is_ok() {
                match rx.await {
                    Ok(Ok(())) => debug!("peers file saved at shutdown"),
                    Ok(Err(e)) => warn!(error = %e, "peers file not saved at shutdown"),
                    Err(_) => {}
                }
            }
        }
        self.o.scheduler.shutdown(close_timeout).await;
        self.o.tracker.close();
        self.o.tracker.wait().await;
        self.notices = SelectAll::new();
        self.o.shared.clear_registry();
        // Whoever else asked to shut down meanwhile.
        while let Ok(cmd) = self.o.commands.try_recv() {
            if let Command::Shutdown { reply } = cmd {
                self.shutdown_waiters.push(reply);
            }
        }
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}
