//! Wall-clock time as plain data: [`Time`], a [`Duration`] since the Unix epoch (UTC).
//!
//! Why not `std::time::Instant`: the pure core never reads a clock, and the pool's history
//! (`last_seen`, `created`, reconnection deadlines) is written to `peers.json` as RFC 3339
//! dates (BEHAVIOUR.md §4.6), so it must be absolute wall-clock time. The runtime builds a
//! `Time` from `SystemTime` once at start plus its monotonic `tokio::time` elapsed time;
//! tests build any time with [`Time::from_secs`]. Times before 1970 are not representable
//! and are refused when parsed.
//!
//! The calendar (RFC 3339 text to and from a count of seconds) is the `time` crate's
//! `Rfc3339` format; this module adds the range rules: RFC 3339 has four-digit years, so
//! text is written and read only up to the last nanosecond of 9999, and what is read can
//! always be written back (BEHAVIOUR.md §4.6).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999999999Z.
const LAST_WRITABLE: Time = Time(Duration::new(253_402_300_799, 999_999_999));

/// [`LAST_WRITABLE`] as text: what [`Time::to_rfc3339`] writes for any later time.
const LAST_WRITABLE_TEXT: &str = "9999-12-31T23:59:59.999999999Z";

impl Time {
    /// The Unix epoch.
    pub const EPOCH: Time = Time(Duration::ZERO);

    /// The last whole second RFC 3339 can write, 9999-12-31T23:59:59Z. An integer number of
    /// seconds past it is refused by `Deserialize`, and a peers file clamps any later date
    /// down to it (BEHAVIOUR.md §4.6), so that whatever is loaded can be saved again.
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
    ///
    /// A time past the year 9999 (which RFC 3339 cannot write) is written as the last
    /// writable instant, `9999-12-31T23:59:59.999999999Z`, so the text always parses
    /// again with [`Time::parse_rfc3339`].
    pub fn to_rfc3339(self) -> String {
        let t = self.min(LAST_WRITABLE);
        i128::try_from(t.0.as_nanos())
            .ok()
            .and_then(|nanos| OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
            .and_then(|utc| utc.format(&Rfc3339).ok())
            // Not reached: every time up to LAST_WRITABLE has a UTC date-time of year ≤ 9999.
            .unwrap_or_else(|| LAST_WRITABLE_TEXT.to_owned())
    }

    /// Parses RFC 3339: `YYYY-MM-DD`, then `T` (or `t` or a space), `HH:MM:SS`, an optional
    /// fraction (digits past the ninth are ignored), and `Z` (or `z`) or a `±HH:MM` offset.
    /// A leap second (`23:59:60` UTC at the end of a month) reads as the nanosecond before
    /// it, `23:59:59.999999999`.
    ///
    /// Errors: [`TimeError::InvalidRfc3339`] on malformed text, [`TimeError::OutOfRange`]
    /// (with the whole seconds since the epoch, rounded down) before 1970 or, through a
    /// negative offset, past the last nanosecond of 9999 UTC.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let bad = || TimeError::InvalidRfc3339(text.to_owned());
        // The `time` crate takes any byte between the date and the time.
        if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
            return Err(bad());
        }
        let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| bad())?;
        let out_of_range = || TimeError::OutOfRange(i128::from(dt.unix_timestamp()));
        let nanos = u128::try_from(dt.unix_timestamp_nanos()).map_err(|_| out_of_range())?;
        if nanos > LAST_WRITABLE.0.as_nanos() {
            return Err(out_of_range());
        }
        let secs = u64::try_from(dt.unix_timestamp()).map_err(|_| out_of_range())?;
        Ok(Time(Duration::new(secs, dt.nanosecond())))
    }
}

/// `nanos` nanoseconds as a [`Duration`], saturating at [`Duration::MAX`] (a `u64` of
/// nanoseconds holds only 584 years; a `Duration` holds `u64::MAX` seconds).
pub(crate) fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

