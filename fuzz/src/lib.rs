//! What the fuzz targets share: the fixed key of the chunk-stream target, arbitrary
//! configurations of the pool and the policy ([`config`]), and a driver that applies
//! operations to a connection policy (its pool, ACL and connection manager) and checks
//! the invariants after each one ([`driver`]).
//!
//! Every check here is an `assert!`: a violated invariant is a crash the fuzzer reports,
//! like a panic inside the library.

pub mod config;
pub mod driver;
pub mod ops;

use peerpool_proto::crypto::{ChannelKey, Nonce};

/// The channel key of the chunk-stream target: the `chunks` vectors' key (WIRE.md §10), so
/// the vectors' sealed chunks are valid seeds.
pub const CHUNK_KEY: [u8; 32] = [
    0x52, 0x28, 0x75, 0x1a, 0x6f, 0x5a, 0x64, 0x94, 0xe3, 0x8e, 0x10, 0x42, 0xf5, 0x78, 0xe3, 0xa6,
    0x4a, 0xe3, 0x46, 0x2b, 0x78, 0x99, 0x35, 0x6f, 0x49, 0xe5, 0x0b, 0xe8, 0x46, 0xc9, 0x60, 0x9c,
];

/// The first nonce of the chunk-stream target (the `chunks` vectors' nonce).
pub const CHUNK_NONCE: [u8; 24] = [
    0x8d, 0xde, 0x15, 0x8c, 0x55, 0xcf, 0xf5, 0x2f, 0x4b, 0xe9, 0x35, 0x27, 0x87, 0xd3, 0x33, 0xe6,
    0x16, 0xa6, 0x78, 0x53, 0x64, 0x0d, 0x72, 0xc5,
];

/// [`CHUNK_KEY`] as a key.
pub fn chunk_key() -> ChannelKey {
    ChannelKey(CHUNK_KEY)
}

/// [`CHUNK_NONCE`] as a nonce.
pub fn chunk_nonce() -> Nonce {
    Nonce(CHUNK_NONCE)
}
