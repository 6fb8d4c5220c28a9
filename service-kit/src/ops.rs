//! What every service answers to its operators, HTTP API or not:
//! `GET /health/live` (the process runs), `GET /health/ready` (every
//! dependency answers; 503 naming the ones that do not, or 200 `degraded`
//! naming a condition that slows the service without stopping it) and
//! `GET /metrics` (Prometheus text), on an ops address of each service's own
//! ([`OpsServer`]). The APIs' public addresses answer the two health routes
//! too, for load balancers, without reasons ([`public_health_router`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::Problem;
use crate::shutdown::Shutdown;

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One dependency readiness asks about.
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    probe: Probe,
    /// Failing makes the service degraded (still ready), not unready.
    degrades_only: bool,
}

impl Check {
    pub fn new<F, Fut>(name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self { name, probe: Arc::new(move || Box::pin(probe())), degrades_only: false }
    }

    /// This check failing leaves the service ready but `degraded`: a
    /// condition outside the process that restarting it or sending it no
    /// traffic would not cure (a log held back by someone's transaction).
    pub fn degrading(self) -> Self {
        Self { degrades_only: true, ..self }
    }

    /// The database answers and every migration of `expected` is applied.
    #[cfg(feature = "postgres")]
    pub fn database(pool: sqlx::PgPool, expected: usize) -> Self {
        Self::new("database", move || {
            let pool = pool.clone();
            async move {
                let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| format!("does not answer: {e}"))?;
                if (applied as usize) < expected {
                    return Err(format!("{applied} of {expected} migrations applied"));
                }
                Ok(())
            }
        })
    }

    /// The event store answers. Only asked where it is not the database
    /// already checked (EventStoreDB): see [`Check::event_store_if_separate`].
    #[cfg(feature = "event-store")]
    pub fn event_store(store: Arc<dyn event_store::EventStore>) -> Self {
        Self::new("event_store", move || {
            let store = store.clone();
            async move { store.stats().await.map(|_| ()).map_err(|e| format!("does not answer: {e}")) }
        })
    }

    /// The log is not stalled: no events wait behind an open transaction
    /// longer than `event_store::watch::STALL_AFTER` (the reason names it).
    /// A stall degrades the service; it does not make it unready.
    #[cfg(feature = "event-store")]
    pub fn log_horizon(store: Arc<dyn event_store::EventStore>) -> Self {
        Self::new("log_horizon", move || {
            let store = store.clone();
            async move {
                let stats = store.stats().await.map_err(|e| format!("does not answer: {e}"))?;
                event_store::watch::stall(&stats).map_or(Ok(()), Err)
            }
        })
        .degrading()
    }

    /// [`Check::event_store`] unless the events live in PostgreSQL.
    #[cfg(feature = "event-store")]
    pub fn event_store_if_separate(
        backend: &event_store::Backend,
        store: &Arc<dyn event_store::EventStore>,
    ) -> Option<Self> {
        (*backend != event_store::Backend::Postgres).then(|| Self::event_store(store.clone()))
    }

    /// Connected to NATS.
    #[cfg(feature = "nats")]
    pub fn nats(client: async_nats::Client) -> Self {
        Self::new("nats", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("not connected ({other})")),
                }
            }
        })
    }
}

/// Longest a readiness probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/health/live`, `/health/ready` (asking `checks`) and `/metrics`, for an
/// operators' address: readiness says why each dependency fails.
pub fn router<S: Clone + Send + Sync + 'static>(checks: Vec<Check>) -> Router<S> {
    with_metrics(health(checks, Detail::Reasons))
}

/// `/health/live` and `/health/ready` for an API's public address, where a
/// load balancer asks: readiness names the failing dependencies without
/// their reasons (a database error's text is for the logs and the ops
/// address, not for whoever asks). `/metrics` is on the ops address only.
pub fn public_health_router<S: Clone + Send + Sync + 'static>(checks: Vec<Check>) -> Router<S> {
    health(checks, Detail::Names)
}

fn with_metrics<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    crate::metrics::handle();
    router.route("/metrics", get(|| async { crate::metrics::render() }))
}

/// What a 503 from `/health/ready` says of each failing dependency.
#[derive(Clone, Copy)]
enum Detail {
    Names,
    Reasons,
}

fn health<S: Clone + Send + Sync + 'static>(checks: Vec<Check>, detail: Detail) -> Router<S> {
    let checks = Arc::new(checks);
    Router::new().route("/health/live", get(live)).route("/health/ready", get(move || ready(checks.clone(), detail)))
}

