//! Decaying tags (go-libp2p's `connmgr.Decayer`, ANCHORS.md): a tag whose value falls by a
//! rule every `interval` and rises when the application bumps it.
//!
//! go-libp2p sweeps every decaying tag of every peer on a ticker. Here a value carries the
//! tick it was last brought up to date at, and a read applies the ticks elapsed since:
//! O(1) for [`Decay::None`], [`Decay::Fixed`] and [`Decay::ExpireWhenInactive`]; one
//! step per elapsed interval for [`Decay::Linear`] and [`Decay::Custom`], stopping as soon
//! as the value reaches 0 (or, for `Custom`, stops changing). `Linear` steps one by one at
//! most 4096 times, then applies the remaining ticks at once (`⌊value × coef^n⌋`), so a
//! coefficient close to 1 read after many ticks costs no more.
//!
//! Ticks fall at `registered + j × interval` (j = 1, 2, …), the same instants for every
//! peer, as go-libp2p's ticker. A value at or below 0 after a decay step removes the tag.

use crate::pool::Time;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// How a decaying tag's value falls at each tick.
#[derive(Clone)]
pub enum Decay {
    /// Never falls (go-libp2p `DecayNone`).
    None,
    /// Falls by this much per tick (go-libp2p `DecayFixed`). ≥ 0.
    Fixed(i64),
    /// Multiplied by this coefficient and rounded down per tick (go-libp2p
    /// `DecayLinear`). In `[0, 1)`.
    Linear(f64),
    /// Removed at the first tick at least this long after the last bump (go-libp2p
    /// `DecayExpireWhenInactive`).
    ExpireWhenInactive(Duration),
    /// Any rule: the next value from the current one, applied once per tick. A read
    /// calls it once per elapsed tick, until the value reaches 0 or stops changing.
    Custom(Arc<dyn Fn(i64) -> i64 + Send + Sync>),
}

/// How a bump combines the current value with the delta.
#[derive(Clone)]
pub enum Bump {
    /// `value + delta` (saturating; go-libp2p `BumpSumUnbounded`).
    SumUnbounded,
    /// `value + delta` clamped to `[min, max]` (go-libp2p `BumpSumBounded`).
    SumBounded {
        /// Lowest value.
        min: i64,
        /// Highest value.
        max: i64,
    },
    /// `delta` replaces the value (go-libp2p `BumpOverwrite`).
    Overwrite,
    /// Any rule: `f(value, delta)`.
    Custom(Arc<dyn Fn(i64, i64) -> i64 + Send + Sync>),
}

impl fmt::Debug for Decay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decay::None => write!(f, "None"),
            Decay::Fixed(d) => write!(f, "Fixed({d})"),
            Decay::Linear(c) => write!(f, "Linear({c})"),
            Decay::ExpireWhenInactive(d) => write!(f, "ExpireWhenInactive({d:?})"),
            Decay::Custom(_) => write!(f, "Custom(..)"),
        }
    }
}

impl fmt::Debug for Bump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bump::SumUnbounded => write!(f, "SumUnbounded"),
            Bump::SumBounded { min, max } => write!(f, "SumBounded({min}, {max})"),
            Bump::Overwrite => write!(f, "Overwrite"),
            Bump::Custom(_) => write!(f, "Custom(..)"),
        }
    }
}

/// A registered decaying tag: its rules and its tick grid.
#[derive(Debug, Clone)]
pub struct DecayingTag {
    /// Time between ticks. > 0.
    pub interval: Duration,
    /// The decay rule.
    pub decay: Decay,
    /// The bump rule.
    pub bump: Bump,
    /// The origin of the tick grid.
    pub registered: Time,
}

/// Why a decaying tag cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecayError {
    /// The interval is zero.
    #[error("a decaying tag's interval must be > 0")]
    ZeroInterval,
    /// A `Fixed` decay below 0 or a `Linear` coefficient outside `[0, 1)`.
    #[error("decay rule out of range: {0}")]
    BadDecay(String),
    /// `SumBounded` with `min > max`.
    #[error("bump bounds out of order: min {min} > max {max}")]
    BadBounds {
        /// Lowest value asked.
        min: i64,
        /// Highest value asked.
        max: i64,
    },
}

