//! The peerpool runtime: tokio tasks, sockets and timers around the pure core
//! (`peerpool-proto`).
//!
//! # Layout
//!
//! - [`peers_file`]: atomic save and careful load of `peers.json` (BEHAVIOUR.md §4.6).
pub mod peers_file;
