//! The one place that sets up logging and tracing: structured JSON lines
//! (or readable text for local work), filtered by a level directive such as
//! `info` or `info,command_side=debug`; and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! names a collector, the spans exported over OTLP/HTTP. Trace context
//! travels as a W3C `traceparent`: HTTP headers, event metadata, NATS headers.

use std::collections::HashMap;
use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!("unknown log format {other:?}: use json or pretty")),
        }
    }
}

/// Checks a level directive without installing anything.
pub fn parse_level(directive: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(directive).map_err(|e| e.to_string())
}

/// Installs the global subscriber. Call once, first thing in `main`, and
/// keep the answer until the process ends: dropping it sends the last spans.
pub fn init(service: &'static str, level: &str, format: LogFormat) -> Telemetry {
    let filter = parse_level(level).unwrap_or_else(|_| EnvFilter::new("info"));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty());
    let provider = endpoint.and_then(|endpoint| {
        let url = format!("{}/v1/traces", endpoint.trim().trim_end_matches('/'));
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(&url).build() {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service).build())
                    .build(),
            ),
            Err(error) => {
                eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT {url:?}: traces are not exported: {error}");
                None
            }
        }
    });
    let traces = provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let subscriber = tracing_subscriber::registry().with(filter).with(traces);
    let logs: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => Box::new(
            json_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        ),
        LogFormat::Pretty => Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
    };
    subscriber.with(logs).init();
    Telemetry { provider }
}

/// The trace exporter, while the process runs.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// The W3C `traceparent` of `span`, to carry its trace to another process
/// (empty when nothing is traced).
pub fn traceparent(span: &Span) -> String {
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&span.context(), &mut carrier)
    });
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the trace a `traceparent` names (nothing when empty or invalid).
pub fn continue_trace(span: &Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(context);
}

/// Logs for tests: silent unless `TEST_LOG` is set (to a level directive, or anything for `debug`).
pub fn init_for_tests() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let level = if parse_level(&level).is_ok() { level } else { "debug".to_owned() };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(parse_level(&level).unwrap_or_else(|_| EnvFilter::new("debug")))
            .with_test_writer()
            .try_init();
    }
}