impl fmt::Display for Time {
    /// [`Time::to_rfc3339`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Time {
    /// `Time(<RFC 3339>)`, or `Time(<seconds> s)` past the year 9999, so that debug output
    /// never hides the real value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self > LAST_WRITABLE {
            write!(
                f,
                "Time({}.{:09} s)",
                self.0.as_secs(),
                self.0.subsec_nanos()
            )
        } else {
            write!(f, "Time({})", self.to_rfc3339())
        }
    }
}

/// JSON form: an RFC 3339 string (what octez writes). Decoding also accepts an integer
/// number of seconds since the epoch, as octez's decoder does (BEHAVIOUR.md §4.6), up to
/// [`Time::MAX_RFC3339`].
impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TimeVisitor { clamp: false })
    }
}

/// Reads a [`Time`] in either JSON form; with `clamp`, a time past [`Time::MAX_RFC3339`]
/// (an integer past it, or a text past 9999 UTC) becomes [`Time::MAX_RFC3339`] instead of
/// an error. Malformed text and times before 1970 are errors either way.
struct TimeVisitor {
    clamp: bool,
}

impl serde::de::Visitor<'_> for TimeVisitor {
    type Value = Time;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time or an integer number of seconds since 1970")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Time, E> {
        match Time::parse_rfc3339(v) {
            Err(TimeError::OutOfRange(secs)) if self.clamp && secs > 0 => Ok(Time::MAX_RFC3339),
            r => r.map_err(E::custom),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Time, E> {
        let t = Time::from_secs(v);
        if t <= Time::MAX_RFC3339 {
            Ok(t)
        } else if self.clamp {
            Ok(Time::MAX_RFC3339)
        } else {
            Err(E::custom(TimeError::OutOfRange(i128::from(v))))
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Time, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(TimeError::OutOfRange(i128::from(v)))),
        }
    }
}

/// `serde(deserialize_with)` helpers for the dates of a peers file: like [`Time`]'s own
/// `Deserialize`, except that a date past [`Time::MAX_RFC3339`] is clamped to it rather
/// than refused, so that one bad date neither fails the whole file nor gets saved in a
/// form the next load refuses (BEHAVIOUR.md §4.6).
pub(crate) mod clamped {
    use super::{Time, TimeVisitor};
    use serde::{Deserialize, Deserializer};

    /// A [`Time`] read with clamping.
    struct Clamped(Time);

