//! [`NodeBuilder`]: starting a node with the seams a test or a simulation replaces.

use crate::budget::ByteBudget;
use crate::clock::{NodeClock, WallClock};
use crate::config::ValidConfig;
use crate::error::StartError;
use crate::inbox::Inbox;
use crate::io_scheduler::IoScheduler;
use crate::node::{Node, PeerMetadata};
use crate::owner::Owner;
use crate::persist::{self, FileStore, PeerStore};
use crate::shared::NodeShared;
use crate::transport::{Listener, Transport};
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::ConnectionPolicy;
use peerpool_proto::pool::{Pool, PoolError};
use rand::{RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Builds a node with the seams a test or a simulation replaces: the transport, the peers
/// store, the wall clock.
pub struct NodeBuilder<T, M, P> {
    pub(crate) config: ValidConfig,
    pub(crate) transport: T,
    pub(crate) store: Option<Arc<dyn PeerStore>>,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) _types: std::marker::PhantomData<fn() -> (M, P)>,
}

impl<T: std::fmt::Debug, M, P> std::fmt::Debug for NodeBuilder<T, M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("transport", &self.transport)
            .field("store", &self.store)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, M: AppMessage, P: PeerMetadata> NodeBuilder<T, M, P> {
    /// Uses `transport` instead.
    pub fn transport<U: Transport>(self, transport: U) -> NodeBuilder<U, M, P> {
        NodeBuilder {
            config: self.config,
            transport,
            store: self.store,
            clock: self.clock,
            _types: std::marker::PhantomData,
        }
    }

    /// Keeps the peers file in `store` (instead of `config.peers_file`).
    pub fn store(mut self, store: Arc<dyn PeerStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Reads the wall-clock time at start from `clock` (instead of the system's).
    pub fn clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Binds the listener (if any), loads the peers file (if any), and starts the node's
    /// tasks. The node serves explicit connects at once; it accepts connections and dials
    /// on its own after [`Node::activate`].
    ///
    /// Errors: [`StartError::Bind`] when the address cannot be bound;
    /// [`StartError::Scheduler`] outside a tokio runtime. An unusable peers file is not an
    /// error: it is set aside, logged, and the node starts with an empty pool.
    pub async fn start(self) -> Result<Node<M, P>, StartError> {
        let config = self.config;
        let c = config.get();
        let seed = c.seed.unwrap_or_else(|| rand::rng().next_u64());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let clock = NodeClock::start(self.clock.as_ref());
        let pool = Pool::<P>::new(c.pool.clone(), &mut rng)?;
        // Two budgets out of one setting: bytes read ahead by the I/O scheduler and whole
        // messages. Kept apart so readers waiting for a message reservation can never be
        // held up by read-ahead that only they could drain.
        let (read_ahead, messages) = crate::config::split_budget(c.buffer_budget_bytes);
        let budget = ByteBudget::new(messages);
        let scheduler = Arc::new(
            IoScheduler::with_budget(c.io_scheduler, ByteBudget::new(read_ahead))
                .map_err(|e| StartError::Scheduler(Arc::new(e)))?,
        );
        let listener =
            match c.listen_addr {
                Some(addr) => Some(self.transport.bind(addr, c.backlog).await.map_err(
                    |source| StartError::Bind {
                        addr,
                        source: Arc::new(source),
                    },
                )?),
                None => None,
            };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let local_ip = local_addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
        let peer_id = c.identity.peer_id;
        let mut policy = ConnectionPolicy::new(
            clock.now(),
            c.policy.clone(),
            c.versions.clone(),
            pool,
            peer_id,
            rng.next_u64(),
        )
        .map_err(|_| StartError::Pool(PoolError::InvalidConfig("policy")))?;
        if let Some(addr) = local_addr.filter(|a| !a.ip().is_unspecified()) {
            policy.add_my_point(Point::from(addr));
        }
        let store = self.store.or_else(|| {
            c.peers_file
                .as_ref()
                .map(|p| Arc::new(FileStore::new(p)) as Arc<dyn PeerStore>)
        });
        if let Some(store) = &store {
            match persist::load_records::<P>(store.as_ref()).await {
                Ok(records) => {
                    let added = policy.load_peer_records(clock.now(), records);
                    info!(
                        peers = added,
                        points = policy.pool().known_points_len(),
                        "peers file loaded"
                    );
                }
                Err(e) => warn!(error = %e, "peers file not loaded; starting with an empty pool"),
            }
        }
        let events = crate::event::EventSender::new(c.event_capacity);
        let tracker = TaskTracker::new();
        let saver = store.map(|store| {
            let (tx, rx) = mpsc::channel(4);
            tracker.spawn(persist::run_saver::<P>(store, rx, events.clone()));
            tx
        });
        let shared = Arc::new(NodeShared {
            registry: RwLock::new(BTreeMap::new()),
            inbox: Arc::new(Inbox::default()),
            events,
            budget,
            outgoing: ByteBudget::new(c.outgoing_budget_bytes),
            tracker: tracker.clone(),
            scheduler: scheduler.clone(),
            peer_id,
            local_addr,
            stopped: CancellationToken::new(),
            totals: Arc::default(),
        });
        let (commands, command_rx) = mpsc::channel(256);
        let (decisions_tx, decisions) = mpsc::unbounded_channel();
        let ctx = crate::attempt::AttemptContext {
            scheduler: scheduler.clone(),
            handshake: config.handshake(
                config
                    .get()
                    .advertised_port
                    .or(local_addr.map(|a| a.port())),
            ),
            close_timeout: c.close_timeout,
            decisions: decisions_tx,
            queues: slow_rate_within_cap(c),
            totals: shared.totals.clone(),
            budget: shared.budget.clone(),
            outgoing: shared.outgoing.clone(),
            inbox: shared.inbox.clone(),
            tracker: tracker.clone(),
        };
        // The welcome worker and local discovery stop with the same token at shutdown.
        let stop_workers = CancellationToken::new();
        let discovery = match (c.discovery, local_addr) {
            (Some(d), Some(addr)) => {
                let (found_tx, found) = mpsc::channel(64);
                match crate::discovery::Discovery::start(
                    d,
                    peer_id,
                    addr.port(),
                    found_tx,
                    &tracker,
                    stop_workers.clone(),
                )
                .await
                {
                    Ok(handle) => Some(crate::owner::DiscoveryLink { handle, found }),
                    Err(e) => {
                        warn!(error = %e, "local discovery not started");
                        None
                    }
                }
            }
            _ => None,
        };
        let owner = Owner {
            transport: self.transport,
            listener,
            local_ip,
            policy,
            clock,
            rng,
            scheduler,
            ctx,
            decisions,
            shared: shared.clone(),
            tracker,
            stop_welcome: stop_workers,
            saver,
            commands: command_rx,
            discovery,
            config,
        };
        let stopped = shared.stopped.clone().drop_guard();
        tokio::spawn(async move {
            // `stopped` is cancelled when this task ends, after everything else.
            let _stopped = stopped;
            owner.run().await;
        });
        Ok(Node { commands, shared })
    }
}

/// The queue settings the connections use: with a download cap, the slowest rate a large
/// message may arrive at is at most half of a connection's fair share of the cap, so a
/// peer that the cap itself slows down is never taken for a slow sender.
fn slow_rate_within_cap(c: &crate::config::NodeConfig) -> crate::connection::QueueConfig {
    let mut queues = c.queues;
    if let (Some(rate), Some(cap)) = (queues.slow_message_rate, c.io_scheduler.max_download_speed) {
        let share = cap / (2 * c.pool.max_connections.max(1) as u64);
        let share = usize::try_from(share).unwrap_or(usize::MAX).max(1);
        queues.slow_message_rate = Some(rate.min(share));
    }
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_cap_lowers_the_slow_message_rate_to_half_a_fair_share() {
        use peerpool_proto::identity::{Identity, PowTarget};
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let target = PowTarget::new(0.0).expect("0 bits is a valid target");
        let identity = Identity::generate(&target, &mut rng);
        let mut c = crate::config::NodeConfig::new(Arc::new(identity), "TEZOS");
        assert_eq!(slow_rate_within_cap(&c).slow_message_rate, Some(64 << 10));
        // 1 MB/s shared by up to 100 connections: 10 000 B/s each, half of it.
        c.io_scheduler.max_download_speed = Some(1_000_000);
        c.pool.max_connections = 100;
        assert_eq!(slow_rate_within_cap(&c).slow_message_rate, Some(5_000));
        // A generous cap leaves the configured rate.
        c.io_scheduler.max_download_speed = Some(1 << 40);
        assert_eq!(slow_rate_within_cap(&c).slow_message_rate, Some(64 << 10));
        c.queues.slow_message_rate = None;
        assert_eq!(slow_rate_within_cap(&c).slow_message_rate, None);
    }
}
