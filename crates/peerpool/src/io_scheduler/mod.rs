//! The I/O scheduler: every byte a connection reads or writes passes through it
//! (BEHAVIOUR.md §6, octez `P2p_io_scheduler`).
//!
//! [`IoScheduler::register`] takes any byte stream (`TcpStream`, `tokio::io::duplex`, ...) and
//! returns a [`ScheduledConnection`]. Two tasks per connection move the bytes: when the
//! connection's download is capped (global or per-connection cap), a *reader* task reads at
//! most `read_buffer_size` bytes from the socket, asks the scheduler for permission to
//! deliver them, then pushes them into the connection's bounded read queue; when it is not
//! capped (every request would be granted at once), the reader task stays parked and the
//! consumer's `poll_read` reads the socket itself once the read queue is empty (*direct
//! read*: no task hop, no extra copy for reads of at least `read_buffer_size` bytes; smaller
//! reads read `read_buffer_size` bytes and queue the rest), counting the bytes in the
//! scheduler as a grant would ([`Scheduler::record`]). Setting or removing a cap switches
//! between the two at once, in order: the socket is only ever read by one side at a time
//! and never while bytes read by the task wait for their grant. A *writer* task takes the
//! next queued buffer (split into pieces of at most `read_buffer_size` bytes when the upload
//! or the connection is capped) from the bounded write queue, asks for permission, then
//! writes it to the socket. One *dispatcher* task per scheduler hands out permissions that
//! had to wait (global cap reached, per-connection cap reached) and runs the one-second
//! refresh of quotas and moving averages. All the arithmetic lives in
//! [`peerpool_proto::scheduler`]; this module only moves bytes and timers.
//!
//! [`Scheduler::record`]: peerpool_proto::scheduler::Scheduler::record
//!
//! Queues, all bounded:
//! - read queue, `read_queue_size` bytes: when full, the reader task stops reading that
//!   socket, so TCP flow control pushes back on the remote; other connections are not
//!   affected. Nothing is dropped. With direct reads the socket is read only when the
//!   consumer reads, so the pushback starts even earlier (no read-ahead beyond the socket's
//!   own buffers).
//! - write queue, `write_queue_size` bytes: [`ScheduledConnection::write`] waits for room,
//!   [`ScheduledConnection::write_now`] refuses (returns `false`). As in octez's pipes, a
//!   buffer is accepted when `queued + len < write_queue_size` or the queue is empty, so the
//!   queue holds at most `max(write_queue_size, largest single buffer)` bytes.
//! - the dispatcher's waiting requests: at most one per connection and direction.
//!
//! Budget: with [`IoScheduler::with_budget`] the read queues of all connections also count
//! against one node-wide [`ByteBudget`](crate::budget::ByteBudget). A capped connection's
//! reader task takes the bytes it is about to read from the budget before reading the
//! socket (when the budget is spent, it waits and the socket is not read: TCP pushes back);
//! the bytes hold their part in the read queue and give it back as the consumer reads them.
//! Direct reads hold budget only for what a small read queues.
//!
//! Fairness: when a direction is capped, requests that have to wait are served
//! high-quota-first (octez's rule) with shares proportional to connection weights; see
//! [`peerpool_proto::scheduler`] for the arithmetic and where it departs from octez. When
//! nothing is capped every request is granted at once, so weights have no effect.
//!
//! Determinism: time comes only from `tokio::time` (so tests run under
//! `tokio::time::pause()`), every `select!` is `biased` (a fixed polling order instead of
//! tokio's random one), and no iteration goes over a randomly hashed map, so under a
//! deterministic simulator (current-thread runtime, paused clock) a seed gives the same run.
//!
//! # Layout
//!
//! - `mod.rs`: this overview, the public re-exports, the poison-tolerant lock helper.
//! - `config.rs`: [`IoSchedulerConfig`] and its defaults, [`IoSchedulerError`],
//!   [`ConnectionInfo`].
//! - `shared.rs`: the state one scheduler's tasks share (the arithmetic core, the waiting
//!   requests, the registered connections) and the dispatcher task.
//! - `conn.rs`: the state one connection's tasks and handles share, and its life: close
//!   (flush, then stop) and cancel (stop now).
//! - `read.rs`: the read side: the read queue and its budget, the reader task, direct
//!   reads, [`ScheduledReader`].
//! - `write.rs`: the write side: the write queue, the writer task, [`ScheduledWriter`].
//! - `handle.rs`: the public handles [`IoScheduler`] and [`ScheduledConnection`].

mod config;
mod conn;
mod handle;
mod read;
mod shared;
mod write;

pub use config::{
    ConnectionInfo, IoSchedulerConfig, IoSchedulerError, DEFAULT_QUEUE_SIZE,
    DEFAULT_READ_BUFFER_SIZE,
};
pub use handle::{IoScheduler, ScheduledConnection};
pub use peerpool_proto::scheduler::{MaState, Stat};
pub use read::ScheduledReader;
pub use write::ScheduledWriter;

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a panicking thread poisoned it: every critical section
/// here leaves the state consistent between statements, so the data stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let s = IoScheduler::new(IoSchedulerConfig::default()).unwrap();
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let (mut reader, _writer) = s.register(a).unwrap().split();
        b.write_all(b"hello").await.unwrap();
        // A small direct read reads ahead into the scratch buffer and queues the rest.
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).await.unwrap();
        assert!(lock(&reader.owner.conn.read).scratch.capacity() > 0);
        let mut three = [0u8; 3];
        reader.read_exact(&mut three).await.unwrap();
        assert_eq!((&two, &three), (b"he", b"llo"));
        // Nothing more to read: the reader waits, holding no buffer.
        let mut read = Box::pin(reader.read(&mut two));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(read.as_mut().poll(&mut cx).is_pending());
        drop(read);
        let q = lock(&reader.owner.conn.read);
        assert_eq!((q.scratch.capacity(), q.chunks.capacity()), (0, 0));
    }
}
