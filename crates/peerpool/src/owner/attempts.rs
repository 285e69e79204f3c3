//! The owner's side of connection attempts: starting dials and incoming handshakes as
//! spawned steps, and acting on how each ends (established, failed).

use super::*;

impl<T: Transport, M: AppMessage, P: PeerMetadata> Running<T, M, P> {
    /// Runs an attempt's step as a task of its own (so the handshakes of one node use
    /// every worker thread), and polls its outcome from the owner.
    pub(super) fn push_step(&mut self, id: ConnectionId, step: StepFuture) {
        let handle = tokio_util::task::AbortOnDropHandle::new(self.o.tracker.spawn(step));
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
        let nonce = self.nonce();
        self.push_step(
            id,
            attempt::outgoing(
                id,
                self.o.transport.clone(),
                self.o.local_ip,
                remote,
                self.o.ctx.clone(),
                nonce,
                deadline,
                timeout,
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
                let nonce = self.nonce();
                self.push_step(
                    id,
                    attempt::incoming(id, stream, self.o.ctx.clone(), nonce, deadline, timeout),
                );
            }
            Err(reason) => {
                debug!(%remote_addr, %reason, "incoming connection refused");
                drop(stream);
                self.emit(NodeEvent::IncomingRefused {
                    remote_addr,
                    reason,
                });
            }
        }
    }

    pub(super) fn step(&mut self, step: Step) {
        let now = self.now();
        match step {
            Step::Authenticated { id, auth, io } => {
                let peer = AuthenticatedPeer {
                    peer_id: auth.peer_id,
                    announced_port: auth.connection_message.port,
                    announced_version: auth.connection_message.version.clone(),
                    metadata: auth.metadata,
                };
                let admission = self.o.policy.handle_authenticated(now, id, &peer);
                let (deadline, timeout) = self
                    .meta
                    .get(&id)
                    .map(|m| (m.deadline, m.timeout))
                    .unwrap_or((Instant::now(), Duration::ZERO));
                self.push_step(
                    id,
                    attempt::decide(id, auth, io, admission, deadline, timeout),
                );
            }
            Step::Established {
                id,
                established,
                io,
            } => self.established(id, *established, io),
            Step::Failed { id, error } => self.failed(id, error),
        }
    }

    pub(super) fn established(
        &mut self,
        id: ConnectionId,
        established: crate::socket::Established<crate::scheduled_stream::ScheduledStream>,
        io: crate::io_scheduler::ScheduledWriter,
    ) {
        let now = self.now();
        let meta = self.meta.remove(&id);
        let peer_id = established.session.peer_id;
        let reply = |meta: Option<AttemptMeta>, r: Result<PeerId, ConnectError>| {
            if let Some(reply) = meta.and_then(|m| m.reply) {
                let _ = reply.send(r);
            }
        };
        if !self.o.policy.handle_established(now, id) {
            // A duplicate (the other connection with this peer won) or a node shutting
            // down: close this one; the peer is connected, or the node is stopping.
            debug!(%peer_id, %id, "duplicate connection: closing it");
            let mut stream = established.stream;
            self.o.tracker.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stream.shutdown().await;
            });
            let r = if self.o.policy.connection_of(&peer_id).is_some() {
                Ok(peer_id)
            } else {
                Err(ConnectError::NodeStopped)
            };
            reply(meta, r);
            return;
        }
        let Some(view) = self.o.policy.connections().find(|c| c.id == id).cloned() else {
            reply(meta, Err(ConnectError::NodeStopped));
            return;
        };
        let info = ConnectionInfo {
            id,
            peer_id,
            remote_addr: view.remote_addr,
            listening_point: established
                .session
                .remote
                .port
                .map(|port| peerpool_proto::point::Point::new(view.remote_addr.ip(), port)),
            direction: view.direction,
            version: established.session.version.clone(),
            announced_version: established.session.remote.version.clone(),
            metadata: established.session.remote_metadata,
        };
        let (notices_tx, notices_rx) = mpsc::channel(NOTICES_PER_CONNECTION);
        let c = self.o.config.get();
        let connection = connection::spawn::<M, _>(
            established,
            info,
            Wiring {
                queues: c.queues,
                totals: self.o.shared.totals.clone(),
                budget: self.o.shared.budget.clone(),
                inbox: self.o.shared.inbox.clone(),
                notices: notices_tx,
                tracker: self.o.tracker.clone(),
                io,
            },
        );
        self.notices.push(notice_stream(id, notices_rx));
        self.o.shared.register(peer_id, connection.clone());
        self.conns.insert(id, connection);
        // The policy's actions for the new connection (weight, Bootstrap) are carried out
        // before anyone hears of it.
        self.apply_actions();
        info!(%peer_id, remote_addr = %view.remote_addr, direction = ?view.direction, "connection established");
        self.emit(NodeEvent::ConnectionEstablished {
            id,
            peer_id,
            remote_addr: view.remote_addr,
            direction: view.direction,
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
