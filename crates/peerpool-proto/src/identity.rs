//! Node identity: key pair, peer id and proof-of-work stamp (WIRE.md §1).
//!
//! - [`PeerId`]: Blake2b-128 of the public key, shown as base58check with prefix `0x99 0x67`
//!   (30 characters starting with `id`).
//! - [`PowTarget`]: the 256-bit target for a fractional difficulty such as 24.5.
//! - [`Identity`]: the key pair and stamp, with `identity.json` in octez's format.

use crate::crypto::{blake2b_128, blake2b_256, random_bytes, PublicKey, SecretKey, KEY_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Length of a proof-of-work stamp, bytes (a `crypto_box` nonce).
pub const STAMP_LEN: usize = 24;
/// Base58check prefix of a peer id (`Base58.Prefix.cryptobox_public_key_hash`).
const PEER_ID_PREFIX: [u8; 2] = [0x99, 0x67];

/// A proof-of-work stamp (24 bytes).
pub type Stamp = [u8; STAMP_LEN];

/// A peer's identifier: Blake2b-128 of its public key (16 raw bytes on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    /// The peer id of `public_key` (`Crypto_box.hash`).
    pub fn of_public_key(public_key: &PublicKey) -> Self {
        PeerId(blake2b_128(&[&public_key.0]))
    }

    /// The base58check text form, `id…`.
    pub fn to_b58check(&self) -> String {
        let mut payload = Vec::with_capacity(22);
        payload.extend_from_slice(&PEER_ID_PREFIX);
        payload.extend_from_slice(&self.0);
        let checksum = Sha256::digest(Sha256::digest(&payload));
        payload.extend_from_slice(&checksum[..4]);
        bs58::encode(payload).into_string()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b58check())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.to_b58check())
    }
}

/// Why a peer id's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerIdError {
    /// Not base58.
    #[error("peer id {0:?} is not base58")]
    NotBase58(String),
    /// Decoded to the wrong length or the wrong prefix (not an `id…`).
    #[error("peer id {0:?} is not a cryptobox public key hash (`id…`)")]
    WrongPrefix(String),
    /// The 4-byte checksum does not match.
    #[error("peer id {0:?} has a bad checksum")]
    BadChecksum(String),
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = bs58::decode(s)
            .into_vec()
            .map_err(|_| PeerIdError::NotBase58(s.to_owned()))?;
        if raw.len() != 2 + 16 + 4 || raw[..2] != PEER_ID_PREFIX {
            return Err(PeerIdError::WrongPrefix(s.to_owned()));
        }
        let checksum = Sha256::digest(Sha256::digest(&raw[..18]));
        if checksum[..4] != raw[18..] {
            return Err(PeerIdError::BadChecksum(s.to_owned()));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&raw[2..18]);
        Ok(PeerId(id))
    }
}

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_b58check())
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A proof-of-work target: a 256-bit unsigned integer, as four little-endian 64-bit limbs.
///
/// A stamp passes when `Blake2b-256(pk ‖ stamp)`, read as a little-endian integer, is at
/// most the target (WIRE.md §1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowTarget {
    limbs: [u64; 4],
    difficulty: f64,
}

/// Why a difficulty was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("proof-of-work difficulty {0} is outside [0, 256]")]
pub struct PowDifficultyError(pub f64);

impl PowTarget {
    /// The target for difficulty `f` in \[0, 256\] (`make_pow_target`, WIRE.md §1):
    /// with `f = shift + frac`, `m = 2^54 - 1` when `frac = 0`, else `floor(2^(54 - frac))`;
    /// below 202 the target is `(m << (202 - shift)) | (2^(202 - shift) - 1)`, else
    /// `m >> (shift - 202)`. For an integer `f` this is `2^(256 - f) - 1`.
    pub fn new(difficulty: f64) -> Result<Self, PowDifficultyError> {
        if !(0.0..=256.0).contains(&difficulty) {
            return Err(PowDifficultyError(difficulty));
        }
        let shift = difficulty.floor() as u32;
        let frac = difficulty - difficulty.floor();
        let m: u64 = if frac == 0.0 {
            (1u64 << 54) - 1
        } else {
            (54.0 - frac).exp2().floor() as u64
        };
        let mut limbs = [0u64; 4];
        if shift < 202 {
            let s = 202 - shift;
            // low s bits set
            for (i, limb) in limbs.iter_mut().enumerate() {
                let lo = i as u32 * 64;
                if s >= lo + 64 {
                    *limb = u64::MAX;
                } else if s > lo {
                    *limb = (1u64 << (s - lo)) - 1;
                }
            }
            // m << s
            let (word, bit) = ((s / 64) as usize, s % 64);
            limbs[word] |= m << bit;
            if bit > 0 && word + 1 < 4 {
                limbs[word + 1] |= m >> (64 - bit);
            }
        } else {
            limbs[0] = m >> (shift - 202);
        }
        Ok(PowTarget { limbs, difficulty })
    }