    impl<'de> Deserialize<'de> for Clamped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TimeVisitor { clamp: true }).map(Clamped)
        }
    }

    /// A date.
    pub(crate) fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        Clamped::deserialize(d).map(|c| c.0)
    }

    /// An optional date (`null` is `None`).
    pub(crate) fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Time>, D::Error> {
        Option::<Clamped>::deserialize(d).map(|o| o.map(|c| c.0))
    }

    /// An optional `[what, date]` pair (`null` is `None`).
    pub(crate) fn option_pair<'de, D, T>(d: D) -> Result<Option<(T, Time)>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<(T, Clamped)>::deserialize(d).map(|o| o.map(|(x, c)| (x, c.0)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn past_9999_text_is_out_of_range_and_writing_saturates() {
        // 9999-12-31T23:30:00-01:00 is 10000-01-01T00:30:00Z.
        assert_eq!(
            Time::parse_rfc3339("9999-12-31T23:30:00-01:00"),
            Err(TimeError::OutOfRange(253_402_302_600))
        );
        let last = Time::parse_rfc3339("9999-12-31T23:59:59.999999999Z").unwrap();
        assert_eq!(last, LAST_WRITABLE);
        assert_eq!(last.to_rfc3339(), LAST_WRITABLE_TEXT);
        assert_eq!(Time::MAX_RFC3339.to_rfc3339(), "9999-12-31T23:59:59Z");
        let beyond = Time::MAX_RFC3339.saturating_add(Duration::from_secs(1));
        for t in [beyond, Time::from_unix(Duration::MAX)] {
            assert_eq!(t.to_rfc3339(), LAST_WRITABLE_TEXT);
            assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()), Ok(LAST_WRITABLE));
        }
        assert_eq!(format!("{beyond:?}"), "Time(253402300800.000000000 s)");
        assert_eq!(format!("{last:?}"), "Time(9999-12-31T23:59:59.999999999Z)");
    }

    #[test]
    fn separators_fractions_and_leap_seconds() {
        let t = Time::from_secs(1_700_000_000);
        for s in [
            "2023-11-14t22:13:20z",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20-00:00",
            "2023-11-14T22:13:20.000Z",
        ] {
            assert_eq!(Time::parse_rfc3339(s), Ok(t), "{s}");
        }
        assert!(Time::parse_rfc3339("2023-11-14x22:13:20Z").is_err());
        assert!(Time::parse_rfc3339("2023-11-14T22:13:20+00:60").is_err());
        assert!(Time::parse_rfc3339("2023-11-14T22:13:20+24:00").is_err());
        // Digits past the ninth are ignored.
        let t = Time::parse_rfc3339("2023-11-14T22:13:20.1234567899Z").unwrap();
        assert_eq!(t.as_unix().subsec_nanos(), 123_456_789);
        // A leap second reads as the nanosecond before it, and only at the end of a month.
        let leap = Time::parse_rfc3339("2016-12-31T23:59:60Z").unwrap();
        assert_eq!(leap.to_rfc3339(), "2016-12-31T23:59:59.999999999Z");
        assert!(Time::parse_rfc3339("2016-12-30T23:59:60Z").is_err());
        assert_eq!(
            Time::parse_rfc3339("9999-12-31T23:59:60Z"),
            Ok(LAST_WRITABLE)
        );
    }

    /// RFC 3339 texts with any separator, fraction and offset, mostly in range.
    fn rfc3339_text() -> impl Strategy<Value = String> {
        let date = (1960u32..=9999, 1u32..=12, 1u32..=31);
        let time = (0u32..=23, 0u32..=59, 0u32..=60);
        let sep = prop_oneof![Just('T'), Just('t'), Just(' ')];
        let frac = proptest::option::of("[0-9]{1,12}");
        let offset = prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            (prop_oneof![Just('+'), Just('-')], 0u32..=23, 0u32..=59)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ];
        (date, sep, time, frac, offset).prop_map(|((y, mo, d), sep, (h, mi, s), frac, off)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
    }

    proptest! {
        /// Every time up to the last writable instant (so every time up to MAX_RFC3339)
        /// is written as text that reads back as the same time.
        #[test]
        fn times_up_to_9999_round_trip(
            secs in 0..=Time::MAX_RFC3339.unix_secs(),
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
        ) {
            let t = Time::from_unix(Duration::new(secs, nanos));
            prop_assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()), Ok(t));
        }

        /// Every time the parser accepts is written as text that reads back as it.
        #[test]
        fn accepted_texts_round_trip(text in rfc3339_text()) {
            if let Ok(t) = Time::parse_rfc3339(&text) {
                prop_assert!(t <= LAST_WRITABLE);
                let written = t.to_rfc3339();
                prop_assert!(written.ends_with('Z'), "{}", written);
                prop_assert_eq!(Time::parse_rfc3339(&written), Ok(t));
            }
        }

        /// Whatever the time, its text parses, as the time itself or (past 9999) as the
        /// last writable instant.
        #[test]
        fn every_time_writes_text_that_parses(secs: u64, nanos in 0u32..1_000_000_000) {
            let t = Time::from_unix(Duration::new(secs, nanos));
            prop_assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()), Ok(t.min(LAST_WRITABLE)));
        }
    }

    /// The text generator is not vacuous: most of what it makes parses.
    #[test]
    fn most_generated_texts_parse() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = rfc3339_text();
        let ok = (0..1000)
            .filter(|_| {
                let text = strategy.new_tree(&mut runner).unwrap().current();
                Time::parse_rfc3339(&text).is_ok()
            })
            .count();
        assert!(ok > 700, "{ok} of 1000");
    }
}
