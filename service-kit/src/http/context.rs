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
use futures_util::FutureExt;
use tracing::Instrument;

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

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<RequestContext>().cloned().ok_or_else(|| {
            tracing::error!("RequestContext missing: the router lacks service_kit::http::layers");
            Problem::internal()
        })
    }
}

/// The stack every API shares, as one middleware (one boxed future and one
/// service clone per request, where seven layers cost seven), outermost
/// first:
/// - the request id: the proxy's `x-request-id` or a new one, echoed on the
///   response;
/// - the correlation id: the client's `x-correlation-id` (an unusable one
///   is replaced, not refused) or a new one, echoed on the response;
/// - a tracing span per request carrying both ids (a caller's
///   `traceparent` continues there), closed by one access log line;
/// - `http_requests_total{method, route, status}` and
///   `http_request_duration_seconds{method, route}`, by route template (not
///   path, so ids do not make new series);
/// - a time limit: a 503 problem with `Retry-After` once the request takes
///   longer than `limit`. The handler is dropped at that point: a command it
///   was running may or may not have been applied, which a retry with the
///   same Idempotency-Key resolves;
/// - a panic in a handler is a 500 problem (the ids still on it).
async fn shared_stack(limit: Duration, mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let request_id = request.headers().get(&REQUEST_ID).and_then(valid_id).unwrap_or_else(new_id);
    let correlation_id = request.headers().get(&CORRELATION_ID).and_then(valid_id).unwrap_or_else(new_id);
    let method = request.method().clone();
    let route: Option<std::sync::Arc<str>> =
        request.extensions().get::<axum::extract::MatchedPath>().map(|path| path.as_str().into());
    let span = tracing::info_span!(
        "http",
        method = %method,
        path = %request.uri().path(),
        request_id = request_id.as_str(),
        correlation_id = correlation_id.as_str(),
    );
    // A caller's trace continues here.
    let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
    crate::telemetry::continue_trace(&span, traceparent);
    let ids = (HeaderValue::from_str(&request_id), HeaderValue::from_str(&correlation_id));
    request.extensions_mut().insert(RequestContext { request_id, correlation_id });

    let handled = std::panic::AssertUnwindSafe(next.run(request)).catch_unwind();
    let mut response = match tokio::time::timeout(limit, handled).instrument(span.clone()).await {
        Ok(Ok(response)) => response,
        Ok(Err(_panic)) => {
            span.in_scope(|| tracing::error!("a request handler panicked"));
            Problem::internal().into_response()
        }
        Err(_) => {
            span.in_scope(|| tracing::warn!(?limit, "request timed out"));
            Problem::unavailable(format!("the request took longer than {limit:?}"), 1).into_response()
        }
    };
    if let (Ok(request_id), Ok(correlation_id)) = ids {
        response.headers_mut().insert(REQUEST_ID, request_id);
        response.headers_mut().insert(CORRELATION_ID, correlation_id);
    }

    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_ms, "response failed");
        } else {
            tracing::info!(status = status.as_u16(), latency_ms, "finished processing request");
        }
    });
    let method = method_label(&method);
    let route = route.map_or(metrics::SharedString::const_str("unmatched"), metrics::SharedString::from);
    let status = metrics::SharedString::from(status.as_u16().to_string());
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    response
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The method as a label, without an allocation for the usual ones.
fn method_label(method: &axum::http::Method) -> metrics::SharedString {
    use axum::http::Method as M;
    let name = match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => return metrics::SharedString::from(method.as_str().to_owned()),
    };
    metrics::SharedString::const_str(name)
}

/// Wraps a router in the shared stack (see [`shared_stack`]).
pub fn layers(router: Router, timeout: Duration) -> Router {
    router.layer(axum::middleware::from_fn(move |request, next| shared_stack(timeout, request, next)))
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
    async fn the_ids_are_kept_or_made_and_echoed() {
        let response = app()
            .oneshot(
                axum::http::Request::get("/ok")
                    .header("x-request-id", "req-7")
                    .header("x-correlation-id", "corr-7")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "req-7");
        assert_eq!(response.headers()["x-correlation-id"], "corr-7");
        let response = call("/ok", None).await;
        for header in ["x-request-id", "x-correlation-id"] {
            let id = response.headers()[header].to_str().unwrap();
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{header}: {id}");
        }
    }

    #[tokio::test]
    async fn an_unusable_correlation_id_is_replaced() {
        let response = call("/ok", Some("has spaces in it")).await;
        let id = response.headers()["x-correlation-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
}
