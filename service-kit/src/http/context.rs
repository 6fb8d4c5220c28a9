//! Request and correlation ids, and the middleware stack every API shares.
//!
//! - `x-request-id`: one per request, made here unless a proxy set one; on every response.
//! - `x-correlation-id`: the client's (or a new one); shared by all the work a
//!   request causes, across services. Echoed on the response and recorded in
//!   every event the request appends.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The ids of the request being handled.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
}

fn valid_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| text.to_owned())
}

/// Takes the client's correlation id (or makes one; an unusable one is
/// replaced, not refused) and echoes it on the response.
pub async fn correlation_layer(mut request: Request, next: Next) -> Response {
    let correlation_id =
        request.headers().get(&CORRELATION_ID).and_then(valid_id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| valid_id(id.header_value()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestContext { request_id, correlation_id: correlation_id.clone() });
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<RequestContext>().cloned().ok_or_else(|| {
            tracing::error!("RequestContext missing: the router lacks service_kit::http::layers");
            Problem::internal()
        })
    }
}

/// Answers 503 problem+json when a request takes longer than `limit`. The
/// handler is dropped at that point: a command it was running may or may not
/// have been applied, which a retry with the same Idempotency-Key resolves.
async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?limit, "request timed out");
            Problem::unavailable(format!("the request took longer than {limit:?}"), 1).into_response()
        }
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::internal().into_response()
}

/// Per request: `http_requests_total{method, route, status}` and
/// `http_request_duration_seconds{method, route}`, by route template (not
/// path, so ids do not make new series).
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Wraps a router in the shared stack, outermost first: request id,
/// correlation id, a tracing span per request, request-id echo, request
/// metrics, a time limit (503 problem), and a panic catcher (500 problem).
pub fn layers(router: Router, timeout: Duration) -> Router {
    let trace = TraceLayer::new_for_http().on_response(DefaultOnResponse::new().level(Level::INFO)).make_span_with(
        |request: &Request| {
            let context = request.extensions().get::<RequestContext>();
            let span = tracing::info_span!(
                "http",
                method = %request.method(),
                path = %request.uri().path(),
                request_id = context.map_or("", |c| c.request_id.as_str()),
                correlation_id = context.map_or("", |c| c.correlation_id.as_str()),
            );
            // A caller's trace continues here.
            let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
            crate::telemetry::continue_trace(&span, traceparent);
            span
        },
    );
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(move |request, next| time_limit(timeout, request, next)))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(axum::middleware::from_fn(correlation_layer))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn panics() -> &'static str {
        panic!("a handler bug")
    }

    fn app() -> Router {
        let router = Router::new()
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }))
            .route("/panic", get(panics))
            .route("/ok", get(|| async { "ok" }));
        layers(router, Duration::from_millis(50))
    }

    async fn call(path: &str, correlation: Option<&str>) -> Response {
        let mut request = axum::http::Request::get(path);
        if let Some(id) = correlation {
            request = request.header("x-correlation-id", id);
        }
        app().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn a_slow_request_is_a_503_problem_with_retry_after() {
        let response = call("/slow", None).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["content-type"], super::super::PROBLEM_JSON);
        assert_eq!(response.headers()["retry-after"], "1");
        assert!(response.headers().contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn a_panic_is_a_500_problem_that_keeps_the_ids() {
        let response = call("/panic", Some("corr-1")).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], super::super::PROBLEM_JSON);
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(response.headers()["x-correlation-id"], "corr-1");
    }

    #[tokio::test]
    async fn an_unusable_correlation_id_is_replaced() {
        let response = call("/ok", Some("has spaces in it")).await;
        let id = response.headers()["x-correlation-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}