    /// The difficulty this target was made from.
    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// The target as 32 little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.limbs.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// Whether the little-endian integer `hash` is at most the target.
    pub fn accepts_hash(&self, hash: &[u8; 32]) -> bool {
        for i in (0..4).rev() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&hash[i * 8..i * 8 + 8]);
            let h = u64::from_le_bytes(b);
            if h != self.limbs[i] {
                return h < self.limbs[i];
            }
        }
        true
    }

    /// Whether `stamp` is a valid proof of work for `public_key` at this target.
    pub fn check(&self, public_key: &PublicKey, stamp: &Stamp) -> bool {
        self.accepts_hash(&pow_hash(public_key, stamp))
    }

    /// Tries up to `attempts` stamps from `stamp` on, incrementing it as a 192-bit
    /// big-endian counter. Returns the first that passes; `stamp` is left at the next
    /// one to try, so a caller can search in slices and report progress.
    pub fn search(&self, public_key: &PublicKey, stamp: &mut Stamp, attempts: u64) -> Option<Stamp> {
        for _ in 0..attempts {
            let candidate = *stamp;
            crate::crypto::Nonce(*stamp).increment_into(stamp);
            if self.check(public_key, &candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Expected number of attempts to find a stamp: 2^256 / (target + 1).
    pub fn expected_attempts(&self) -> f64 {
        let mut t = 0f64;
        for limb in self.limbs.iter().rev() {
            t = t * 18446744073709551616.0 + *limb as f64;
        }
        (2f64.powi(256) / (t + 1.0)).max(1.0)
    }
}

/// `Blake2b-256(pk ‖ stamp)`.
pub fn pow_hash(public_key: &PublicKey, stamp: &Stamp) -> [u8; 32] {
    blake2b_256(&[&public_key.0, stamp])
}

/// The number of leading zero bits of the little-endian hash (256 − bit length): the
/// largest integer difficulty the stamp passes.
pub fn pow_bits(public_key: &PublicKey, stamp: &Stamp) -> u32 {
    let h = pow_hash(public_key, stamp);
    let mut bits = 0;
    for byte in h.iter().rev() {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

impl crate::crypto::Nonce {
    /// Writes the incremented value into `out` (used by the stamp search).
    fn increment_into(mut self, out: &mut [u8; 24]) {
        self.increment();
        *out = self.0;
    }
}

/// A node's identity: key pair, peer id and proof-of-work stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Blake2b-128 of `public_key`.
    pub peer_id: PeerId,
    /// X25519 public key.
    pub public_key: PublicKey,
    /// X25519 secret key.
    pub secret_key: SecretKey,
    /// Proof-of-work stamp for `public_key`.
    pub proof_of_work_stamp: Stamp,
}

/// Why an identity (usually `identity.json`) was refused (octez's load-time checks).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IdentityError {
    /// Not JSON of the expected shape.
    #[error("identity file is not valid JSON of octez's shape: {0}")]
    Json(String),
    /// A hex field has the wrong length or characters.
    #[error("identity field {field} is not {len} bytes of hex")]
    BadHex {
        /// The JSON field.
        field: &'static str,
        /// Expected length, bytes.
        len: usize,
    },
    /// The peer id is not a valid `id…`.
    #[error(transparent)]
    PeerId(#[from] PeerIdError),
    /// The stored peer id is not the hash of the public key.
    #[error("peer_id {stored} does not match the public key (which hashes to {computed})")]
    PeerIdMismatch {
        /// The peer id in the file.
        stored: PeerId,
        /// The hash of the public key.
        computed: PeerId,
    },
    /// The secret key does not give the public key.
    #[error("secret_key does not match public_key")]
    KeyMismatch,
    /// The stamp does not reach the expected difficulty.
    #[error("proof of work is below the expected level {expected} (the stamp has {bits} bits)")]
    NotEnoughProofOfWork {
        /// Expected difficulty.
        expected: f64,
        /// What the stamp has, in whole bits.
        bits: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct IdentityJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer_id: Option<String>,
    public_key: String,
    secret_key: String,
    proof_of_work_stamp: String,
}

fn hex_field<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], IdentityError> {
    let bytes = hex::decode(s).map_err(|_| IdentityError::BadHex { field, len: N })?;
    bytes
        .try_into()
        .map_err(|_| IdentityError::BadHex { field, len: N })
}

impl Identity {
    /// Builds an identity from a secret key and stamp (no proof-of-work check).
    pub fn from_parts(secret_key: SecretKey, proof_of_work_stamp: Stamp) -> Self {
        let public_key = secret_key.public_key();
        Identity {
            peer_id: PeerId::of_public_key(&public_key),
            public_key,
            secret_key,
            proof_of_work_stamp,
        }
    }

    /// A new identity whose stamp reaches `target`, searched from a random stamp.
    /// Blocks for about `target.expected_attempts()` hashes; see [`PowTarget::search`]
    /// for a searchable-in-slices form.
    pub fn generate(target: &PowTarget, rng: &mut impl rand::RngCore) -> Self {
        let secret_key = SecretKey(random_bytes::<KEY_LEN>(rng));
        let public_key = secret_key.public_key();
        let mut stamp: Stamp = random_bytes(rng);
        loop {
            if let Some(found) = target.search(&public_key, &mut stamp, 1 << 16) {
                return Identity::from_parts(secret_key, found);
            }
        }
    }

    /// Whether the stamp reaches `target`.
    pub fn has_pow(&self, target: &PowTarget) -> bool {
        target.check(&self.public_key, &self.proof_of_work_stamp)
    }

    /// Whole bits of proof of work the stamp has.
    pub fn pow_bits(&self) -> u32 {
        pow_bits(&self.public_key, &self.proof_of_work_stamp)
    }

    /// `identity.json` text (fields `peer_id`, `public_key`, `secret_key`,
    /// `proof_of_work_stamp`, WIRE.md §1).
    pub fn to_json(&self) -> String {
        let json = IdentityJson {
            peer_id: Some(self.peer_id.to_b58check()),
            public_key: hex::encode(self.public_key.0),
            secret_key: hex::encode(self.secret_key.0),
            proof_of_work_stamp: hex::encode(self.proof_of_work_stamp),
        };
        // invariant: a struct of strings always serialises.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// Parses `identity.json` and runs octez's checks: the peer id (optional) is the hash
    /// of the public key, the secret key gives the public key, and the stamp reaches
    /// `expected` (skipped when `None`).
    pub fn from_json(text: &str, expected: Option<&PowTarget>) -> Result<Self, IdentityError> {
        let json: IdentityJson =
            serde_json::from_str(text).map_err(|e| IdentityError::Json(e.to_string()))?;
        let public_key = PublicKey(hex_field("public_key", &json.public_key)?);
        let secret_key = SecretKey(hex_field("secret_key", &json.secret_key)?);
        let stamp = hex_field("proof_of_work_stamp", &json.proof_of_work_stamp)?;
        let computed = PeerId::of_public_key(&public_key);
        if let Some(stored) = json.peer_id {
            let stored: PeerId = stored.parse()?;
            if stored != computed {
                return Err(IdentityError::PeerIdMismatch { stored, computed });
            }
        }
        if secret_key.public_key() != public_key {
            return Err(IdentityError::KeyMismatch);
        }
        let identity = Identity {
            peer_id: computed,
            public_key,
            secret_key,
            proof_of_work_stamp: stamp,
        };
        if let Some(target) = expected {
            if !identity.has_pow(target) {
                return Err(IdentityError::NotEnoughProofOfWork {
                    expected: target.difficulty(),
                    bits: identity.pow_bits(),
                });
            }
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_targets_are_two_to_the_256_minus_f_minus_one() {
        for f in [0u32, 1, 24, 26, 63, 64, 65, 200, 202, 203, 255, 256] {
            let t = PowTarget::new(f as f64).unwrap().to_le_bytes();
            // 2^(256-f) - 1: the low (256 - f) bits set.
            let ones = 256 - f;
            for bit in 0..256u32 {
                let set = t[(bit / 8) as usize] >> (bit % 8) & 1 == 1;
                assert_eq!(set, bit < ones, "f={f} bit={bit}");
            }
        }
    }

    #[test]
    fn fractional_target_lies_between_its_integer_neighbours() {
        let hi = PowTarget::new(24.0).unwrap().expected_attempts();
        let mid = PowTarget::new(24.5).unwrap().expected_attempts();
        let lo = PowTarget::new(25.0).unwrap().expected_attempts();
        assert!(hi < mid && mid < lo, "{hi} {mid} {lo}");
        assert!((mid / hi - 2f64.sqrt()).abs() < 1e-3);
    }

    #[test]
    fn out_of_range_difficulty_is_refused() {
        assert!(PowTarget::new(-1.0).is_err());
        assert!(PowTarget::new(256.5).is_err());
        assert!(PowTarget::new(f64::NAN).is_err());
    }

    #[test]
    fn generated_identity_passes_its_target_and_round_trips_json() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let target = PowTarget::new(8.0).unwrap();
        let id = Identity::generate(&target, &mut rng);
        assert!(id.has_pow(&target));
        assert!(id.pow_bits() >= 8);
        let back = Identity::from_json(&id.to_json(), Some(&target)).unwrap();
        assert_eq!(back, id);
    }
}
