//! Every cryptographic primitive peerpool uses, behind one small module so the crate
//! providing them can change (the choice is measured in `benches/crypto.rs`).
//!
//! - X25519 key pairs (NaCl `crypto_box` keys), WIRE.md §1.
//! - The channel key: `crypto_box_beforenm(remote_pk, own_sk)`, WIRE.md §3.
//! - XSalsa20-Poly1305 with that key, tag first (`tag ‖ ciphertext`), WIRE.md §6.
//! - 24-byte nonces incremented as 192-bit big-endian counters, WIRE.md §3.
//! - Blake2b-256 and Blake2b-128 (native 16-byte digest), WIRE.md §1.
//!
//! Backed by `dryoc` (pure Rust, libsodium-compatible), the fastest of the crates
//! measured (docs/BENCHMARKS.md).

use blake2::digest::consts::{U16, U32};
use blake2::{Blake2b, Digest};
use dryoc::classic::crypto_box as nacl;
use std::fmt;
use thiserror::Error;

/// Length of a Poly1305 tag, bytes.
pub const TAG_LEN: usize = 16;
/// Length of a nonce, bytes.
pub const NONCE_LEN: usize = 24;
/// Length of a key (public, secret or channel), bytes.
pub const KEY_LEN: usize = 32;

/// Cryptographic failures. Each comes from remote input and never panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The MAC did not verify: wrong key, wrong nonce, or altered bytes (octez `Decipher_error`).
    #[error("chunk failed authentication (MAC mismatch)")]
    Decipher,
    /// The remote public key is a low-order point that gives an all-zero shared secret.
    #[error("remote public key is unacceptable (low-order point)")]
    WeakPublicKey,
    /// A sealed buffer shorter than the tag.
    #[error("ciphertext of {0} bytes is shorter than the {TAG_LEN}-byte tag")]
    TooShort(usize),
}

/// An X25519 secret key (32 bytes). Its `Debug` form hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// The matching public key, X25519(sk, 9) (`Box.neuterize`).
    pub fn public_key(&self) -> PublicKey {
        let mut pk = [0u8; KEY_LEN];
        dryoc::classic::crypto_core::crypto_scalarmult_base(&mut pk, &self.0);
        PublicKey(pk)
    }
}

/// An X25519 public key (32 bytes), as sent in the connection message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

/// A 24-byte nonce, incremented as a 192-bit big-endian counter (WIRE.md §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", hex::encode(self.0))
    }
}

impl Nonce {
    /// Adds one modulo 2^192: the carry runs from byte 23 toward byte 0 (`Hacl.Nonce.increment`).
    pub fn increment(&mut self) {
        for byte in self.0.iter_mut().rev() {
            let (next, carry) = byte.overflowing_add(1);
            *byte = next;
            if !carry {
                return;
            }
        }
    }

    /// Returns the current value and advances (post-increment, one per chunk).
    pub fn take_and_increment(&mut self) -> Nonce {
        let current = *self;
        self.increment();
        current
    }
}

/// The pair of nonces one side uses: `local` to seal what it sends, `remote` to open
/// what it receives (WIRE.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoncePair {
    /// Nonce for the chunks this side writes.
    pub local: Nonce,
    /// Nonce for the chunks this side reads.
    pub remote: Nonce,
}

impl NoncePair {
    /// Derives both nonces from the two raw connection-message frames (each with its
    /// 2-byte length prefix). `incoming` is true on the responder side.
    ///
    /// `N_i2r = Blake2b-256(init ‖ resp ‖ "Init -> Resp")[..24]`,
    /// `N_r2i = Blake2b-256(init ‖ resp ‖ "Resp -> Init")[..24]`; the responder seals
    /// with `N_i2r`, the initiator with `N_r2i` (WIRE.md §3).
    pub fn derive(sent_msg: &[u8], recv_msg: &[u8], incoming: bool) -> Self {
        let (init, resp) = if incoming {
            (recv_msg, sent_msg)
        } else {
            (sent_msg, recv_msg)
        };
        let nonce = |seed: &[u8]| {
            let digest = blake2b_256(&[init, resp, seed]);
            let mut n = [0u8; NONCE_LEN];
            n.copy_from_slice(&digest[..NONCE_LEN]);
            Nonce(n)
        };
        let i2r = nonce(b"Init -> Resp");
        let r2i = nonce(b"Resp -> Init");
        if incoming {
            NoncePair {
                local: i2r,
                remote: r2i,
            }
        } else {
            NoncePair {
                local: r2i,
                remote: i2r,
            }
        }
    }
}

