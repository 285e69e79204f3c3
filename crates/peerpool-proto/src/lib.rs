//! The pure core of peerpool: everything that decides, encodes or checks, with no I/O,
//! no clock reads and no global randomness (time comes in as arguments, randomness
//! from a caller-seeded RNG).
//!
//! # Layout
//!
//! - [`encoding`]: data-encoding primitives (big-endian ints, `u30` lengths, strings).
//! - [`crypto`]: keys, channel key, nonces, XSalsa20-Poly1305 seal/open, Blake2b.
//! - [`identity`]: peer id, proof-of-work target and search, `identity.json`.
//! - [`netgroup`]: IPv4 /16 and IPv6 /32 address groups (eclipse defences).
//! - [`point`]: a point (IP address + port) and its text form.
//! - [`connection_message`]: the cleartext connection message, metadata, Ack/Nack, version selection.
//! - [`framing`]: encrypted chunks (seal/open, nonce counters) and the message stream decoder.
//! - [`message`]: the P2P message envelope, control messages, and the application message trait.
//! - [`handshake`]: the authenticated handshake as a sans-IO state machine.
//! - [`policy`]: the connection policy: attempts, admission, tie-break, pool
//!   transitions, ACL reactions, Bootstrap/Advertise, dial planning (BEHAVIOUR.md §1-§5, §7.3).
//! - [`scheduler`]: bandwidth-scheduler arithmetic: token buckets, fair-share quotas,
//!   who goes next, moving-average statistics (BEHAVIOUR.md §6).
//! - [`pool`]: the pool's decisions: point/peer state machines, tables, GC, ACL, private
//!   mode, `list_known_points`, `peers.json`, events (BEHAVIOUR.md §2, §4, §5, §11).
//! - [`discovery`]: local discovery: the 28-byte UDP announcement and the sender's
//!   backoff (BEHAVIOUR.md §8).

#![warn(missing_docs)]
pub mod connection_message;
pub mod connmgr;
pub mod crypto;
pub mod discovery;
pub mod encoding;
pub mod framing;
pub mod handshake;
pub mod identity;
pub mod message;
pub mod netgroup;
pub mod point;
pub mod policy;
pub mod pool;
pub mod scheduler;
