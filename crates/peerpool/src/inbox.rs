//! Incoming application messages: one bounded queue per connection, and one node-wide
//! ring of the queues that hold messages, so [`Inbox::recv_any`] serves connections in
//! turn (round robin: one message from each ready connection before a second from any).
//!
//! A queue is bounded in messages (octez `incoming_app_message_queue_size`, default 10)
//! and in bytes; as in octez's pipes, a message is always taken when the queue is empty,
//! so a single message larger than the byte bound still passes. When a queue is full its
//! connection's reader waits, and that socket stops being read (TCP flow control) while
//! every other connection goes on. Each queued message holds its reservation of the
//! node-wide [`ByteBudget`](crate::budget::ByteBudget) until the application takes it.

use crate::budget::Reservation;
use peerpool_proto::identity::PeerId;
use peerpool_proto::policy::ConnectionId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections below never panic half-way; recover the data regardless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A received application message with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<M> {
    /// The connection it came on.
    pub connection: ConnectionId,
    /// The peer that sent it.
    pub peer_id: PeerId,
    /// The message.
    pub message: M,
}

struct Item<M> {
    message: M,
    bytes: usize,
    _reservation: Reservation,
}

struct QueueState<M> {
    items: VecDeque<Item<M>>,
    bytes: usize,
    closed: bool,
    /// The queue is (or is about to be) in the inbox's ready ring.
    in_ring: bool,
}

/// Why [`Inbox::try_push`] did not queue a message.
pub(crate) enum Refused<M> {
    /// The queue is full: push it with [`Inbox::push_waiting`].
    Full(Waiting<M>),
    /// The queue is closed: the message back.
    Closed(M),
}

/// A message waiting for room in its queue.
pub(crate) struct Waiting<M>(Item<M>);

/// What [`Inbox::offer`] did with an item.
enum Offer<M> {
    Taken,
    Full(Item<M>),
    Closed(M),
}

impl<M> QueueState<M> {
    /// Takes the oldest message; an emptied queue gives its storage back (an idle
    /// connection holds none).
    fn pop(&mut self) -> Option<Item<M>> {
        let item = self.items.pop_front()?;
        self.bytes -= item.bytes;
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
        Some(item)
    }
}

/// One connection's queue of incoming application messages.
pub(crate) struct ConnQueue<M> {
    id: ConnectionId,
    peer_id: PeerId,
    max_messages: usize,
    max_bytes: usize,
    state: Mutex<QueueState<M>>,
    /// Signalled when a message arrives or the queue closes (per-connection `recv`).
    readable: Notify,
    /// Signalled when room is made (the reader waits on it).
    room: Notify,
}

impl<M> std::fmt::Debug for ConnQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnQueue")
            .field("id", &self.id)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// The node-wide ring of ready queues.
pub(crate) struct Inbox<M> {
    ring: Mutex<VecDeque<Arc<ConnQueue<M>>>>,
    ready: Notify,
}

impl<M> std::fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("ready_queues", &lock(&self.ring).len())
            .finish()
    }
}

impl<M> Default for Inbox<M> {
    fn default() -> Self {
        Inbox {
            ring: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
        }
    }
}

