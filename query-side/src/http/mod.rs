//! The query API's routes, and what every query shares: `min_position`, and
//! problem+json for bad parameters and unknown ids.

mod admin;
mod console;
mod dead_letters;
mod doc;
mod inventory;
mod orders;
mod payments;
mod story;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::Json;
use axum::Router;
use event_store::{EventStore, StoreError};
use serde::{Deserialize, Serialize};
use service_kit::auth::{self, ClientKey, Gate};
use service_kit::http::Problem;
use service_kit::nats::dead_letters::DeadLetters;
use service_kit::personal_data::Vault;
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::progress::{Progress, ProgressError};

#[derive(Clone)]
pub(crate) struct AppState {
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub progress: Progress,
    pub min_position_wait: Duration,
    /// Opens the customers' sealed personal data (ADR 0014).
    pub vault: Vault,
    /// The dead-letter stream, for the admin API.
    pub dead_letters: DeadLetters,
}

/// The API's routes with their documentation, registered together.
fn documented() -> OpenApiRouter<AppState> {
    let scope = |scope: &'static str| from_fn(move |request, next| auth::require_scope(scope, request, next));
    let orders = OpenApiRouter::new()
        .routes(routes!(orders::list))
        .routes(routes!(orders::get_one))
        .routes(routes!(payments::get_one))
        .route_layer(scope(auth::ORDERS_READ));
    let inventory = OpenApiRouter::new().routes(routes!(inventory::get_one)).route_layer(scope(auth::INVENTORY_READ));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::list))
        .routes(routes!(admin::request_rebuild))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::show, dead_letters::discard))
        .routes(routes!(dead_letters::replay_one))
        .routes(routes!(dead_letters::replay_many))
        .routes(routes!(streams::events))
        .routes(routes!(streams::state_at))
        .routes(routes!(story::story))
        .route_layer(scope(auth::ADMIN));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi().merge_from(service_kit::ops::OpsApi::openapi()))
        .merge(orders)
        .merge(inventory)
        .merge(admin)
}

/// How often the projections' gauges are computed for `/metrics`.
const METRICS_PERIOD: Duration = Duration::from_secs(5);

/// Computes the gauges `/metrics` (on the ops address) shows, in the background.
pub(crate) fn record_metrics(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(admin::record_every(state, METRICS_PERIOD))
}

/// The OpenAPI document the API serves at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

pub(crate) fn router(state: AppState, gate: Gate, checks: Vec<service_kit::ops::Check>) -> Router {
    let (api, document) = documented().layer(from_fn_with_state(gate, auth::authenticate)).split_for_parts();
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", document))
        .merge(console::router())
        .merge(service_kit::ops::public_health_router(checks))
        .fallback(service_kit::http::not_found_route)
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
        })
        .with_state(state)
}

/// How long a browser may keep a query's answer before it asks again
/// (with `If-None-Match`): short, the read models move.
const MAX_AGE_SECONDS: u32 = 5;

/// The answer to a query of one row: `ETag` naming what the row is at,
/// `Cache-Control: private` with a short max-age, `Vary: Authorization`;
/// `304 Not Modified` without a body when `If-None-Match` names it already.
pub(crate) fn one_row<T: Serialize>(request: &HeaderMap, tag: &str, value: T) -> Response {
    let etag = format!("\"{tag}\"");
    let known = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|listed| {
        listed.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
    });
    let mut headers = cache_headers();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if known {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, Json(value)).into_response()
}

/// `Cache-Control` and `Vary` of every query answer.
pub(crate) fn cache_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("private, max-age={MAX_AGE_SECONDS}")).expect("a header value"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("authorization"));
    headers
}

/// `?min_position=N` on a single-resource query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Freshness {
    /// Wait (up to `MIN_POSITION_WAIT`) until the read model has applied this global position.
    min_position: Option<u64>,
}

impl AppState {
    /// Waits until `projection` has applied `min_position`; 503 with
    /// `Retry-After` if it has not within the configured time, 429 or 503 at
    /// once when `client` or everyone waits too often already.
    pub async fn fresh_enough(
        &self,
        projection: &str,
        freshness: &Freshness,
        client: &ClientKey,
    ) -> Result<(), Problem> {
        let Some(position) = freshness.min_position else { return Ok(()) };
        match self.progress.wait_for(&self.store, projection, position, self.min_position_wait, &client.0).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Problem::unavailable(
                format!("the {projection} read model has not reached position {position} yet"),
                1,
            )),
            Err(error) => Err(progress_error(error)),
        }
    }
}

pub(crate) fn progress_error(error: ProgressError) -> Problem {
    match error {
        ProgressError::Database(error) => database_error(error),
        ProgressError::Store(error) => store_error(error),
        ProgressError::TooManyForClient { limit } => {
            metrics::counter!("query_min_position_refused_total", "why" => "client").increment(1);
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                .with_detail(format!("this client already waits for {limit} positions (min_position) at once"))
                .with_retry_after(1)
        }
        ProgressError::TooMany { limit } => {
            metrics::counter!("query_min_position_refused_total", "why" => "total").increment(1);
            Problem::unavailable(format!("{limit} queries wait for a position (min_position) already"), 1)
        }
    }
}

pub(crate) fn store_error(error: StoreError) -> Problem {
    tracing::error!(%error, "event store query failed");
    match error {
        StoreError::Unavailable(_) => Problem::unavailable("the event store is unavailable", 1),
        _ => Problem::internal(),
    }
}

pub(crate) fn database_error(error: sqlx::Error) -> Problem {
    tracing::error!(%error, "read model query failed");
    if event_store::is_transient(&error) {
        Problem::unavailable("the database is unavailable", 1)
    } else {
        Problem::internal()
    }
}
