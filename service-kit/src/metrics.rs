//! Prometheus metrics: the `metrics` crate's macros record into one
//! recorder per process (`metrics-exporter-prometheus`), which `GET /metrics`
//! renders in the Prometheus text format.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use: call it at start-up, as
/// what is recorded before it is lost.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new().install_recorder().expect("no other metrics recorder is installed in this process")
    })
}

/// The Prometheus text of everything recorded so far.
pub fn render() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render())
}