impl DecayingTag {
    /// A tag with these rules whose ticks start at `registered`.
    ///
    /// Errors: [`DecayError`] for a zero interval, `Fixed(d < 0)`, `Linear(c ∉ [0, 1))` or
    /// `SumBounded { min > max }`.
    pub fn new(
        registered: Time,
        interval: Duration,
        decay: Decay,
        bump: Bump,
    ) -> Result<Self, DecayError> {
        if interval.is_zero() {
            return Err(DecayError::ZeroInterval);
        }
        match decay {
            Decay::Fixed(d) if d < 0 => return Err(DecayError::BadDecay(format!("Fixed({d})"))),
            Decay::Linear(c) if !(0.0..1.0).contains(&c) => {
                return Err(DecayError::BadDecay(format!("Linear({c})")))
            }
            _ => {}
        }
        if let Bump::SumBounded { min, max } = bump {
            if min > max {
                return Err(DecayError::BadBounds { min, max });
            }
        }
        Ok(DecayingTag {
            interval,
            decay,
            bump,
            registered,
        })
    }

    /// The index of the last tick at or before `now` (0 before the first).
    pub fn tick_at(&self, now: Time) -> u64 {
        let since = now.saturating_duration_since(self.registered);
        u64::try_from(since.as_nanos() / self.interval.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// The instant of tick `j` (saturating at the end of [`Time`]).
    pub fn tick_time(&self, j: u64) -> Time {
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(j));
        let offset = u64::try_from(nanos / NANOS_PER_SEC).map_or(Duration::MAX, |secs| {
            // The remainder is below 10^9.
            Duration::new(secs, u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0))
        });
        self.registered.saturating_add(offset)
    }
}

/// A decaying tag's value on one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecayingValue {
    /// The value as of tick `as_of`.
    pub value: i64,
    /// The tick the value is up to date with.
    pub as_of: u64,
    /// When the application last bumped it.
    pub last_bump: Time,
}

impl DecayingValue {
    /// A value of 0 at `now`, never bumped (the last bump counts as `now`).
    pub fn new(tag: &DecayingTag, now: Time) -> Self {
        DecayingValue {
            value: 0,
            as_of: tag.tick_at(now),
            last_bump: now,
        }
    }

    /// Brings the value up to `now`. Returns `false` when the tag is to be removed (its
    /// value fell to 0 or below, or it expired).
    pub fn decay_to(&mut self, tag: &DecayingTag, now: Time) -> bool {
        let target = tag.tick_at(now);
        if target <= self.as_of {
            return true;
        }
        let steps = target - self.as_of;
        self.as_of = target;
        match &tag.decay {
            Decay::None => true,
            Decay::Fixed(d) => {
                let drop = i64::try_from(steps).unwrap_or(i64::MAX).saturating_mul(*d);
                self.value = self.value.saturating_sub(drop);
                self.value > 0
            }
            Decay::Linear(c) => {
                for _ in 0..steps.min(LINEAR_EXACT_STEPS) {
                    self.value = linear_step(self.value, *c);
                    if self.value <= 0 {
                        return false;
                    }
                }
                if steps > LINEAR_EXACT_STEPS {
                    self.value = linear_steps(self.value, *c, steps - LINEAR_EXACT_STEPS);
                }
                self.value > 0
            }
            Decay::ExpireWhenInactive(after) => {
                let at = tag.tick_time(target);
                at.saturating_duration_since(self.last_bump) < *after
            }
            Decay::Custom(f) => {
                for _ in 0..steps {
                    let next = f(self.value);
                    if next == self.value {
                        // A fixed point: every later tick leaves it there too.
                        break;
                    }
                    self.value = next;
                    if self.value <= 0 {
                        return false;
                    }
                }
                self.value > 0
            }
        }
    }

    /// Applies a bump of `delta` at `now` (after [`DecayingValue::decay_to`]).
    pub fn bump(&mut self, tag: &DecayingTag, now: Time, delta: i64) {
        self.value = match &tag.bump {
            Bump::SumUnbounded => self.value.saturating_add(delta),
            Bump::SumBounded { min, max } => self.value.saturating_add(delta).clamp(*min, *max),
            Bump::Overwrite => delta,
            Bump::Custom(f) => f(self.value, delta),
        };
        self.last_bump = now;
    }
}

