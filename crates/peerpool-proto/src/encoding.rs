//! Binary primitives of octez's `data-encoding`, as used on the P2P wire.
//!
//! All integers are big-endian. A `u30` is a 4-byte length prefix. See WIRE.md §0
//! ("data-encoding primitives used on the wire").
//!
//! Decoding follows three steps (check, parse, advance): [`Reader`] never reads
//! past its slice and reports [`DecodeError::UnexpectedEnd`] instead of panicking.

use thiserror::Error;

/// Largest value a `u30` length prefix may carry (2^30 - 1), WIRE.md §0.
pub const MAX_U30: usize = (1 << 30) - 1;

/// Why bytes from the network, a file or a user failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("input ended early: {needed} more byte(s) needed for {what}")]
    UnexpectedEnd {
        /// What was being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A value decoded completely but bytes were left over inside its bounded region.
    #[error("{0} unexpected trailing byte(s)")]
    TrailingBytes(usize),
    /// A length or count is larger than its bound.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A length is smaller than the minimum the format allows.
    #[error("{what} too short: {len} < {min}")]
    TooShort {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A text field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A point's text form did not parse (WIRE.md §7).
    #[error("invalid point {0:?}")]
    InvalidPoint(String),
    /// A union tag that this decoder does not know.
    #[error("unknown tag {tag:#06x} for {what}")]
    UnknownTag {
        /// What was being read.
        what: &'static str,
        /// The tag found.
        tag: u16,
    },
}

/// A cursor over a byte slice that decodes data-encoding primitives.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` raw bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd {
                what,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes every byte left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Takes `N` raw bytes (`Fixed.bytes N`).
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// `uint16`, big-endian.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// `int16`, big-endian.
    pub fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    /// `bool`: any non-zero byte is true (data-encoding's reader).
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        Ok(self.u8(what)? != 0)
    }

    /// A `u30` length prefix. Values above `max` are refused before anything is allocated.
    pub fn u30(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = u32::from_be_bytes(self.array(what)?) as usize;
        if len > max.min(MAX_U30) {
            return Err(DecodeError::TooLong {
                what,
                len,
                max: max.min(MAX_U30),
            });
        }
        Ok(len)
    }

    /// `bytes`/`string`: a `u30` length then that many bytes, at most `max` bytes.
    pub fn dynamic(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u30(what, max)?;
        self.bytes(len, what)
    }

    /// A UTF-8 `string` of at most `max` bytes.
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.dynamic(what, max)?).map_err(|_| DecodeError::InvalidUtf8(what))
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends a `u30` length prefix. Callers keep `len <= MAX_U30`.
pub fn put_u30(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len <= MAX_U30);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a `bytes`/`string` field: `u30` length then the bytes.
pub fn put_dynamic(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u30(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends a `bool` as data-encoding writes it: `0xff` true, `0x00` false.
pub fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(if value { 0xff } else { 0x00 });
}

/// Reserves a `u30` length prefix and returns its offset, for [`end_dynamic`].
pub fn begin_dynamic(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length of everything appended since [`begin_dynamic`] returned `at`.
pub fn end_dynamic(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_missing_bytes_instead_of_panicking() {
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(
            r.dynamic("field", 100),
            Err(DecodeError::UnexpectedEnd {
                what: "field",
                needed: 7
            })
        );
    }

    #[test]
    fn u30_refuses_lengths_above_the_bound_before_reading() {
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(r.u30("x", 10), Err(DecodeError::TooLong { len, .. }) if len == 0x7fff_ffff));
    }

    #[test]
    fn bool_reads_any_non_zero_as_true_and_writes_ff() {
        assert!(Reader::new(&[0x01]).bool("b").unwrap());
        assert!(!Reader::new(&[0x00]).bool("b").unwrap());
        let mut out = Vec::new();
        put_bool(&mut out, true);
        assert_eq!(out, [0xff]);
    }

    #[test]
    fn dynamic_round_trip_and_trailing_bytes() {
        let mut out = Vec::new();
        let at = begin_dynamic(&mut out);
        out.extend_from_slice(b"abc");
        end_dynamic(&mut out, at);
        assert_eq!(out, [0, 0, 0, 3, b'a', b'b', b'c']);
        let mut r = Reader::new(&out);
        assert_eq!(r.string("s", 10).unwrap(), "abc");
        r.finish().unwrap();
        let mut r = Reader::new(&[1, 2]);
        r.u8("x").unwrap();
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }
}
