//! Prometheus metrics: the `metrics` crate's macros record into one
//! recorder per process (`metrics-exporter-prometheus`), which `GET /metrics`
//! renders in the Prometheus text format. [`Counters`] counts in memory
//! instead, for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// From a millisecond to ten seconds.
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's recorder, installed on first use: call it at start-up, as
/// what is recorded before it is lost.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            // Durations are histograms with these buckets (seconds), so they add up across instances.
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process")
    })
}

/// The Prometheus text of everything recorded so far.
pub fn render() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render())
}

/// A recorder that only counts, for tests that read what a piece of code
/// counted: counters by name and labels, kept in memory; gauges and
/// histograms are dropped. Set it for a test's thread with
/// `metrics::set_default_local_recorder`.
#[derive(Default)]
pub struct Counters {
    counted: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Counters {
    /// A counter's value with exactly these labels, in the order they were
    /// recorded in (0 if never incremented).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        counted.get(&counter_key(name, labels.iter().copied())).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

fn counter_key<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let labels: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

impl metrics::Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let name = counter_key(key.name(), key.labels().map(|l| (l.key(), l.value())));
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        Counter::from_arc(counted.entry(name).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_keep_what_is_counted_by_name_and_labels() {
        let counters = Counters::default();
        metrics::with_local_recorder(&counters, || {
            metrics::counter!("kept_total", "outcome" => "ok").increment(2);
            metrics::counter!("kept_total", "outcome" => "ok").increment(1);
            metrics::counter!("kept_total", "outcome" => "error").increment(1);
            metrics::counter!("other_total").increment(5);
        });
        assert_eq!(counters.get("kept_total", &[("outcome", "ok")]), 3);
        assert_eq!(counters.get("kept_total", &[("outcome", "error")]), 1);
        assert_eq!(counters.get("other_total", &[]), 5);
        assert_eq!(counters.get("never_total", &[]), 0);
    }
}
