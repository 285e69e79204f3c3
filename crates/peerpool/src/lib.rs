//! The peerpool runtime: tokio tasks, sockets and timers around the pure core
//! ([`peerpool_proto`]).
//!
//! # Layout
//!
//! - [`io_scheduler`]: the I/O scheduler every connection's bytes pass through: global and
//!   per-connection caps, fair shares, bounded read/write queues, statistics
//!   (BEHAVIOUR.md §6).
pub mod io_scheduler;
