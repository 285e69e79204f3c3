//! The connection manager's API on a running node (issue 9; go-libp2p's `ConnManager` in
//! Rust shape): tags, decaying tags, protection, trimming. [`Node::conn_manager`] gives a
//! cloneable [`ConnManagerHandle`]; each call is a command to the node's owner task, which
//! runs it on the pure manager (`peerpool_proto::connmgr`) and acts on the result (a trim
//! when the count is above the high watermark).
//!
//! The Notifiee (connection opened / closed) and the trims and evictions with their rules
//! are [`NodeEvent::ConnManager`](crate::NodeEvent::ConnManager) events of
//! [`Node::events`].

use crate::node::{Node, PeerMetadata};
use crate::shared::{Change, Command};
use peerpool_proto::connmgr::{Bump, ConnManager, ConnManagerError, Decay, TagInfo};
use peerpool_proto::identity::PeerId;
use peerpool_proto::message::AppMessage;
use peerpool_proto::policy::ConnectionPolicy;
use peerpool_proto::pool::Time;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A handle to a node's connection manager (see the module doc). Every method answers
/// [`ConnManagerError::Closed`] (or the neutral value) once the node has stopped.
pub struct ConnManagerHandle<P> {
    commands: mpsc::Sender<Command<P>>,
}

impl<P> Clone for ConnManagerHandle<P> {
    fn clone(&self) -> Self {
        ConnManagerHandle {
            commands: self.commands.clone(),
        }
    }
}

impl<P> std::fmt::Debug for ConnManagerHandle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnManagerHandle").finish_non_exhaustive()
    }
}

impl<M: AppMessage, P: PeerMetadata> Node<M, P> {
    /// The node's connection manager.
    pub fn conn_manager(&self) -> ConnManagerHandle<P> {
        ConnManagerHandle {
            commands: self.commands.clone(),
        }
    }
}