impl<M: Send + 'static> Inbox<M> {
    /// A queue for a new connection.
    pub(crate) fn queue(
        &self,
        id: ConnectionId,
        peer_id: PeerId,
        max_messages: usize,
        max_bytes: usize,
    ) -> Arc<ConnQueue<M>> {
        Arc::new(ConnQueue {
            id,
            peer_id,
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                in_ring: false,
            }),
            readable: Notify::new(),
            room: Notify::new(),
        })
    }

    fn enqueue_ready(&self, queue: Arc<ConnQueue<M>>) {
        lock(&self.ring).push_back(queue);
        self.ready.notify_one();
    }

    /// Pushes `message` (`bytes` long, holding `reservation`) on `queue`, waiting while the
    /// queue is full. Returns the message back if the queue is closed. (The reader uses
    /// [`Inbox::try_push`] and [`Inbox::push_waiting`], so that only a wait allocates.)
    #[cfg(test)]
    pub(crate) async fn push(
        &self,
        queue: &Arc<ConnQueue<M>>,
        message: M,
        bytes: usize,
        reservation: Reservation,
    ) -> Result<(), M> {
        match self.try_push(queue, message, bytes, reservation) {
            Ok(()) => Ok(()),
            Err(Refused::Closed(message)) => Err(message),
            Err(Refused::Full(item)) => self.push_waiting(queue, item).await,
        }
    }

    /// Pushes `message` (`bytes` long, holding `reservation`) on `queue` if it has room
    /// now. Errors: [`Refused::Full`] (the message, to push with [`Inbox::push_waiting`]),
    /// [`Refused::Closed`] (the message back).
    pub(crate) fn try_push(
        &self,
        queue: &Arc<ConnQueue<M>>,
        message: M,
        bytes: usize,
        reservation: Reservation,
    ) -> Result<(), Refused<M>> {
        let item = Item {
            message,
            bytes,
            _reservation: reservation,
        };
        match self.offer(queue, item) {
            Offer::Taken => Ok(()),
            Offer::Closed(message) => Err(Refused::Closed(message)),
            Offer::Full(item) => Err(Refused::Full(Waiting(item))),
        }
    }

    /// Pushes a message [`Inbox::try_push`] found no room for, waiting for room. Returns
    /// the message back if the queue is closed.
    pub(crate) async fn push_waiting(
        &self,
        queue: &Arc<ConnQueue<M>>,
        item: Waiting<M>,
    ) -> Result<(), M> {
        let mut item = item.0;
        loop {
            let room = queue.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            item = match self.offer(queue, item) {
                Offer::Taken => return Ok(()),
                Offer::Closed(message) => return Err(message),
                Offer::Full(item) => item,
            };
            room.await;
        }
    }

    /// Queues `item` if `queue` has room (an empty queue always has), and puts the queue
    /// in the ready ring.
    fn offer(&self, queue: &Arc<ConnQueue<M>>, item: Item<M>) -> Offer<M> {
        // The guard lives only in this block.
        let ring = {
            let mut state = lock(&queue.state);
            if state.closed {
                return Offer::Closed(item.message);
            }
            let room = state.items.is_empty()
                || (state.items.len() < queue.max_messages
                    && state.bytes + item.bytes <= queue.max_bytes);
            if !room {
                return Offer::Full(item);
            }
            state.bytes += item.bytes;
            state.items.push_back(item);
            let ring = !state.in_ring;
            state.in_ring = true;
            ring
        };
        queue.readable.notify_one();
        if ring {
            self.enqueue_ready(queue.clone());
        }
        Offer::Taken
    }

    /// The next message from any connection, connections served in turn; waits while
    /// there is none. Never returns `None`: the inbox lives as long as the node.
    pub(crate) async fn recv_any(&self) -> Received<M> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(received) = self.take_next() {
                return received;
            }
            ready.await;
        }
    }

    /// One message from the first ready queue, if any; the queue goes to the back of the
    /// ring if it holds more. Locks the ring and a queue one after the other, never both.
    fn take_next(&self) -> Option<Received<M>> {
        loop {
            let queue = lock(&self.ring).pop_front()?;
            let taken = {
                let mut state = lock(&queue.state);
                match state.pop() {
                    None => {
                        state.in_ring = false;
                        None
                    }
                    Some(item) => {
                        let more = !state.items.is_empty();
                        state.in_ring = more;
                        Some((item, more))
                    }
                }
            };
            let Some((item, more)) = taken else { continue };
            queue.room.notify_one();
            let received = Received {
                connection: queue.id,
                peer_id: queue.peer_id,
                message: item.message,
            };
            if more {
                self.enqueue_ready(queue);
            }
            return Some(received);
        }
    }
}

impl<M> ConnQueue<M> {
    /// The next message of this connection; `None` once the queue is closed and empty.
    pub(crate) async fn recv(&self) -> Option<M> {
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if let Some(item) = state.pop() {
                    let more = !state.items.is_empty();
                    drop(state);
                    self.room.notify_one();
                    if more {
                        // Another receiver of this queue may be waiting.
                        self.readable.notify_one();
                    }
                    return Some(item.message);
                }
                if state.closed {
                    return None;
                }
            }
            readable.await;
        }
    }

    /// Closes the queue: pushes fail, queued messages can still be received.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.readable.notify_waiters();
        self.room.notify_waiters();
    }

    /// Messages and bytes queued.
    pub(crate) fn len(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.items.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests;
