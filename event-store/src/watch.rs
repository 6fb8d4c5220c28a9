//! Watching the log's read horizon: a transaction left open (idle in a
//! session, or prepared and forgotten) freezes every subscriber of the log,
//! and the subscribers' own lag cannot show it (they count readable events
//! only). The processes that follow the log (relay, projections) run
//! [`watch_log`] and ask [`stall`] for readiness.

use std::sync::Arc;
use std::time::Duration;

use crate::{EventStore, LogStats};

/// Events waiting longer than this behind the horizon make the log stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Every `every`, the log's stats as gauges: `event_store_held_back_events`,
/// `event_store_held_back_seconds` (how long the oldest has waited),
/// `event_store_horizon_blocker_seconds` and `event_store_horizon_blocker_pid`
/// (the transaction holding them; 0 when none, pid 0 for a prepared one);
/// and a warning naming the blocker while the log is stalled. Runs until aborted.
pub async fn watch_log(store: Arc<dyn EventStore>, every: Duration) {
    loop {
        match store.stats().await {
            Ok(stats) => {
                metrics::gauge!("event_store_held_back_events").set(stats.held_back_events as f64);
                metrics::gauge!("event_store_held_back_seconds").set(stats.held_back_ms as f64 / 1000.0);
                let (pid, open) = stats.blocker.map_or((0, 0), |b| (b.pid, b.open_ms));
                metrics::gauge!("event_store_horizon_blocker_pid").set(f64::from(pid));
                metrics::gauge!("event_store_horizon_blocker_seconds").set(open as f64 / 1000.0);
                if let Some(stall) = stall(&stats) {
                    tracing::warn!(held_back_events = stats.held_back_events, pid, "{stall}");
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the log's stats"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Why the log is stalled, if events have waited behind the horizon longer
/// than [`STALL_AFTER`]: how many, how long, and what holds them.
pub fn stall(stats: &LogStats) -> Option<String> {
    if stats.held_back_events == 0 || stats.held_back_ms < STALL_AFTER.as_millis() as u64 {
        return None;
    }
    let holder = match stats.blocker {
        Some(b) if b.prepared => format!("a prepared transaction open for {} s", b.open_ms / 1000),
        Some(b) => format!("the transaction of backend pid {} open for {} s", b.pid, b.open_ms / 1000),
        None => "a transaction that ended just now, or of another database".to_owned(),
    };
    Some(format!(
        "the log is stalled: {} events wait for {} s behind {holder}",
        stats.held_back_events,
        stats.held_back_ms / 1000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HorizonBlocker;

    #[test]
    fn a_stall_is_events_waiting_longer_than_the_limit_and_names_its_blocker() {
        let waiting = |held_back_ms| LogStats {
            held_back_events: 3,
            held_back_ms,
            blocker: Some(HorizonBlocker { pid: 42, open_ms: 61_000, prepared: false }),
            ..LogStats::default()
        };
        assert_eq!(stall(&waiting(9_999)), None);
        assert_eq!(stall(&LogStats::default()), None);
        let reason = stall(&waiting(12_000)).unwrap();
        assert!(reason.contains("3 events wait for 12 s") && reason.contains("pid 42 open for 61 s"), "{reason}");
        let prepared =
            LogStats { blocker: Some(HorizonBlocker { pid: 0, open_ms: 5_000, prepared: true }), ..waiting(20_000) };
        assert!(stall(&prepared).unwrap().contains("a prepared transaction"));
    }
}
