//! Wall-clock time as plain data: [`Time`], a [`Duration`] since the Unix epoch (UTC).
//!
//! Why not `std::time::Instant`: the pure core never reads a clock, and the pool's history
//! (`last_seen`, `created`, reconnection deadlines) is written to `peers.json` as RFC 3339
//! dates (BEHAVIOUR.md §4.6), so it must be absolute wall-clock time. The runtime builds a
//! `Time` from `SystemTime` once at start plus its monotonic `tokio::time` elapsed time;
//! tests build any time with [`Time::from_secs`]. Times before 1970 are not representable
//! and are refused when parsed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// A point in wall-clock time: the [`Duration`] elapsed since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(Duration);

/// Why a time text or number was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimeError {
    /// The text is not an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
    #[error("invalid RFC 3339 time {0:?}")]
    InvalidRfc3339(String),
    /// The time is before the Unix epoch or too far in the future.
    #[error("time out of range: {0} s since the Unix epoch")]
    OutOfRange(i128),
}

impl Time {
    /// The Unix epoch.
    pub const EPOCH: Time = Time(Duration::ZERO);

    /// The last second RFC 3339 can write, 9999-12-31T23:59:59Z; later times read from a
    /// file are refused so that whatever is loaded can be saved again.
    pub const MAX_RFC3339: Time = Time(Duration::from_secs(253_402_300_799));

    /// `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Time(Duration::from_secs(secs))
    }

    /// `since_epoch` after the Unix epoch.
    pub const fn from_unix(since_epoch: Duration) -> Self {
        Time(since_epoch)
    }

    /// The duration since the Unix epoch.
    pub const fn as_unix(self) -> Duration {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn unix_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// `self + d`, saturating at the largest representable time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Time(self.0.saturating_add(d))
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The RFC 3339 text in UTC, e.g. `2024-05-01T12:34:56Z`; a sub-second part is written
    /// only when non-zero, with trailing zeros trimmed.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        );
        let nanos = self.0.subsec_nanos();
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// Parses RFC 3339 (`Z` or a `±HH:MM` offset, optional fraction up to nanoseconds).
    ///
    /// Errors: [`TimeError::InvalidRfc3339`] on malformed text, [`TimeError::OutOfRange`]
    /// before 1970.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let bad = || TimeError::InvalidRfc3339(text.to_owned());
        let b = text.as_bytes();
        if b.len() < 20 || !text.is_ascii() {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
            let part = &text[r];
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse::<i64>().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        if b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't' | b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(bad());
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || min > 59
            || sec > 60
        {
            return Err(bad());
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &text[start..i];
            if digits.is_empty() {
                return Err(bad());
            }
            let mut padded: String = digits.chars().take(9).collect();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = padded.parse().map_err(|_| bad())?;
        }
        let offset_secs: i64 = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let digits = [*h1, *h2, *m1, *m2];
                if !digits.iter().all(u8::is_ascii_digit) {
                    return Err(bad());
                }
                let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
                let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
                if h > 23 || m > 59 {
                    return Err(bad());
                }
                let off = h * 3600 + m * 60;
                if *sign == b'+' {
                    off
                } else {
                    -off
                }
            }
            _ => return Err(bad()),
        };
        let days = days_from_civil(year, month, day);
        let secs = i128::from(days) * 86_400 + i128::from(hour * 3600 + min * 60 + sec)
            - i128::from(offset_secs);
        let secs = u64::try_from(secs).map_err(|_| TimeError::OutOfRange(secs))?;
        Ok(Time(Duration::new(secs, nanos)))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (era-based day count).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Time({})", self.to_rfc3339())
    }
}

/// JSON form: an RFC 3339 string (what octez writes). Decoding also accepts an integer
/// number of seconds since the epoch, as octez's decoder does (BEHAVIOUR.md §4.6).
impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Time;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or an integer number of seconds since 1970")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Time, E> {
                Time::parse_rfc3339(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Time, E> {
                let t = Time::from_secs(v);
                if t > Time::MAX_RFC3339 {
                    return Err(E::custom(TimeError::OutOfRange(i128::from(v))));
                }
                Ok(t)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Time, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(TimeError::OutOfRange(i128::from(v)))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(Time::EPOCH.to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Time::from_secs(951_782_400).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            Time::from_secs(1_700_000_000).to_rfc3339(),
            "2023-11-14T22:13:20Z"
        );
        let t = Time::parse_rfc3339("2023-11-14T23:13:20.5+01:00").unwrap();
        assert_eq!(t, Time::from_unix(Duration::from_millis(1_700_000_000_500)));
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.5Z");
    }

    #[test]
    fn rfc3339_round_trips_over_many_days() {
        for secs in (0..5_000_000_000u64).step_by(86_399 * 37 + 11) {
            let t = Time::from_secs(secs);
            assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        }
    }

    #[test]
    fn bad_texts_are_refused() {
        for s in [
            "",
            "2023-11-14",
            "2023-13-14T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T00:00:00",
            "2023-11-14T00:00:00.Z",
            "2023-11-14T00:00:00+1:00",
            "+023-11-14T00:00:00Z",
            "2023-11-14T00:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "é023-11-14T00:00:00Z",
        ] {
            assert!(Time::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    #[test]
    fn json_accepts_string_or_seconds() {
        let t: Time = serde_json::from_str("1700000000").unwrap();
        assert_eq!(t, Time::from_secs(1_700_000_000));
        let t: Time = serde_json::from_str("\"2023-11-14T22:13:20Z\"").unwrap();
        assert_eq!(t, Time::from_secs(1_700_000_000));
        assert!(serde_json::from_str::<Time>("-5").is_err());
        assert!(serde_json::from_str::<Time>("253402300800").is_err());
        let last: Time = serde_json::from_str("253402300799").unwrap();
        assert_eq!(last.to_rfc3339(), "9999-12-31T23:59:59Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2023-11-14T22:13:20Z\""
        );
    }
}
