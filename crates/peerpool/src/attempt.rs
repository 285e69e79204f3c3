//! One connection attempt, run as one tracked task from the first byte to a running
//! connection. The decision in the middle belongs to the policy, in the owner: the task
//! hands the authenticated peer over ([`Decide`]) and waits for the [`Admission`].
//!
//! 1. [`outgoing`] dials (from our listening address) or [`incoming`] takes the accepted
//!    stream; either registers it with the I/O scheduler and runs the handshake up to the
//!    decision step;
//! 2. the owner's decision comes back: Ack and wait for the peer's, or a Nack, or a close;
//! 3. once both Acks are exchanged, the task starts the connection's reader and writer
//!    itself and ends with [`Step::Established`]; the owner registers the connection.
//!
//! Running the whole attempt in one task keeps the owner off its critical path: the owner
//! sees it twice (the decision, the end) and never starts tasks for it (issue 7: a
//! sequential connect paid for a task hop and a spawn at each step before).
//!
//! The handshake runs under one deadline (`connection_timeout` or
//! `authentication_timeout`). Any failure ends as [`Step::Failed`].

use crate::budget::ByteBudget;
use crate::connection::{self, Connection, ConnectionInfo, Held, MessageTotals, Notice, Wiring};
use crate::error::ConnectError;
use crate::inbox::Inbox;
use crate::io_scheduler::IoScheduler;
use crate::scheduled_stream::ScheduledStream;
use crate::socket::{self, Established};
use crate::transport::{Transport, TransportStream};
use peerpool_proto::handshake::{Direction, HandshakeConfig};
use peerpool_proto::message::AppMessage;
use peerpool_proto::point::Point;
use peerpool_proto::policy::{Admission, AuthenticatedPeer, ConnectionId};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Capacity of each connection's notice channel: a flooding peer waits (its socket is no
/// longer read) while the owner serves the others in turn.
pub(crate) const NOTICES_PER_CONNECTION: usize = 4;

/// How an attempt ends.
pub(crate) enum Step<M: AppMessage> {
    /// Both Acks were exchanged and the connection's tasks run.
    Established {
        id: ConnectionId,
        connection: Connection<M>,
        /// The node's hold on it: dropped, the connection counts as forgotten.
        held: Held<M>,
        notices: mpsc::Receiver<Notice>,
    },
    /// The attempt failed (or we refused the peer).
    Failed {
        id: ConnectionId,
        error: ConnectError,
    },
}

/// An authenticated peer waiting for the policy's decision.
pub(crate) struct Decide {
    pub id: ConnectionId,
    pub peer: AuthenticatedPeer,
    pub reply: oneshot::Sender<Admission>,
}

/// What every attempt needs.
pub(crate) struct AttemptContext<M> {
    pub scheduler: Arc<IoScheduler>,
    pub handshake: HandshakeConfig,
    pub close_timeout: Duration,
    /// Where authenticated peers go for a decision (the owner).
    pub decisions: mpsc::UnboundedSender<Decide>,
    /// What an established connection is wired to.
    pub queues: crate::connection::QueueConfig,
    pub totals: Arc<MessageTotals>,
    pub budget: ByteBudget,
    /// The node-wide budget of outgoing bytes in flight.
    pub outgoing: ByteBudget,
    pub inbox: Arc<Inbox<M>>,
    pub tracker: TaskTracker,
}