impl<P: PeerMetadata> ConnManagerHandle<P> {
    /// Runs `f` on the policy in the owner task; `None` once the node has stopped.
    async fn on_policy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ConnectionPolicy<P>, Time) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let change: Change<P> = Box::new(move |policy: &mut ConnectionPolicy<P>, now| {
            let _ = tx.send(f(policy, now));
        });
        self.commands.send(Command::Change(change)).await.ok()?;
        rx.await.ok()
    }

    /// Runs `f` on the manager (then the policy acts on what changed).
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ConnManager, Time) -> T + Send + 'static,
    ) -> Option<T> {
        self.on_policy(move |policy, now| policy.with_conn_manager(now, f))
            .await
    }

    /// Sets `tag` on `peer` to `weight` (go-libp2p `TagPeer`). Tags of a peer without a
    /// connection are kept for `temporary_tag_ttl` (default 10 s).
    ///
    /// Errors: [`ConnManagerError::Closed`].
    pub async fn tag_peer(
        &self,
        peer: PeerId,
        tag: &str,
        weight: i64,
    ) -> Result<(), ConnManagerError> {
        let tag = tag.to_owned();
        self.change(move |m, now| m.tag_peer(now, peer, &tag, weight))
            .await
            .unwrap_or(Err(ConnManagerError::Closed))
    }

    /// Removes `tag` from `peer` (go-libp2p `UntagPeer`).
    pub async fn untag_peer(&self, peer: PeerId, tag: &str) {
        let tag = tag.to_owned();
        let _ = self
            .change(move |m, now| m.untag_peer(now, &peer, &tag))
            .await;
    }

    /// Sets `tag` on `peer` to `f(current)` (0 when unset; go-libp2p `UpsertTag`).
    ///
    /// Errors: [`ConnManagerError::Closed`].
    pub async fn upsert_tag(
        &self,
        peer: PeerId,
        tag: &str,
        f: impl FnOnce(i64) -> i64 + Send + 'static,
    ) -> Result<(), ConnManagerError> {
        let tag = tag.to_owned();
        self.change(move |m, now| m.upsert_tag(now, peer, &tag, f))
            .await
            .unwrap_or(Err(ConnManagerError::Closed))
    }

    /// Tags, value, connections and protections of `peer` (go-libp2p `GetTagInfo`);
    /// `None` for a peer the manager does not know.
    pub async fn tag_info(&self, peer: PeerId) -> Option<TagInfo> {
        self.change(move |m, now| m.tag_info(now, &peer))
            .await
            .flatten()
    }

    /// Closes connections down to the low watermark now (go-libp2p `TrimOpenConns`);
    /// returns how many were asked to close. 0 with the no-op manager.
    pub async fn trim_open_conns(&self) -> usize {
        self.on_policy(|policy, now| policy.trim_open_conns(now))
            .await
            .unwrap_or(0)
    }

    /// Protects `peer` under `tag` (go-libp2p `Protect`): never trimmed or evicted.
    ///
    /// Errors: [`ConnManagerError::ProtectionBudget`] beyond the budget (default half of
    /// the low watermark; the peer is then not protected), [`ConnManagerError::Closed`].
    pub async fn protect(&self, peer: PeerId, tag: &str) -> Result<(), ConnManagerError> {
        let tag = tag.to_owned();
        self.change(move |m, now| m.protect(now, peer, &tag))
            .await
            .unwrap_or(Err(ConnManagerError::Closed))
    }

    /// Removes protection `tag` from `peer`; whether another tag still protects it
    /// (go-libp2p `Unprotect`).
    pub async fn unprotect(&self, peer: PeerId, tag: &str) -> bool {
        let tag = tag.to_owned();
        self.change(move |m, now| m.unprotect(now, &peer, &tag))
            .await
            .unwrap_or(false)
    }

    /// Whether `peer` is protected under `tag`, or under any tag for `None` (go-libp2p
    /// `IsProtected`).
    pub async fn is_protected(&self, peer: PeerId, tag: Option<&str>) -> bool {
        let tag = tag.map(str::to_owned);
        self.on_policy(move |policy, _| policy.conn_manager().is_protected(&peer, tag.as_deref()))
            .await
            .unwrap_or(false)
    }

    /// How many peers `protect` protects now (at most the protection budget).
    pub async fn protected_peers(&self) -> usize {
        self.on_policy(|policy, _| policy.conn_manager().protected_peers())
            .await
            .unwrap_or(0)
    }

    /// Registers the decaying tag `name` (go-libp2p `RegisterDecayingTag`): `decay` every
    /// `interval`, `bump` on each [`ConnManagerHandle::bump`].
    ///
    /// Errors: [`ConnManagerError::DecayingTag`] (name taken), [`ConnManagerError::Decay`]
    /// (rules out of range), [`ConnManagerError::Closed`].
    pub async fn register_decaying_tag(
        &self,
        name: &str,
        interval: Duration,
        decay: Decay,
        bump: Bump,
    ) -> Result<(), ConnManagerError> {
        let name = name.to_owned();
        self.change(move |m, now| m.register_decaying_tag(now, &name, interval, decay, bump))
            .await
            .unwrap_or(Err(ConnManagerError::Closed))
    }

    /// Bumps the decaying tag `name` of `peer` by `delta`.
    ///
    /// Errors: [`ConnManagerError::DecayingTag`] (not registered),
    /// [`ConnManagerError::Closed`].
    pub async fn bump(&self, peer: PeerId, name: &str, delta: i64) -> Result<(), ConnManagerError> {
        let name = name.to_owned();
        self.change(move |m, now| m.bump(now, peer, &name, delta))
            .await
            .unwrap_or(Err(ConnManagerError::Closed))
    }

    /// Records that `peer` just sent something useful (the eviction keeps a few of the
    /// most recently useful peers).
    pub async fn record_useful(&self, peer: PeerId) {
        let _ = self.change(move |m, now| m.record_useful(now, &peer)).await;
    }

    /// Records a round-trip time measured with `peer` (the eviction keeps a few of the
    /// lowest).
    pub async fn record_rtt(&self, peer: PeerId, rtt: Duration) {
        let _ = self.change(move |m, _| m.record_rtt(&peer, rtt)).await;
    }

    /// Stops the manager (go-libp2p `Close`): no more trims, evictions or netgroup
    /// refusals; tag changes answer [`ConnManagerError::Closed`].
    pub async fn close(&self) {
        let _ = self.change(|m, _| m.close()).await;
    }
}
