//! A connection's outgoing queues, read by its writer task: control messages (bounded,
//! refused when full) go before application messages (bounded in messages; senders wait
//! for room, in turn).
//!
//! Two tokio `mpsc` channels did this before; each allocates its first block of 32 slots
//! (and its shared state, ~0.5 KiB) up front, about 2.6 KiB per connection end that sits
//! idle. Here everything is inline in the connection's shared state, and the queues hold
//! storage only while messages wait (an emptied queue gives its storage back).

use super::charge::Charge;
use crate::budget::Reservation;
use crate::error::{SendError, TrySendError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, Semaphore, TryAcquireError};

/// An encoded message (envelope) waiting for the writer.
pub(super) type Encoded = Arc<Vec<u8>>;

/// The queues of one connection.
pub(super) struct Outbox {
    state: Mutex<Queues>,
    /// Room in the application queue, messages: a sender takes one permit and leaves it
    /// with its message; the writer gives it back when it takes the message. A semaphore
    /// serves waiting senders in order, as the bounded `mpsc` did. Closed with the outbox.
    app_room: Semaphore,
    /// Wakes the writer: a message was queued (one waiter, the writer).
    ready: Notify,
    /// Bound of the control queue, messages.
    control_max: usize,
}

#[derive(Default)]
struct Queues {
    control: VecDeque<Encoded>,
    /// Application messages, each with its part of the connection's byte bound (given back
    /// when the writer takes it) and its charge of bytes in flight (handed to the writer
    /// with the message, kept until the bytes are written).
    app: VecDeque<(Encoded, Reservation, Option<Charge>)>,
    /// The writer is gone: nothing is queued any more.
    closed: bool,
}