/// The symmetric key of one connection, `crypto_box_beforenm(remote_pk, own_sk)`.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelKey(pub [u8; KEY_LEN]);

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// HSalsa20(X25519(own_sk, remote_pk), 0); the same on both sides (WIRE.md §3).
    ///
    /// Errors with [`CryptoError::WeakPublicKey`] on a low-order remote key.
    pub fn derive(remote: &PublicKey, own: &SecretKey) -> Result<Self, CryptoError> {
        nacl::crypto_box_beforenm(&remote.0, &own.0)
            .map(ChannelKey)
            .map_err(|_| CryptoError::WeakPublicKey)
    }

    /// Appends `tag ‖ ciphertext` of `plaintext` to `out` (NaCl `crypto_box_easy_afternm`).
    pub fn seal_into(&self, nonce: &Nonce, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + TAG_LEN, 0);
        out.extend_from_slice(plaintext);
        let (tag, body) = out[start..].split_at_mut(TAG_LEN);
        let mut mac = [0u8; TAG_LEN];
        nacl::crypto_box_detached_afternm_inplace(body, &mut mac, &nonce.0, &self.0);
        tag.copy_from_slice(&mac);
    }

    /// `tag ‖ ciphertext` of `plaintext`.
    pub fn seal(&self, nonce: &Nonce, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(TAG_LEN + plaintext.len());
        self.seal_into(nonce, plaintext, &mut out);
        out
    }

    /// Opens `tag ‖ ciphertext` in place: on success `sealed[TAG_LEN..]` holds the plaintext.
    ///
    /// Errors: [`CryptoError::TooShort`] below 16 bytes, [`CryptoError::Decipher`] on a bad MAC.
    pub fn open_in_place<'b>(
        &self,
        nonce: &Nonce,
        sealed: &'b mut [u8],
    ) -> Result<&'b [u8], CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (tag, body) = sealed.split_at_mut(TAG_LEN);
        let mut mac = [0u8; TAG_LEN];
        mac.copy_from_slice(tag);
        nacl::crypto_box_open_detached_afternm_inplace(body, &mac, &nonce.0, &self.0)
            .map_err(|_| CryptoError::Decipher)?;
        Ok(body)
    }

    /// Opens `tag ‖ ciphertext` into a new buffer.
    pub fn open(&self, nonce: &Nonce, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = sealed.to_vec();
        let len = self.open_in_place(nonce, &mut buf)?.len();
        buf.drain(..TAG_LEN);
        debug_assert_eq!(buf.len(), len);
        Ok(buf)
    }
}

/// Blake2b with a 32-byte digest over the concatenation of `parts`.
pub fn blake2b_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Blake2b with a native 16-byte digest (not a truncated 32-byte one).
pub fn blake2b_128(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Blake2b::<U16>::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Fills `out` with random bytes from `rng`.
pub fn random_bytes<const N: usize>(rng: &mut impl rand::RngCore) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

/// A fresh key pair from `rng`.
pub fn generate_keypair(rng: &mut impl rand::RngCore) -> (SecretKey, PublicKey) {
    let sk = SecretKey(random_bytes(rng));
    let pk = sk.public_key();
    (sk, pk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_detects_tampering() {
        let key = ChannelKey([7; 32]);
        let nonce = Nonce([1; 24]);
        let mut sealed = key.seal(&nonce, b"hello");
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(key.open(&nonce, &sealed).unwrap(), b"hello");
        sealed[TAG_LEN] ^= 1;
        assert_eq!(key.open(&nonce, &sealed), Err(CryptoError::Decipher));
        assert_eq!(key.open(&nonce, &[0; 3]), Err(CryptoError::TooShort(3)));
    }

    #[test]
    fn nonce_next_is_post_increment() {
        let mut n = Nonce([0; 24]);
        assert_eq!(n.take_and_increment(), Nonce([0; 24]));
        let mut one = [0; 24];
        one[23] = 1;
        assert_eq!(n, Nonce(one));
    }
}
