//! What the facade's handles share with the owner task: the commands they send it, and
//! what they read without asking it (the connections to send on, the inbox, the events).

use crate::budget::ByteBudget;
use crate::connection::Connection;
use crate::error::ConnectError;
use crate::event::EventSender;
use crate::inbox::Inbox;
use crate::io_scheduler::IoScheduler;
use crate::persist::StoreError;
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{ConnectionId, ConnectionPolicy};
use peerpool_proto::pool::{PoolError, Time};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) type Query<P> = Box<dyn FnOnce(&ConnectionPolicy<P>, Time) + Send>;

/// A change through the policy (the connection manager's API), then acted on.
pub(crate) type Change<P> = Box<dyn FnOnce(&mut ConnectionPolicy<P>, Time) + Send>;

/// What handles ask of the owner task.
pub(crate) enum Command<P> {
    Activate,
    Connect {
        point: Point,
        expected: Option<PeerId>,
        trusted: bool,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<PeerId, ConnectError>>,
    },
    AddTrustedPoint {
        point: Point,
        expected: Option<PeerId>,
    },
    Disconnect {
        peer_id: PeerId,
    },
    TearDown,
    GreylistPeer(PeerId),
    GreylistAddr(IpAddr),
    BanPeer(PeerId),
    BanPoint(Point),
    TrustPoint(Point),
    OpenPoint(Point),
    TrustPeer(PeerId),
    OpenPeer(PeerId),
    SetExpectedPeerId(Point, PeerId),
    ClearGreylist,
    AclClear,
    SetPeerMetadata {
        peer_id: PeerId,
        metadata: P,
        reply: oneshot::Sender<Result<(), PoolError>>,
    },
    Query(Query<P>),
    Change(Change<P>),
    SavePeers {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Maintain {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What handles share with the owner without asking it: the connections to send on, the
/// inbox to receive from, the event channel.
pub(crate) struct NodeShared<M> {
    pub(crate) registry: RwLock<BTreeMap<PeerId, Connection<M>>>,
    pub(crate) inbox: Arc<Inbox<M>>,
    pub(crate) events: EventSender,
    pub(crate) budget: ByteBudget,
    /// Outgoing bytes in flight beyond each connection's guarantee.
    pub(crate) outgoing: ByteBudget,
    pub(crate) tracker: TaskTracker,
    pub(crate) scheduler: Arc<IoScheduler>,
    pub(crate) peer_id: PeerId,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) stopped: CancellationToken,
    /// Messages received and sent over all connections.
    pub(crate) totals: Arc<crate::connection::MessageTotals>,
}

impl<M> NodeShared<M> {
    pub(crate) fn register(&self, peer_id: PeerId, c: Connection<M>) {
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer_id, c);
    }

    pub(crate) fn unregister(&self, peer_id: &PeerId, id: ConnectionId)
    where
        M: AppMessage,
    {
        let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
        if registry.get(peer_id).is_some_and(|c| c.info().id == id) {
            registry.remove(peer_id);
        }
    }

    pub(crate) fn clear_registry(&self) {
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) fn connection(&self, peer_id: &PeerId) -> Option<Connection<M>> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer_id)
            .cloned()
    }

    pub(crate) fn connections(&self) -> Vec<Connection<M>> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
