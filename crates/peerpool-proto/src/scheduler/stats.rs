//! Traffic statistics: [`MovingAverage`] (octez's moving average), [`Stat`] (the JSON shape
//! of octez's `P2p_stat`) and [`MaState`] (the moving-average clock).

use super::config::EMA_ALPHA;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// An exponential moving average of a byte rate (BEHAVIOUR.md §6), plus the running total.
#[derive(Debug, Clone, PartialEq)]
pub struct MovingAverage {
    total: u64,
    pending: u64,
    average: f64,
}

impl Default for MovingAverage {
    fn default() -> Self {
        Self::new()
    }
}

impl MovingAverage {
    /// A zero average.
    pub fn new() -> Self {
        MovingAverage {
            total: 0,
            pending: 0,
            average: 0.0,
        }
    }

    /// Counts `bytes` moved since the last update.
    pub fn add(&mut self, bytes: u64) {
        self.total = self.total.saturating_add(bytes);
        self.pending = self.pending.saturating_add(bytes);
    }

    /// Folds the bytes counted since the last update over `elapsed` into the average:
    /// `avg := α · bytes / elapsed + (1 − α) · avg`. A zero `elapsed` does nothing.
    pub fn update(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let sample = self.pending as f64 / secs;
        self.average = EMA_ALPHA * sample + (1.0 - EMA_ALPHA) * self.average;
        self.pending = 0;
    }

    /// Current average, bytes per second (rounded down).
    pub fn rate(&self) -> u64 {
        self.average as u64
    }

    /// Total bytes counted since creation.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Traffic statistics in the JSON shape of octez's `P2p_stat` (BEHAVIOUR.md §6):
/// `{"total_sent": "<int64>", "total_recv": "<int64>", "current_inflow": <int31>,
/// "current_outflow": <int31>}`.
///
/// Totals are bytes; flows are bytes per second (one-second moving averages, α = 0.2). The
/// totals are written as decimal strings, the way data-encoding writes `int64` in JSON; they
/// are read from either strings or numbers. Flows are clamped to the `int31` range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Bytes written to the socket(s).
    #[serde(serialize_with = "ser_int64", deserialize_with = "de_int64")]
    pub total_sent: u64,
    /// Bytes read from the socket(s).
    #[serde(serialize_with = "ser_int64", deserialize_with = "de_int64")]
    pub total_recv: u64,
    /// Download rate, bytes per second.
    pub current_inflow: u32,
    /// Upload rate, bytes per second.
    pub current_outflow: u32,
}

fn ser_int64<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

fn de_int64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Num(u64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Num(n) => Ok(n),
        Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

const INT31_MAX: u64 = (1 << 30) - 1;

pub(super) fn int31(rate: u64) -> u32 {
    rate.min(INT31_MAX) as u32
}

/// State of the moving-average worker (the `ma_state` of octez's scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaState {
    /// Refresh period of the averages.
    pub period: Duration,
    /// Weight of the newest sample.
    pub alpha: f64,
    /// Number of refreshes so far.
    pub refreshes: u64,
    /// `now` of the last refresh (time since the scheduler's origin).
    pub last_refresh: Duration,
    /// Number of registered connections (each has one average per direction).
    pub connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_follows_octez_formula() {
        let mut m = MovingAverage::new();
        m.add(1000);
        m.update(Duration::from_secs(1));
        assert_eq!(m.rate(), 200);
        m.add(1000);
        m.update(Duration::from_secs(1));
        assert_eq!(m.rate(), 360);
        assert_eq!(m.total(), 2000);
    }

    #[test]
    fn stat_json_has_p2p_stat_shape() {
        let s = Stat {
            total_sent: 12,
            total_recv: 34,
            current_inflow: 5,
            current_outflow: 6,
        };
        let v = serde_json::to_value(s).expect("serialise");
        assert_eq!(
            v,
            serde_json::json!({"total_sent": "12", "total_recv": "34",
                "current_inflow": 5, "current_outflow": 6})
        );
        let back: Stat = serde_json::from_value(v).expect("deserialise");
        assert_eq!(back, s);
        let num: Stat = serde_json::from_str(
            r#"{"total_sent":1,"total_recv":2,"current_inflow":3,"current_outflow":4}"#,
        )
        .expect("numbers accepted");
        assert_eq!(num.total_recv, 2);
    }
}
