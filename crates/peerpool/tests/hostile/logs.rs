//! Counts the log lines the node writes at info level and above, so a test can show that
//! routine refusals are logged at debug level or summarised (issue 11), not one warning
//! per refused attempt.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Lines from the `peerpool` crates at info, warn or error, since the process started.
static LINES: AtomicU64 = AtomicU64::new(0);

struct CountLines;

impl<S: Subscriber> Layer<S> for CountLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target().starts_with("peerpool") && *meta.level() <= Level::INFO {
            LINES.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the counter as the process's subscriber (once; later calls do nothing) and
/// checks that it counts: a probe line at info level must move it.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(CountLines.with_filter(LevelFilter::INFO)),
        )
        .expect("no other subscriber is installed in this test binary");
    });
    let before = lines();
    tracing::info!(target: "peerpool::test", "probe");
    tracing::debug!(target: "peerpool::test", "not counted");
    assert_eq!(lines(), before + 1, "the log line counter does not count");
}

/// Lines counted so far.
pub fn lines() -> u64 {
    LINES.load(Ordering::Relaxed)
}
