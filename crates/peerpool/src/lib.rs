//! The peerpool runtime: tokio tasks, sockets and timers around the pure core
//! (`peerpool-proto`), and the API a node embeds.
//!
//! # Layout
//!
//! - [`node`]: the facade, [`Node`]: build, activate, send and receive, connect, query,
//!   events, shutdown. Start here.
//! - [`config`]: [`NodeConfig`], plain data checked once into a [`ValidConfig`].
//! - [`error`]: typed errors ([`ConnectError`], [`SendError`], [`StartError`] …).
//! - [`event`]: [`NodeEvent`] and the [`Events`] subscription.
//! - [`transport`]: the transport seam: tokio TCP, an in-memory network for tests.
//! - [`clock`]: the injected wall clock, advanced by `tokio::time`.
//! - [`persist`]: where the peers file lives (file or memory store) and its atomic save.
//! - [`connection`]: one established connection: reader and writer tasks, bounded queues.
//! - [`budget`]: [`budget::ByteBudget`], the node-wide cap on buffered bytes.
//! - [`io_scheduler`]: the I/O scheduler every connection's bytes pass through: global and
//!   per-connection caps, fair shares, bounded read/write queues, statistics
//!   (BEHAVIOUR.md §6).
//! - [`socket`]: the handshake over a byte stream (drives the pure handshake machine).
//! - [`scheduled_stream`]: a scheduled connection as an `AsyncRead + AsyncWrite` stream.
//! - private: `owner` (the task that holds the node's state and applies the connection
//!   policy's actions), `attempt` (the I/O of one connection attempt, polled by the
//!   owner), `welcome` (the accept loop), `inbox` (incoming application queues, served
//!   in turn).
//!
//! Every decision (admission, tie-break, greylisting, whom to dial) is the pure
//! connection policy's, `peerpool_proto::policy`; this crate performs I/O and applies it.

pub mod budget;
pub mod clock;
pub mod config;
pub mod connection;
pub mod error;
pub mod event;
pub mod io_scheduler;
pub mod node;
pub mod persist;
pub mod scheduled_stream;
pub mod socket;
pub mod transport;

mod attempt;
mod inbox;
mod owner;
mod welcome;

pub use config::{ConfigError, NodeConfig, ValidConfig};
pub use connection::{CloseReason, Connection, ConnectionInfo, QueueConfig};
pub use error::{ConnectError, SendError, StartError, TrySendError};
pub use event::{EventError, Events, NodeEvent};
pub use inbox::Received;
pub use node::{Broadcast, Node, NodeBuilder, NodeStats, PeerMetadata};
