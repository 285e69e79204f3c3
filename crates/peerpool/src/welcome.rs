//! The welcome worker (octez `P2p_welcome`, BEHAVIOUR.md §1.2): the accept loop. It hands
//! each accepted stream to the owner, which runs the cheap checks before any handshake. It
//! starts with `activate` and stops with shutdown.
//!
//! When the process is out of file descriptors (EMFILE, ENFILE) it backs off, from 100 ms
//! doubling up to 5 s, and keeps serving once descriptors are free again (octez sleeps a
//! flat 5 s); other accept errors concern one connection and are skipped at once.

use crate::transport::Listener;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// First pause after running out of file descriptors.
pub(crate) const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Whether an accept error means the process is out of file descriptors (EMFILE 24,
/// ENFILE 23: the same numbers on Linux and the BSDs).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Accepts until `stop` is cancelled or the owner is gone.
pub(crate) async fn run<L: Listener>(
    mut listener: L,
    accepted: mpsc::Sender<(L::Stream, SocketAddr)>,
    stop: CancellationToken,
) {
    let mut pause = FIRST_PAUSE;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match next {
            Ok(incoming) => {
                pause = FIRST_PAUSE;
                let sent = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    r = accepted.send(incoming) => r,
                };
                if sent.is_err() {
                    return;
                }
            }
            Err(e) if out_of_descriptors(&e) => {
                warn!(error = %e, pause = ?pause, "out of file descriptors: not accepting for a while");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(e) => {
                // A connection reset or aborted before we took it: nothing to wait for.
                debug!(error = %e, "accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}
