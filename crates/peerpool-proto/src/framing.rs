//! Encrypted chunk framing after the handshake (WIRE.md §6).
//!
//! A chunk on the wire is `u16 L ‖ tag(16) ‖ ciphertext(L − 16)` with `16 ≤ L ≤ 65535`.
//! Each direction has its own nonce, used once per chunk and then incremented. A writer
//! cuts every message into pieces of at most `chunk_size` plaintext bytes (default and
//! maximum 65517) and never packs two messages in one chunk; a reader must not assume
//! that, so [`MessageDecoder`] reassembles messages from a stream of plaintext.

use crate::crypto::{ChannelKey, CryptoError, Nonce, TAG_LEN};
use crate::encoding::DecodeError;
use thiserror::Error;

/// Length of a chunk's length prefix, bytes.
pub const CHUNK_HEADER_LEN: usize = 2;
/// Largest `L` (tag + ciphertext), bytes.
pub const MAX_CHUNK_LEN: usize = u16::MAX as usize;
/// Largest plaintext a writer puts in one chunk, bytes (`max_content_length` = 65535 − 18).
/// Readers accept up to `MAX_CHUNK_LEN - 16`.
pub const MAX_CHUNK_PAYLOAD: usize = MAX_CHUNK_LEN - TAG_LEN - CHUNK_HEADER_LEN;

/// Why a chunk or message from the peer was refused. Every variant comes from remote
/// input; the connection is closed and, per BEHAVIOUR.md §1.2, the peer's address is
/// greylisted for all but [`FramingError::MessageTooLarge`] on our own sends.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    /// `L < 16`: no room for the tag (octez `Invalid_incoming_ciphertext_size`).
    #[error("chunk length {0} is below the 16-byte tag")]
    ChunkTooShort(usize),
    /// The chunk failed authentication (octez `Decipher_error`).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A message's bytes did not decode (octez `Decoding_error`).
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// A message announced a size above the bound.
    #[error("message of {len} bytes exceeds the {max}-byte bound")]
    MessageTooLarge {
        /// Announced size, bytes.
        len: usize,
        /// Bound, bytes.
        max: usize,
    },
}

/// Why a chunk size setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("chunk payload size {0} is outside 1..=65517 bytes")]
pub struct ChunkSizeError(pub usize);

/// Plaintext bytes per chunk for octez's `binary_chunks_size` setting in KiB
/// (`x * 1024 − 18`; `None` → 65517). Errors when the result is outside 1..=65517.
pub fn chunk_payload_size(binary_chunks_size_kib: Option<u32>) -> Result<usize, ChunkSizeError> {
    match binary_chunks_size_kib {
        None => Ok(MAX_CHUNK_PAYLOAD),
        Some(kib) => {
            let size = (kib as usize * 1024).saturating_sub(TAG_LEN + CHUNK_HEADER_LEN);
            if size == 0 || size > MAX_CHUNK_PAYLOAD {
                Err(ChunkSizeError(size))
            } else {
                Ok(size)
            }
        }
    }
}

/// Seals outgoing chunks with the local nonce.
#[derive(Debug, Clone)]
pub struct ChunkSealer {
    key: ChannelKey,
    nonce: Nonce,
    payload_size: usize,
}

impl ChunkSealer {
    /// A sealer starting at `nonce`, cutting messages into chunks of at most
    /// `payload_size` plaintext bytes (clamped to 1..=65517).
    pub fn new(key: ChannelKey, nonce: Nonce, payload_size: usize) -> Self {
        ChunkSealer {
            key,
            nonce,
            payload_size: payload_size.clamp(1, MAX_CHUNK_PAYLOAD),
        }
    }

    /// The nonce the next chunk will use.
    pub fn nonce(&self) -> Nonce {
        self.nonce
    }

    /// Appends one chunk (`u16 L ‖ tag ‖ ciphertext`) of `plaintext` (≤ 65517 bytes) to `out`.
    pub fn seal_chunk(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        debug_assert!(plaintext.len() <= MAX_CHUNK_PAYLOAD);
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u16).to_be_bytes());
        let nonce = self.nonce.take_and_increment();
        self.key.seal_into(&nonce, plaintext, out);
    }

    /// Bytes that [`seal_message`](Self::seal_message) appends for a message of `len`
    /// bytes, at most: the message plus a 2-byte header and a 16-byte tag per chunk
    /// (WIRE.md §6).
    pub fn sealed_len(&self, len: usize) -> usize {
        len + (len / self.payload_size + 1) * (TAG_LEN + 2)
    }

    /// Appends the chunks of one encoded message to `out`, cut at `payload_size`.
    pub fn seal_message(&mut self, message: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.sealed_len(message.len()));
        for piece in message.chunks(self.payload_size) {
            self.seal_chunk(piece, out);
        }
    }
}

/// Opens incoming chunks with the remote nonce.
#[derive(Debug, Clone)]
pub struct ChunkOpener {
    key: ChannelKey,
    nonce: Nonce,
}

impl ChunkOpener {
    /// An opener starting at `nonce`.
    pub fn new(key: ChannelKey, nonce: Nonce) -> Self {
        ChunkOpener { key, nonce }
    }

    /// Reads a chunk's 2-byte header: the number of bytes (`L`) that follow.
    /// Errors with [`FramingError::ChunkTooShort`] when `L < 16`.
    pub fn chunk_len(header: [u8; CHUNK_HEADER_LEN]) -> Result<usize, FramingError> {
        let len = u16::from_be_bytes(header) as usize;
        if len < TAG_LEN {
            return Err(FramingError::ChunkTooShort(len));
        }
        Ok(len)
    }

