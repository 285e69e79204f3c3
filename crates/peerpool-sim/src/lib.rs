//! Deterministic network simulation of peerpool nodes, with turmoil (the tokio project's
//! network simulator). The real node code runs inside, not a model of it: each simulated
//! host runs a [`peerpool::Node`] over [`SimTransport`], with simulated time, latency,
//! message loss, partitions, and hosts crashing and restarting with their data.
//!
//! # Layout
//!
//! - [`transport`]: [`SimTransport`], peerpool's transport seam over turmoil's TCP.
//! - [`scenario`]: [`Scenario`] (nodes, wiring, duration, faults) and [`run`], which gives
//!   a [`Report`]: the trace of every node's events stamped with simulated time, the
//!   connection counts, and the simulated seconds per real second.
//! - [`cluster`]: [`Cluster`], real nodes on the in-memory network in one paused runtime:
//!   protocol scenarios (maintenance, swap, Nack referrals …) driven step by step, and
//!   networks of hundreds of nodes in seconds.
//! - [`soak`]: [`Soak`], a long run with churn, partitions and healing on a cluster, every
//!   node audited against its invariants all along ([`run_soak`]).
//!
//! The same seed gives the same trace, byte for byte: identities, wiring, every node's
//! RNG, the network's randomness and the churn schedule all come from it, the nodes read
//! no clock but tokio's (which turmoil drives), and the runtime's `select!`s are biased.
//!
//! ```no_run
//! let report = peerpool_sim::run(&peerpool_sim::Scenario::sandbox(7)).unwrap();
//! assert!(report.connections.iter().all(|c| *c > 0));
//! println!("{:.0} simulated seconds per real second", report.speed());
//! ```

#![warn(missing_docs)]

pub mod cluster;
pub mod scenario;
pub mod soak;
pub mod transport;

pub use cluster::{Cluster, Member};
pub use scenario::{address, node_of, run, Churn, Partition, Report, Sample, Scenario, Topology};
pub use soak::{run_soak, Soak, SoakReport};
pub use transport::SimTransport;