fn lock(m: &Mutex<Queues>) -> MutexGuard<'_, Queues> {
    // The critical sections below never panic half-way; recover the data regardless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// Queues bounded at `control_max` control and `app_max` application messages (each
    /// at least 1).
    pub(super) fn new(control_max: usize, app_max: usize) -> Self {
        Outbox {
            state: Mutex::new(Queues::default()),
            app_room: Semaphore::new(app_max.clamp(1, Semaphore::MAX_PERMITS)),
            ready: Notify::new(),
            control_max: control_max.max(1),
        }
    }

    /// Queues a control message; `false` if the control queue is full or closed.
    pub(super) fn try_control(&self, message: Encoded) -> bool {
        let mut q = lock(&self.state);
        if q.closed || q.control.len() >= self.control_max {
            return false;
        }
        q.control.push_back(message);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Queues an application message, waiting while the queue is full. Cancel-safe: if
    /// the future is dropped, nothing was queued.
    ///
    /// Errors: [`SendError::Closed`] once the writer is gone.
    pub(super) async fn app(
        &self,
        message: Encoded,
        held: Reservation,
        charge: Option<Charge>,
    ) -> Result<(), SendError> {
        let permit = self
            .app_room
            .acquire()
            .await
            .map_err(|_| SendError::Closed)?;
        self.push_app(permit, message, held, charge)
            .map_err(|_| SendError::Closed)
    }

    /// Queues an application message if the queue has room now.
    ///
    /// Errors: [`TrySendError::Full`], [`TrySendError::Closed`].
    pub(super) fn try_app(
        &self,
        message: Encoded,
        held: Reservation,
        charge: Option<Charge>,
    ) -> Result<(), TrySendError> {
        let permit = self.app_room.try_acquire().map_err(|e| match e {
            TryAcquireError::NoPermits => TrySendError::Full,
            TryAcquireError::Closed => TrySendError::Closed,
        })?;
        self.push_app(permit, message, held, charge)
            .map_err(|_| TrySendError::Closed)
    }

    /// Queues `message` with the room `permit` stands for; `Err` if closed meanwhile.
    fn push_app(
        &self,
        permit: tokio::sync::SemaphorePermit<'_>,
        message: Encoded,
        held: Reservation,
        charge: Option<Charge>,
    ) -> Result<(), ()> {
        let mut q = lock(&self.state);
        if q.closed {
            return Err(());
        }
        // The writer gives the permit back when it takes the message.
        permit.forget();
        q.app.push_back((message, held, charge));
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// The next message, control first, with its charge of bytes in flight (application
    /// messages); `None` if none is queued. An application message's room and byte
    /// reservation are given back as it is taken.
    pub(super) fn try_next(&self) -> Option<(Encoded, Option<Charge>)> {
        let mut q = lock(&self.state);
        let next = match q.control.pop_front() {
            Some(m) => Some((m, None)),
            None => q.app.pop_front().map(|(m, _held, charge)| {
                self.app_room.add_permits(1);
                (m, charge)
            }),
        };
        if q.control.is_empty() && q.app.is_empty() {
            // Idle: hold no queue storage.
            *q = Queues {
                closed: q.closed,
                ..Queues::default()
            };
        }
        next
    }

    /// The next control message, if any (the writer flushes these when it closes).
    pub(super) fn try_control_next(&self) -> Option<Encoded> {
        lock(&self.state).control.pop_front()
    }

    /// Waits for the next message, control first (the writer is the only caller).
    pub(super) async fn next(&self) -> (Encoded, Option<Charge>) {
        crate::notify::wait_until(&self.ready, || self.try_next()).await
    }

    /// Closes the queues (the writer is gone): queued messages are dropped, their
    /// reservations given back; senders, waiting or not, get `Closed`.
    pub(super) fn close(&self) {
        let dropped = {
            let mut q = lock(&self.state);
            q.closed = true;
            (std::mem::take(&mut q.control), std::mem::take(&mut q.app))
        };
        self.app_room.close();
        drop(dropped);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use crate::budget::ByteBudget;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn msg(n: u8) -> Encoded {
        Arc::new(vec![n])
    }

    #[tokio::test]
    async fn control_messages_go_first_and_the_control_queue_refuses_when_full() {
        let out = Outbox::new(2, 10);
        out.try_app(msg(1), Reservation::empty(), None).unwrap();
        assert!(out.try_control(msg(10)));
        assert!(out.try_control(msg(11)));
        assert!(!out.try_control(msg(12)), "control queue full");
        out.try_app(msg(2), Reservation::empty(), None).unwrap();
        let order: Vec<u8> = std::iter::from_fn(|| out.try_next())
            .map(|(m, _)| m[0])
            .collect();
        assert_eq!(order, [10, 11, 1, 2]);
        assert!(out.try_next().is_none());
    }

    #[tokio::test]
    async fn a_full_app_queue_makes_senders_wait_and_taking_a_message_makes_room() {
        let out = Arc::new(Outbox::new(1, 1));
        let budget = ByteBudget::new(100);
        out.try_app(msg(1), budget.try_reserve(10).unwrap(), None)
            .unwrap();
        assert_eq!(
            out.try_app(msg(2), Reservation::empty(), None),
            Err(TrySendError::Full)
        );
        let mut waiting = Box::pin({
            let out = out.clone();
            async move { out.app(msg(3), Reservation::empty(), None).await }
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // Taking the message gives back its room and its reservation.
        assert_eq!(out.next().await.0[0], 1);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        assert_eq!(out.next().await.0[0], 3);
    }

    #[tokio::test]
    async fn closing_drops_what_is_queued_and_refuses_senders_waiting_or_not() {
        let out = Arc::new(Outbox::new(1, 1));
        let budget = ByteBudget::new(100);
        out.try_app(msg(1), budget.try_reserve(10).unwrap(), None)
            .unwrap();
        let mut waiting = Box::pin({
            let out = out.clone();
            async move { out.app(msg(2), Reservation::empty(), None).await }
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        out.close();
        assert_eq!(budget.in_use(), 0);
        assert_eq!(
            waiting.as_mut().poll(&mut cx),
            Poll::Ready(Err(SendError::Closed))
        );
        assert_eq!(
            out.try_app(msg(3), Reservation::empty(), None),
            Err(TrySendError::Closed)
        );
        assert!(!out.try_control(msg(4)));
        assert!(out.try_next().is_none());
    }
}
