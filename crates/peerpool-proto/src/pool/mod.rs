//! The pool's pure core (BEHAVIOUR.md §2, §4, §5): the tables of known and connected points
//! and peer ids, their state machines, GC, the ACL, private mode, `list_known_points`, the
//! peers file and the events the pool emits. It decides; the runtime's pool task owns one
//! [`Pool`], feeds it `now` and results of I/O, and acts on what it returns.
//!
//! # Layout
//!
//! Building blocks, public modules:
//!
//! - [`time`]: [`Time`], wall-clock time as a `Duration` since the Unix epoch, RFC 3339.
//! - [`point_state`]: the point state machine, history and reconnection backoff (§2.1).
//! - [`peer_state`]: the peer state machine and history (§2.2), [`IdPoint`].
//! - [`acl`]: peer and IP greylists (counting Bloom filter), blacklists, failure policy (§5).
//! - [`events`]: [`P2pEvent`] (the `/network/log` stream, §11) and [`Trigger`].
//! - [`peers_file`]: `peers.json` parse/serialize (§4.6).
//!
//! The one [`Pool`] type, split by responsibility into private files (each an
//! `impl<M: PeerMeta> Pool<M>` block; every item is re-exported here):
//!
//! - `config.rs`: [`PoolConfig`] and its checks, [`PoolError`].
//! - `base.rs`: the [`Pool`] struct and [`Pool::new`], [`PeerMeta`], the RNG-keyed table
//!   hashing [`SeededState`], the event and trigger outboxes.
//! - `register.rs`: registration of points and peers (§4.2), our own points
//!   ([`MY_ID_POINTS`]), expected peer ids (§4.5), read access to the tables.
//! - `transitions.rs`: point and peer state transitions, with their events and triggers.
//! - `gc.rs`: garbage collection of known points and peer ids (§4.3).
//! - `acl_ops.rs`: ban/unban, trust/untrust, open, greylisting and the failure policy on the
//!   pool (§5), [`Disconnect`].
//! - `admission.rs`: acceptance checks of dials and connections, dial candidates.
//! - `advertise.rs`: [`Pool::list_known_points`] (§4.4).
//! - `records.rs`: the pool's tables to and from peers-file records (§4.6).
//!
//! Tests: `tests.rs` (scenarios) and `proptests.rs` (random operation sequences).
//!
//! # Sans-IO contract
//!
//! Every method that depends on time takes `now`; randomness comes from an RNG the caller
//! seeds (the hash tables are keyed from it too, so a seeded pool is deterministic).
//! Events and triggers go to bounded outboxes drained with [`Pool::poll_event`] and
//! [`Pool::poll_trigger`]; the next IP-greylist countdown is [`Pool::poll_timeout`].

pub mod acl;
pub mod events;
pub mod peer_state;
pub mod peers_file;
pub mod point_state;
pub mod time;

mod acl_ops;
mod admission;
mod advertise;
mod base;
mod config;
mod gc;
mod records;
mod register;
mod transitions;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use acl::{acl_action, Acl, AclAction, AclConfig, AclError, Failure};
pub use acl_ops::Disconnect;
pub use base::{PeerMeta, Pool, SeededState};
pub use config::{PoolConfig, PoolError};
pub use events::{P2pEvent, Trigger};
pub use peer_state::{IdPoint, PeerEvent, PeerEventKind, PeerInfo, PeerState};
pub use peers_file::{PeerRecord, PeersFileError, PointRecord};
pub use point_state::{PointEvent, PointEventKind, PointInfo, PointState, ReconnectionConfig};
pub use register::{ExpectedPeerIdOutcome, Medium, NewPoints, Registration, MY_ID_POINTS};
pub use time::Time;
