//! The welcome worker (octez `P2p_welcome`): the accept loop. It hands each accepted
//! stream to the owner, which runs the cheap checks before any handshake. It starts with
//! `activate` and stops with shutdown; an accept error (too many open files, a connection
//! reset before it was accepted) is logged and the loop goes on after a short pause.

use crate::transport::Listener;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Pause after a failed accept, so a persistent error (out of file descriptors) does not
/// spin.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts until `stop` is cancelled or the owner is gone.
pub(crate) async fn run<L: Listener>(
    mut listener: L,
    accepted: mpsc::Sender<(L::Stream, SocketAddr)>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match next {
            Ok(incoming) => {
                let sent = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    r = accepted.send(incoming) => r,
                };
                if sent.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}