    /// Opens `tag ‖ ciphertext` (the `L` bytes after the header) in place and returns the
    /// plaintext. The nonce advances even when the MAC fails, as octez does.
    pub fn open<'b>(&mut self, sealed: &'b mut [u8]) -> Result<&'b [u8], FramingError> {
        let nonce = self.nonce.take_and_increment();
        Ok(self.key.open_in_place(&nonce, sealed)?)
    }

    /// Check, parse, advance over a buffer: `Ok(None)` until a whole chunk is buffered;
    /// then `Ok(Some((consumed, plaintext)))`, the chunk opened in place inside `buf`.
    pub fn open_buffered<'b>(
        &mut self,
        buf: &'b mut [u8],
    ) -> Result<Option<(usize, &'b [u8])>, FramingError> {
        if buf.len() < CHUNK_HEADER_LEN {
            return Ok(None);
        }
        let len = Self::chunk_len([buf[0], buf[1]])?;
        if buf.len() < CHUNK_HEADER_LEN + len {
            return Ok(None);
        }
        let plaintext = self.open(&mut buf[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + len])?;
        Ok(Some((CHUNK_HEADER_LEN + len, plaintext)))
    }
}

/// Reassembles length-prefixed messages (`u30 N ‖ N bytes`, WIRE.md §7) from decrypted
/// chunk payloads, whatever the chunk boundaries.
///
/// Memory is bounded: a message announcing more than `max_message_len` bytes is refused
/// as soon as its 4-byte length is read, and buffers grow only as bytes arrive.
#[derive(Debug)]
pub struct MessageDecoder {
    buf: Vec<u8>,
    start: usize,
    max_message_len: usize,
}

impl MessageDecoder {
    /// A decoder refusing messages longer than `max_message_len` bytes (the `N` of the envelope).
    pub fn new(max_message_len: usize) -> Self {
        MessageDecoder {
            buf: Vec::new(),
            start: 0,
            max_message_len,
        }
    }

    /// Appends decrypted bytes.
    pub fn push(&mut self, plaintext: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(plaintext);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The announced length `N` of the next message, once its 4-byte prefix is buffered
    /// (so a reader can reserve memory for the whole body before buffering it).
    pub fn pending_len(&self) -> Option<usize> {
        let pending = self.buf.get(self.start..self.start + 4)?;
        Some(u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize)
    }

    /// The next whole message body (the `N` bytes after the length), or `Ok(None)` if more
    /// bytes are needed. Errors with [`FramingError::MessageTooLarge`] on an over-long length.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let pending = &self.buf[self.start..];
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > self.max_message_len {
            return Err(FramingError::MessageTooLarge {
                len,
                max: self.max_message_len,
            });
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let body = self.start + 4..self.start + 4 + len;
        self.start += 4 + len;
        Ok(Some(&self.buf[body]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(payload: usize) -> (ChunkSealer, ChunkOpener) {
        let key = ChannelKey([3; 32]);
        let nonce = Nonce([9; 24]);
        (
            ChunkSealer::new(key.clone(), nonce, payload),
            ChunkOpener::new(key, nonce),
        )
    }

    #[test]
    fn messages_are_cut_at_the_payload_size_and_reassembled() {
        let (mut sealer, mut opener) = pair(7);
        let mut msg = vec![0, 0, 0, 20];
        msg.extend(0..20u8);
        let mut wire = Vec::new();
        sealer.seal_message(&msg, &mut wire);
        // 24 bytes in chunks of 7: 4 chunks.
        assert_eq!(wire.len(), 24 + 4 * 18);
        let mut dec = MessageDecoder::new(1000);
        let mut at = 0;
        let mut got = None;
        while let Some((used, plain)) = opener.open_buffered(&mut wire[at..]).unwrap() {
            dec.push(plain);
            at += used;
            if let Some(m) = dec.next_message().unwrap() {
                got = Some(m.to_vec());
            }
        }
        assert_eq!(got.unwrap(), (0..20u8).collect::<Vec<_>>());
        assert_eq!(at, wire.len());
    }

    #[test]
    fn short_chunk_length_and_bad_mac_are_errors() {
        assert_eq!(
            ChunkOpener::chunk_len([0, 15]),
            Err(FramingError::ChunkTooShort(15))
        );
        let (mut sealer, mut opener) = pair(100);
        let mut wire = Vec::new();
        sealer.seal_chunk(b"abc", &mut wire);
        wire[5] ^= 0x40;
        assert_eq!(
            opener.open_buffered(&mut wire).err(),
            Some(FramingError::Crypto(CryptoError::Decipher))
        );
    }

    #[test]
    fn partial_chunk_waits_for_more_bytes() {
        let (mut sealer, mut opener) = pair(100);
        let mut wire = Vec::new();
        sealer.seal_chunk(b"abcdef", &mut wire);
        let mut head = wire[..wire.len() - 1].to_vec();
        assert_eq!(opener.open_buffered(&mut head), Ok(None));
    }

    #[test]
    fn over_long_message_is_refused_from_its_length_alone() {
        let mut dec = MessageDecoder::new(10);
        dec.push(&[0, 0, 0, 11]);
        assert_eq!(
            dec.next_message(),
            Err(FramingError::MessageTooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn chunk_size_setting_follows_octez() {
        assert_eq!(chunk_payload_size(None), Ok(65517));
        assert_eq!(chunk_payload_size(Some(63)), Ok(63 * 1024 - 18));
        assert!(chunk_payload_size(Some(64)).is_err());
        assert_eq!(chunk_payload_size(Some(1)), Ok(1006));
        assert!(chunk_payload_size(Some(65)).is_err());
        assert!(chunk_payload_size(Some(0)).is_err());
    }
}
