//! Waiting on a [`Notify`] for a condition, without missing a wake-up.

use tokio::sync::Notify;

/// Returns what `ready` gives once it gives something: checked at once, then each time
/// `notify` wakes this waiter. The waiter is registered before every check, so a change
/// made (and notified, by `notify_one` or `notify_waiters`) between the check and the
/// wait is not missed. Cancel-safe if `ready` is.
pub(crate) async fn wait_until<T>(notify: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(t) = ready() {
            return t;
        }
        notified.await;
    }
}