impl<M> Clone for AttemptContext<M> {
    fn clone(&self) -> Self {
        AttemptContext {
            scheduler: self.scheduler.clone(),
            handshake: self.handshake.clone(),
            close_timeout: self.close_timeout,
            decisions: self.decisions.clone(),
            queues: self.queues,
            totals: self.totals.clone(),
            budget: self.budget.clone(),
            outgoing: self.outgoing.clone(),
            inbox: self.inbox.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

/// Who the attempt is with, and its deadline.
#[derive(Clone, Copy)]
pub(crate) struct Attempt {
    pub id: ConnectionId,
    pub direction: Direction,
    pub remote_addr: SocketAddr,
    pub nonce: [u8; 24],
    pub deadline: Instant,
    pub timeout: Duration,
}

/// Dials `a.remote_addr` from `local`, then runs the attempt.
pub(crate) async fn outgoing<T: Transport, M: AppMessage>(
    a: Attempt,
    transport: T,
    local: Option<IpAddr>,
    ctx: AttemptContext<M>,
) -> Step<M> {
    let connect = async move {
        transport
            .connect(local, a.remote_addr)
            .await
            .map_err(|e| ConnectError::Connect(Arc::new(e)))
    };
    run(a, connect, ctx).await
}

/// Runs the attempt over an accepted stream.
pub(crate) async fn incoming<S: TransportStream, M: AppMessage>(
    a: Attempt,
    stream: S,
    ctx: AttemptContext<M>,
) -> Step<M> {
    run(a, std::future::ready(Ok(stream)), ctx).await
}

async fn run<S: TransportStream, M: AppMessage>(
    a: Attempt,
    connect: impl Future<Output = Result<S, ConnectError>>,
    ctx: AttemptContext<M>,
) -> Step<M> {
    // The handshake runs on the raw stream: its messages go out from this task, with no
    // hop through the scheduler's writer task each. Its bytes are counted, and recorded in
    // the scheduler once the stream is registered at the Ack, or as unattached bytes if
    // the attempt ends before.
    let moved = Arc::new(socket::Moved::default());
    let handshake = async {
        let stream = socket::Counted::new(connect.await?, moved.clone());
        let auth =
            socket::authenticate(stream, ctx.handshake.clone(), a.direction, a.nonce).await?;
        let (reply, decision) = oneshot::channel();
        let peer = AuthenticatedPeer {
            peer_id: auth.peer_id,
            announced_port: auth.connection_message.port,
            announced_version: auth.connection_message.version.clone(),
            metadata: auth.metadata,
        };
        ctx.decisions
            .send(Decide {
                id: a.id,
                peer,
                reply,
            })
            .map_err(|_| ConnectError::NodeStopped)?;
        match decision.await.map_err(|_| ConnectError::NodeStopped)? {
            Admission::Accept(version) => {
                let Established {
                    stream,
                    session,
                    timings,
                } = auth.accept(version).await?;
                // From here on every byte goes through the scheduler.
                let scheduled = ctx
                    .scheduler
                    .register(stream.inner)
                    .map_err(|e| ConnectError::Scheduler(Arc::new(e)))?;
                let (written, read) = moved.get();
                scheduled.record_moved(written, read);
                let stream = ScheduledStream::new(scheduled, ctx.close_timeout);
                let io = stream.writer().clone();
                Ok((
                    Established {
                        stream,
                        session,
                        timings,
                    },
                    io,
                ))
            }
            Admission::Nack(motive, points) => {
                // Our decision is the outcome, whether or not the peer is still there to
                // read the Nack (it may have refused us and closed first).
                let _ = auth.reject(motive, points).await;
                Err(ConnectError::RejectedByUs(motive))
            }
            Admission::Close(e) => {
                let mut stream = auth.into_stream();
                let _ = stream.shutdown().await;
                Err(ConnectError::Pool(e))
            }
            _ => Err(ConnectError::NodeStopped),
        }
    };
    let r = tokio::time::timeout_at(a.deadline, handshake)
        .await
        .unwrap_or(Err(ConnectError::Timeout(a.timeout)));
    match r {
        Ok((established, io)) => start(a, established, io, &ctx),
        Err(error) => {
            let (written, read) = moved.get();
            if written > 0 || read > 0 {
                ctx.scheduler.record_unattached(written, read);
            }
            Step::Failed { id: a.id, error }
        }
    }
}

/// Starts the connection's reader and writer tasks.
fn start<M: AppMessage>(
    a: Attempt,
    established: Established<ScheduledStream>,
    io: crate::io_scheduler::ScheduledWriter,
    ctx: &AttemptContext<M>,
) -> Step<M> {
    let session = &established.session;
    let info = ConnectionInfo {
        id: a.id,
        peer_id: session.peer_id,
        remote_addr: a.remote_addr,
        listening_point: session
            .remote
            .port
            .map(|port| Point::new(a.remote_addr.ip(), port)),
        direction: a.direction,
        version: session.version.clone(),
        announced_version: session.remote.version.clone(),
        metadata: session.remote_metadata,
    };
    let (notices_tx, notices) = mpsc::channel(NOTICES_PER_CONNECTION);
    let (connection, held) = connection::spawn::<M, _>(
        established,
        info,
        Wiring {
            queues: ctx.queues,
            totals: ctx.totals.clone(),
            budget: ctx.budget.clone(),
            outgoing: ctx.outgoing.clone(),
            inbox: ctx.inbox.clone(),
            notices: notices_tx,
            tracker: ctx.tracker.clone(),
            io,
            linger: ctx.close_timeout,
        },
    );
    Step::Established {
        id: a.id,
        connection,
        held,
        notices,
    }
}