async fn ready(checks: Arc<Vec<Check>>, detail: Detail) -> Response {
    let (mut failing, mut degraded) = (Vec::new(), Vec::new());
    for check in checks.iter() {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, (check.probe)())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        if let Err(reason) = outcome {
            tracing::warn!(dependency = check.name, %reason, degraded = check.degrades_only, "not ready");
            let said = match detail {
                Detail::Names => check.name.to_owned(),
                Detail::Reasons => format!("{}: {reason}", check.name),
            };
            if check.degrades_only { &mut degraded } else { &mut failing }.push(said);
        }
    }
    if !failing.is_empty() {
        failing.extend(degraded);
        return Problem::unavailable(format!("not ready: {}", failing.join("; ")), 5).into_response();
    }
    if degraded.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let body = Degraded { status: "degraded", detail: degraded.join("; ") };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `/health/ready`'s 200: ready, but something slows the service down.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Degraded {
    /// Always `degraded`.
    #[schema(example = "degraded")]
    status: &'static str,
    /// What degrades the service (on an ops address, with the reason).
    #[schema(example = "log_horizon")]
    detail: String,
}

/// The operations routes of an API's public address in its OpenAPI document
/// (merged into each API's own; the routes are [`public_health_router`]'s).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(live, ready_doc),
    tags((name = "operations", description = "Health, for orchestrators and load balancers; no token needed. Metrics and readiness with reasons are on the ops address"))
)]
pub struct OpsApi;

/// The process runs.
#[utoipa::path(get, path = "/health/live", tag = "operations", operation_id = "live",
    responses((status = 204, description = "The process runs")))]
async fn live() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Every dependency answers (the database with its migrations applied, the event store where it is not the database, NATS where the process uses it).
#[utoipa::path(get, path = "/health/ready", tag = "operations", operation_id = "ready",
    responses(
        (status = 204, description = "Ready"),
        (status = 200, description = "Ready, but degraded: `detail` names what slows the service down (a log held back by an open transaction)", body = Degraded),
        (status = 503, description = "Not ready: `detail` names each dependency that does not answer (`Retry-After`)",
         body = Problem, content_type = "application/problem+json"),
    ))]
#[allow(dead_code)] // documents `ready`, which takes the checks
fn ready_doc() {}

/// The ops routes ([`router`]) on an address of their own: every service
/// has one (the APIs' public address has health only).
pub struct OpsServer {
    listener: tokio::net::TcpListener,
}

impl OpsServer {
    /// Binds `addr` now, so a taken port stops the service at start-up.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self { listener: tokio::net::TcpListener::bind(addr).await? })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown`.
    pub async fn run(self, checks: Vec<Check>, shutdown: Shutdown) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "ops endpoints listening (/health/live, /health/ready, /metrics)");
        let router = crate::http::layers(router(checks), Duration::from_secs(10));
        crate::http::serve(self.listener, router, async move { shutdown.requested().await }).await
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn status(router: Router, path: &str) -> (StatusCode, String) {
        let response = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ready_names_every_dependency_that_does_not_answer() {
        let checks = vec![
            Check::new("database", || async { Ok(()) }),
            Check::new("nats", || async { Err("not connected".to_owned()) }),
        ];
        let (code, body) = status(router(checks), "/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("nats: not connected") && !body.contains("database"), "{body}");
        let (code, _) = status(router(vec![Check::new("database", || async { Ok(()) })]), "/health/ready").await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        assert_eq!(status(router(vec![]), "/health/live").await.0, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_degrading_check_that_fails_leaves_the_service_ready_but_degraded() {
        let stalled = || Check::new("log_horizon", || async { Err("held back by pid 42".to_owned()) }).degrading();
        let (code, body) =
            status(router(vec![Check::new("database", || async { Ok(()) }), stalled()]), "/health/ready").await;
        assert_eq!(code, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, serde_json::json!({"status": "degraded", "detail": "log_horizon: held back by pid 42"}));
        let (_, body) = status(public_health_router(vec![stalled()]), "/health/ready").await;
        assert!(body.contains("log_horizon") && !body.contains("pid"), "{body}");
        // With a required dependency failing too, the service is not ready, and says both.
        let down = Check::new("database", || async { Err("does not answer".to_owned()) });
        let (code, body) = status(router(vec![down, stalled()]), "/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("database: does not answer; log_horizon: held back"), "{body}");
    }

    #[tokio::test]
    async fn public_readiness_names_the_dependency_without_its_error_text() {
        let failing =
            || vec![Check::new("database", || async { Err("password authentication failed for user app".into()) })];
        let (code, body) = status(public_health_router(failing()), "/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not ready: database") && !body.contains("password"), "{body}");
        assert_eq!(status(public_health_router(vec![]), "/metrics").await.0, StatusCode::NOT_FOUND);
        let (_, body) = status(router(failing()), "/health/ready").await;
        assert!(body.contains("password authentication failed"), "operators see why: {body}");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let router = router(vec![]); // installs the recorder
        ::metrics::counter!("ops_test_total").increment(1);
        let (code, body) = status(router, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("ops_test_total 1"), "{body}");
    }
}
