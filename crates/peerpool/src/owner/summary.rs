//! One log line per period for routine refusals (issue 11): each refused incoming
//! connection and each failed attempt is logged at debug level, and counted; once a period
//! has passed since the last summary, the counts go out as one info line and start again.
//! A flood of 200 attempts a second then writes one line a minute, not 12 000.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;

/// How often the counts are logged (when there are any).
pub(crate) const PERIOD: Duration = Duration::from_secs(60);

/// Counts since the last summary line.
#[derive(Debug)]
pub(crate) struct RefusalSummary {
    since: Instant,
    refused: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
}

impl RefusalSummary {
    pub(crate) fn new(now: Instant) -> Self {
        RefusalSummary {
            since: now,
            refused: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// An incoming connection closed before its handshake, for `reason`.
    pub(crate) fn refused(&mut self, reason: &impl std::fmt::Display, now: Instant) {
        *self.refused.entry(reason.to_string()).or_default() += 1;
        self.flush_if_due(now);
    }

    /// An attempt (either direction) that failed, of `kind` (the error's first words).
    pub(crate) fn failed(&mut self, kind: &str, now: Instant) {
        *self.failed.entry(kind.to_string()).or_default() += 1;
        self.flush_if_due(now);
    }

    /// The summary line if a period has passed; `None` otherwise (or with nothing to say).
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<String> {
        if now.saturating_duration_since(self.since) < PERIOD {
            return None;
        }
        self.since = now;
        if self.refused.is_empty() && self.failed.is_empty() {
            return None;
        }
        let list = |m: &BTreeMap<String, u64>| -> String {
            m.iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (r, f): (u64, u64) = (self.refused.values().sum(), self.failed.values().sum());
        let line = format!(
            "in the last {} s: {r} incoming connections refused ({}); {f} attempts failed ({})",
            PERIOD.as_secs(),
            list(&self.refused),
            list(&self.failed)
        );
        self.refused.clear();
        self.failed.clear();
        Some(line)
    }

    /// Logs the summary line if a period has passed since the last one. Called on every
    /// refusal and at each turn of the owner, so the counts of a flood that has stopped
    /// still go out once its period ends (at the node's next timer or event).
    pub(crate) fn flush_if_due(&mut self, now: Instant) {
        if let Some(line) = self.take_due(now) {
            info!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_gives_one_line_per_period_with_its_counts() {
        let start = Instant::now();
        let mut s = RefusalSummary::new(start);
        for i in 0..12_000u64 {
            let now = start + Duration::from_millis(i * 5);
            s.refused(&"too many incoming handshakes in flight", now);
            if i % 3 == 0 {
                s.failed("timeout", now);
            }
        }
        // 60 s of flood: nothing is due before the period ends.
        let at_end = start + Duration::from_millis(59_999);
        assert_eq!(s.take_due(at_end), None);
        let line = s.take_due(start + PERIOD).unwrap();
        assert!(
            line.contains("12000 incoming connections refused (12000 too many incoming"),
            "{line}"
        );
        assert!(
            line.contains("4000 attempts failed (4000 timeout)"),
            "{line}"
        );
        // Counted afresh, and a quiet period says nothing.
        assert_eq!(s.take_due(start + PERIOD * 2), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_period_has_its_own_counts() {
        let start = Instant::now();
        let mut s = RefusalSummary::new(start);
        s.refused(&"a banned address", start);
        let first = s.take_due(start + PERIOD).unwrap();
        assert!(first.contains("1 incoming connections refused (1 a banned address)"));
        s.refused(&"a banned address", start + PERIOD);
        s.refused(&"a banned address", start + PERIOD);
        let second = s.take_due(start + PERIOD * 2).unwrap();
        assert!(
            second.contains("2 incoming connections refused"),
            "{second}"
        );
    }
}