/// One `Linear` step: `⌊value × coef⌋`.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
pub(crate) fn linear_step(value: i64, coef: f64) -> i64 {
    (value as f64 * coef).floor() as i64
}

/// `Linear` steps applied one by one, exactly, before [`linear_steps`] takes over: 4096
/// steps take any value of a coefficient up to 0.99 to 0.
const LINEAR_EXACT_STEPS: u64 = 4096;

/// `n` more `Linear` steps at once: `⌊value × coef^n⌋`. This drops the rounding down of
/// each step (at most 1 per step), which matters only for a coefficient so close to 1
/// that the value lasts beyond [`LINEAR_EXACT_STEPS`] ticks; it keeps a read O(1) where
/// stepping could take longer than the age of the universe (a coefficient of
/// `1 - 2^-53` takes `i64::MAX` to 0 in about 4 × 10^17 steps).
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn linear_steps(value: i64, coef: f64, n: u64) -> i64 {
    (value as f64 * coef.powf(n as f64)).floor() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time::from_secs(1_000 + s)
    }

    fn tag(decay: Decay, bump: Bump) -> DecayingTag {
        DecayingTag::new(t(0), Duration::from_secs(10), decay, bump).expect("valid tag")
    }

    #[test]
    fn fixed_decay_falls_per_whole_interval_and_removes_at_zero() {
        let tg = tag(Decay::Fixed(3), Bump::SumUnbounded);
        let mut v = DecayingValue::new(&tg, t(5));
        v.bump(&tg, t(5), 10);
        assert!(v.decay_to(&tg, t(9)));
        assert_eq!(v.value, 10, "no tick before t(10)");
        assert!(v.decay_to(&tg, t(25)));
        assert_eq!(v.value, 4, "ticks at 10 and 20");
        assert!(!v.decay_to(&tg, t(40)), "4 - 6 ≤ 0 removes the tag");
    }

    #[test]
    fn linear_decay_rounds_down_at_every_tick() {
        let tg = tag(Decay::Linear(0.5), Bump::SumUnbounded);
        let mut v = DecayingValue::new(&tg, t(0));
        v.bump(&tg, t(0), 7);
        assert!(v.decay_to(&tg, t(20)));
        assert_eq!(v.value, 1, "7 → 3 → 1");
        assert!(!v.decay_to(&tg, t(30)), "1 → 0 removes");
    }

    #[test]
    fn expire_when_inactive_removes_at_the_first_tick_past_the_silence() {
        let tg = tag(
            Decay::ExpireWhenInactive(Duration::from_secs(15)),
            Bump::Overwrite,
        );
        let mut v = DecayingValue::new(&tg, t(0));
        v.bump(&tg, t(12), 5);
        assert!(v.decay_to(&tg, t(20)), "tick 20 is 8 s after the bump");
        assert!(v.decay_to(&tg, t(29)));
        assert!(!v.decay_to(&tg, t(30)), "tick 30 is 18 s after the bump");
    }

    #[test]
    fn bumps_sum_clamp_or_overwrite() {
        let bounded = tag(Decay::None, Bump::SumBounded { min: 0, max: 10 });
        let mut v = DecayingValue::new(&bounded, t(0));
        v.bump(&bounded, t(0), 8);
        v.bump(&bounded, t(0), 8);
        assert_eq!(v.value, 10);
        let over = tag(Decay::None, Bump::Overwrite);
        let mut w = DecayingValue::new(&over, t(0));
        w.bump(&over, t(0), 8);
        w.bump(&over, t(0), 3);
        assert_eq!(w.value, 3);
    }

    #[test]
    fn bad_rules_are_refused() {
        let i = Duration::from_secs(1);
        assert_eq!(
            DecayingTag::new(t(0), Duration::ZERO, Decay::None, Bump::Overwrite).err(),
            Some(DecayError::ZeroInterval)
        );
        assert!(DecayingTag::new(t(0), i, Decay::Linear(1.0), Bump::Overwrite).is_err());
        assert!(DecayingTag::new(t(0), i, Decay::Fixed(-1), Bump::Overwrite).is_err());
        assert_eq!(
            DecayingTag::new(t(0), i, Decay::None, Bump::SumBounded { min: 2, max: 1 }).err(),
            Some(DecayError::BadBounds { min: 2, max: 1 })
        );
    }
}
