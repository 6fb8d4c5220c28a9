//! Prometheus metrics: the `metrics` crate's macros record into one
//! recorder per process (`metrics-exporter-prometheus`), which `GET /metrics`
//! renders in the Prometheus text format.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
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
