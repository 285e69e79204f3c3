//! The pure core of peerpool: everything that decides, encodes or checks, with no I/O,
//! no clock reads and no global randomness (time comes in as arguments, randomness
//! from a caller-seeded RNG).
//!
//! # Layout
//!
//! - [`encoding`]: data-encoding primitives (big-endian ints, `u30` lengths, strings).
//! - [`crypto`]: keys, channel key, nonces, XSalsa20-Poly1305 seal/open, Blake2b.
//! - [`identity`]: peer id, proof-of-work target and search, `identity.json`.
//! - [`point`]: a point (IP address + port) and its text form.
//! - [`pool`]: the pool's decisions: point/peer state machines, tables, GC, ACL, private
//!   mode, `list_known_points`, `peers.json`, events (BEHAVIOUR.md §2, §4, §5, §11).
pub mod crypto;
pub mod encoding;
pub mod identity;
pub mod point;
pub mod pool;
