//! The peerpool runtime: tokio tasks, sockets and timers around the pure core
//! (`peerpool-proto`). This is the API a node embeds.
//!
//! # Layout
//!
//! - [`budget`]: [`budget::ByteBudget`], the node-wide cap on buffered bytes.
//! - [`socket`]: the handshake over a byte stream (drives the pure handshake machine).
//! - [`connection`]: one established connection: reader and writer tasks, bounded queues.
//! - [`node`]: the node: listener, dialer, table of established connections, control
//!   messages (Bootstrap → Advertise), events.
//! - [`io_scheduler`]: the I/O scheduler every connection's bytes pass through: global and
//!   per-connection caps, fair shares, bounded read/write queues, statistics
//!   (BEHAVIOUR.md §6).
//! - [`peers_file`]: atomic save and careful load of `peers.json` (BEHAVIOUR.md §4.6).
//! - [`scheduled_stream`]: a scheduled connection as an `AsyncRead + AsyncWrite` stream.

pub mod budget;
pub mod connection;
pub mod io_scheduler;
pub mod node;
pub mod peers_file;
pub mod scheduled_stream;
pub mod socket;
