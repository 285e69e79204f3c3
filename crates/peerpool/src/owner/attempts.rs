//! The owner's side of connection attempts: starting dials and incoming handshakes as
//! tasks, deciding on authenticated peers, and acting on how each ends (established,
//! failed).

use super::*;

impl<T: Transport, M: AppMessage, P: PeerMetadata> Running<T, M, P> {
    /// Runs an attempt as a task of its own (so the handshakes of one node use every
    /// worker thread), and polls its end from the owner.
    fn push_attempt(
        &mut self,
        id: ConnectionId,
        attempt: impl std::future::Future<Output = Step<M>> + Send + 'static,
    ) {
        let handle = tokio_util::task::AbortOnDropHandle::new(self.o.tracker.spawn(attempt));
        self.steps.push(Box::pin(async move {
            handle.await.unwrap_or(Step::Failed {
                id,
                error: ConnectError::NodeStopped,
            })
        }));
    }

    pub(super) fn dial(&mut self, id: ConnectionId, remote: SocketAddr) {
        let default = self.o.config.get().connection_timeout;
        let meta = self.meta.entry(id).or_insert_with(|| AttemptMeta {
            remote_addr: remote,
            direction: Direction::Outgoing,
            deadline: Instant::now() + default,
            timeout: default,
            reply: None,
        });
        let (deadline, timeout) = (meta.deadline, meta.timeout);
        let a = attempt::Attempt {
            id,
            direction: Direction::Outgoing,
            remote_addr: remote,
            nonce: self.nonce(),
            deadline,
            timeout,
        };
        self.push_attempt(
            id,
            attempt::outgoing(
                a,
                self.o.transport.clone(),
                self.o.local_ip,
                self.o.ctx.clone(),
            ),
        );
    }

    pub(super) fn incoming(&mut self, stream: T::Stream, remote_addr: SocketAddr) {
        let now = self.now();
        match self.o.policy.handle_incoming(now, remote_addr) {
            Ok(id) => {
                let timeout = self.o.config.get().authentication_timeout;
                let deadline = Instant::now() + timeout;
                self.meta.insert(
                    id,
                    AttemptMeta {
                        remote_addr,
                        direction: Direction::Incoming,
                        deadline,
                        timeout,
                        reply: None,
                    },
                );
                let a = attempt::Attempt {
                    id,
                    direction: Direction::Incoming,
                    remote_addr,
                    nonce: self.nonce(),
                    deadline,
                    timeout,
                };
                self.push_attempt(id, attempt::incoming(a, stream, self.o.ctx.clone()));
            }
            Err(reason) => {
                debug!(%remote_addr, %reason, "incoming connection refused");
                self.summary.refused(&reason, Instant::now());
                drop(stream);
                self.emit(NodeEvent::IncomingRefused {
                    remote_addr,
                    reason,
                });
            }
        }
    }

    /// The policy's decision on an authenticated peer, sent back to its attempt. An
    /// attempt that has ended meanwhile is told of by its end, which comes next.
    pub(super) fn decide(&mut self, d: Decide) {
        let now = self.now();
        let admission = self.o.policy.handle_authenticated(now, d.id, &d.peer);
        let _ = d.reply.send(admission);
    }

    pub(super) fn step(&mut self, step: Step<M>) {
        match step {
            Step::Established {
                id,
                connection,
                held,
                notices,
            } => self.established(id, connection, held, notices),
            Step::Failed { id, error } => self.failed(id, error),
        }
    }

    pub(super) fn established(
        &mut self,
        id: ConnectionId,
        connection: Connection<M>,
        held: Held<M>,
        notices: mpsc::Receiver<Notice>,
    ) {
        let now = self.now();
        let meta = self.meta.remove(&id);
        let peer_id = connection.info().peer_id;
        let reply = |meta: Option<AttemptMeta>, r: Result<PeerId, ConnectError>| {
            if let Some(reply) = meta.and_then(|m| m.reply) {
                let _ = reply.send(r);
            }
        };
        if !self.o.policy.handle_established(now, id) {
            // A duplicate (the other connection with this peer won) or a node shutting
            // down: close this one; the peer is connected, or the node is stopping.
            debug!(%peer_id, %id, "duplicate connection: closing it");
            connection.close_with(peerpool_proto::policy::DisconnectReason::Duplicate);
            let r = if self.o.policy.connection_of(&peer_id).is_some() {
                Ok(peer_id)
            } else {
                Err(ConnectError::NodeStopped)
            };
            reply(meta, r);
            return;
        }
        let remote_addr = connection.info().remote_addr;
        let direction = connection.info().direction;
        self.notices.push(notice_stream(id, notices));
        self.o.shared.register(peer_id, connection.clone());
        self.conns.insert(id, (connection, held));
        // The policy's actions for the new connection (weight, Bootstrap) are carried out
        // before anyone hears of it.
        self.apply_actions();
        info!(%peer_id, %remote_addr, ?direction, "connection established");
        self.emit(NodeEvent::ConnectionEstablished {
            id,
            peer_id,
            remote_addr,
            direction,
        });
        reply(meta, Ok(peer_id));
    }

    pub(super) fn failed(&mut self, id: ConnectionId, error: ConnectError) {
        let now = self.now();
        self.o
            .policy
            .handle_attempt_failed(now, id, error.classify());
        let Some(meta) = self.meta.remove(&id) else {
            return;
        };
        if error.is_routine() {
            debug!(remote_addr = %meta.remote_addr, direction = ?meta.direction, %error, "connection attempt ended");
        } else {
            debug!(remote_addr = %meta.remote_addr, direction = ?meta.direction, %error, "connection attempt failed");
            if !matches!(error, ConnectError::NodeStopped) {
                self.summary.failed(error.kind(), Instant::now());
            }
        }
        self.emit(NodeEvent::HandshakeFailed {
            remote_addr: meta.remote_addr,
            direction: meta.direction,
            error: error.clone(),
        });
        if let Some(reply) = meta.reply {
            let _ = reply.send(Err(error));
        }
    }
}
