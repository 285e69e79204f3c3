//! [`Closing`]: why a connection closed, and a wait for it.

use super::CloseReason;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// The first reason a connection closed, and a wake-up for the tasks and handles waiting
/// for it. Inline in the connection's shared state (~90 bytes): the `watch` channel it
/// replaces allocated ~0.4 KiB of its own per connection end.
#[derive(Default)]
pub(super) struct Closing {
    /// Set with the reason: a lock-free check for the send paths.
    closed: AtomicBool,
    reason: Mutex<Option<CloseReason>>,
    wake: Notify,
}

fn lock(m: &Mutex<Option<CloseReason>>) -> MutexGuard<'_, Option<CloseReason>> {
    // The critical sections below never panic half-way; recover the data regardless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Closing {
    /// Records `reason` if none is yet (the first reason wins) and wakes every waiter.
    pub(super) fn record(&self, reason: CloseReason) {
        let mut r = lock(&self.reason);
        if r.is_some() {
            return;
        }
        *r = Some(reason);
        self.closed.store(true, Ordering::Release);
        drop(r);
        self.wake.notify_waiters();
    }

    /// Whether a reason is recorded.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The reason, once recorded.
    pub(super) fn reason(&self) -> Option<CloseReason> {
        lock(&self.reason).clone()
    }

    /// Returns once a reason is recorded (at once if it is). Cancel-safe.
    pub(super) async fn wait(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `record` in between is not missed.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}
