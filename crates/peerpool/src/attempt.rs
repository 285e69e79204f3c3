//! The I/O of one connection attempt, as step futures. The owner runs each step as a
//! tracked task (so one node's handshakes use every worker thread) and waits for its
//! outcome; the decision between the steps is a call into the policy, in the owner:
//!
//! 1. [`outgoing`] dials (from our listening address) or [`incoming`] takes the accepted
//!    stream; either registers it with the I/O scheduler and runs the handshake up to the
//!    decision step ([`Step::Authenticated`]);
//! 2. the owner asks the policy and gives the decision to [`decide`], which sends Ack and
//!    waits for the peer's ([`Step::Established`]), or sends a Nack, or closes.
//!
//! The whole attempt runs under one deadline (`connection_timeout` or
//! `authentication_timeout`). Any failure ends as [`Step::Failed`].

use crate::error::ConnectError;
use crate::io_scheduler::{IoScheduler, ScheduledWriter};
use crate::scheduled_stream::ScheduledStream;
use crate::socket::{self, Authenticated, Established};
use crate::transport::{Transport, TransportStream};
use peerpool_proto::handshake::{Direction, HandshakeConfig};
use peerpool_proto::policy::{Admission, ConnectionId};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Where an attempt stands when its future completes.
pub(crate) enum Step {
    /// The peer proved its key and sent its metadata: the owner decides.
    Authenticated {
        id: ConnectionId,
        auth: Box<Authenticated<ScheduledStream>>,
        io: ScheduledWriter,
    },
    /// Both Acks were exchanged.
    Established {
        id: ConnectionId,
        established: Box<Established<ScheduledStream>>,
        io: ScheduledWriter,
    },
    /// The attempt failed (or we refused the peer).
    Failed {
        id: ConnectionId,
        error: ConnectError,
    },
}

/// A step of an attempt, polled by the owner.
pub(crate) type StepFuture = Pin<Box<dyn Future<Output = Step> + Send>>;

/// What every attempt needs.
#[derive(Clone)]
pub(crate) struct AttemptContext {
    pub scheduler: Arc<IoScheduler>,
    pub handshake: HandshakeConfig,
    pub close_timeout: Duration,
}

async fn within<T>(
    deadline: Instant,
    timeout: Duration,
    work: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

async fn authenticate<S: TransportStream>(
    stream: S,
    ctx: AttemptContext,
    direction: Direction,
    nonce: [u8; 24],
) -> Result<(Box<Authenticated<ScheduledStream>>, ScheduledWriter), ConnectError> {
    // From here on every byte, the handshake's included, goes through the scheduler.
    let scheduled = ctx
        .scheduler
        .register(stream)
        .map_err(|e| ConnectError::Scheduler(Arc::new(e)))?;
    let stream = ScheduledStream::new(scheduled, ctx.close_timeout);
    let io = stream.writer().clone();
    let auth = socket::authenticate(stream, ctx.handshake, direction, nonce).await?;
    Ok((Box::new(auth), io))
}

fn finish(
    id: ConnectionId,
    r: Result<(Box<Authenticated<ScheduledStream>>, ScheduledWriter), ConnectError>,
) -> Step {
    match r {
        Ok((auth, io)) => Step::Authenticated { id, auth, io },
        Err(error) => Step::Failed { id, error },
    }
}

/// Dials `remote` from `local` and authenticates, before `deadline`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn outgoing<T: Transport>(
    id: ConnectionId,
    transport: T,
    local: Option<IpAddr>,
    remote: SocketAddr,
    ctx: AttemptContext,
    nonce: [u8; 24],
    deadline: Instant,
    timeout: Duration,
) -> StepFuture {
    Box::pin(async move {
        let r = within(deadline, timeout, async {
            let stream = transport
                .connect(local, remote)
                .await
                .map_err(|e| ConnectError::Connect(Arc::new(e)))?;
            authenticate(stream, ctx, Direction::Outgoing, nonce).await
        })
        .await;
        finish(id, r)
    })
}

/// Authenticates an accepted stream before `deadline`.
pub(crate) fn incoming<S: TransportStream>(
    id: ConnectionId,
    stream: S,
    ctx: AttemptContext,
    nonce: [u8; 24],
    deadline: Instant,
    timeout: Duration,
) -> StepFuture {
    Box::pin(async move {
        let r = within(
            deadline,
            timeout,
            authenticate(stream, ctx, Direction::Incoming, nonce),
        )
        .await;
        finish(id, r)
    })
}

/// Carries out the owner's decision on an authenticated peer, before `deadline`.
pub(crate) fn decide(
    id: ConnectionId,
    auth: Box<Authenticated<ScheduledStream>>,
    io: ScheduledWriter,
    admission: Admission,
    deadline: Instant,
    timeout: Duration,
) -> StepFuture {
    Box::pin(async move {
        let work = async {
            match admission {
                Admission::Accept(version) => {
                    let established = auth.accept(version).await?;
                    Ok(Some(Box::new(established)))
                }
                Admission::Nack(motive, points) => {
                    auth.reject(motive, points).await?;
                    Err(ConnectError::RejectedByUs(motive))
                }
                Admission::Close(e) => {
                    let mut stream = auth.into_stream();
                    let _ = stream.shutdown().await;
                    Err(ConnectError::Pool(e))
                }
                _ => Ok(None),
            }
        };
        match within(deadline, timeout, work).await {
            Ok(Some(established)) => Step::Established {
                id,
                established,
                io,
            },
            Ok(None) => Step::Failed {
                id,
                error: ConnectError::NodeStopped,
            },
            Err(error) => Step::Failed { id, error },
        }
    })
}
