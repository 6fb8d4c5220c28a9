//! `GET /v1/admin/projections`: where each projection stands against the
//! head of the log, and its latest rebuild.
//! `POST /v1/admin/projections/{name}/rebuild`: asks the projections service
//! to rebuild one (202); progress shows on the GET.
//! The same figures as Prometheus gauges, computed in the background every
//! few seconds (so a scrape of `/metrics`, on the ops address, costs nothing).
//! Both routes need the `admin` scope.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use read_models::checkpoints::{self, ProjectionStatus};
use read_models::rebuilds::{self, RebuildStatus};
use serde::Serialize;
use service_kit::http::Problem;
use utoipa::ToSchema;

use super::{database_error, store_error, AppState};

/// The most events a projection's lag counts.
const LAG_COUNT_LIMIT: u64 = 1_000_000;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProjectionView {
    name: String,
    /// Global position of the last event the projection processed (0: none).
    checkpoint: i64,
    /// Global position of the newest readable event.
    head: i64,
    /// Events committed that the projection has not processed yet: the
    /// readable ones after its checkpoint (counted up to 1,000,000) and those
    /// held back behind a transaction still open (`held_back_events`).
    lag: i64,
    /// Events committed but not readable yet: an open transaction holds the
    /// log back (the relay's and the projections' `/metrics` name it).
    held_back_events: i64,
    /// How long the oldest event the projection has not processed has been
    /// in the log (0 when it is up to date): the lag in seconds.
    lag_seconds: f64,
    /// `running`, or `failed` (see `failure`).
    state: String,
    events_processed: i64,
    failure: Option<serde_json::Value>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The latest rebuild, if any: state, events done and total, rate, ETA.
    #[schema(value_type = Option<Object>)]
    rebuild: Option<RebuildStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Projections {
    projections: Vec<ProjectionView>,
}

/// Where each projection stands against the head of the log, and its latest rebuild.
#[utoipa::path(get, path = "/v1/admin/projections", tag = "admin", operation_id = "list_projections",
    responses(
        (status = 200, description = "Every projection", body = Projections),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope, or another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Projections>, Problem> {
    let projections = views(&state).await?;
    Ok(Json(Projections { projections }))
}

/// Records each projection's checkpoint, the head, its lag, whether it
/// stopped on an event, and its latest rebuild's progress as gauges, every
/// `period`, and how many queries wait for a position. Runs with the runtime.
pub(crate) async fn record_every(state: AppState, period: std::time::Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // A failure is logged by `views`; the gauges keep their last figures.
        if let Ok(views) = views(&state).await {
            views.iter().for_each(record);
        }
        metrics::gauge!("query_min_position_waiters").set(state.progress.waiting() as f64);
    }
}

/// A projection's figures as gauges.
fn record(view: &ProjectionView) {
    let labels = [("projection", view.name.clone())];
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!("projection_checkpoint_position", &labels).set(view.checkpoint as f64);
    metrics::gauge!("projection_head_position", &labels).set(view.head as f64);
    metrics::gauge!("projection_lag_events", &labels).set(view.lag as f64);
    metrics::gauge!("projection_lag_seconds", &labels).set(view.lag_seconds);
    metrics::gauge!("projection_events_processed", &labels).set(view.events_processed as f64);
    metrics::gauge!("projection_failed", &labels).set(flag(view.state == "failed"));
    if let Some(rebuild) = &view.rebuild {
        metrics::gauge!("projection_rebuild_events_done", &labels).set(rebuild.events_done as f64);
        metrics::gauge!("projection_rebuild_events_total", &labels).set(rebuild.events_total as f64);
        metrics::gauge!("projection_rebuild_running", &labels).set(flag(rebuild.state == "running"));
    }
}

/// Every projection, where it stands, and its latest rebuild.
async fn views(state: &AppState) -> Result<Vec<ProjectionView>, Problem> {
    let statuses = checkpoints::statuses(&state.pool, &read_models::NAMES).await.map_err(database_error)?;
    let mut rebuilds: HashMap<String, RebuildStatus> = rebuilds::statuses(&state.pool)
        .await
        .map_err(database_error)?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    // The head is the newest readable event; the lag counts the held-back ones too,
    // so a stalled log shows as lag, not as a projection that is up to date.
    let stats = state.store.stats().await.map_err(store_error)?;
    let (head, held_back) = (stats.readable_head, stats.held_back_events);
    let held_back_seconds = stats.held_back_ms as f64 / 1000.0;
    let mut views = Vec::with_capacity(statuses.len());
    for ProjectionStatus { name, checkpoint, events_processed, state: running, failure, updated_at } in statuses {
        let lag = state.store.count_after(checkpoint, LAG_COUNT_LIMIT).await.map_err(store_error)?;
        // The oldest readable event it has not processed, or the held-back ones' wait.
        let mut lag_seconds = if held_back > 0 { held_back_seconds } else { 0.0 };
        if lag > 0 {
            if let Some(next) = state.store.read_all(checkpoint, 1).await.map_err(store_error)?.first() {
                let age = (chrono::Utc::now() - next.recorded_at).num_milliseconds().max(0) as f64 / 1000.0;
                lag_seconds = lag_seconds.max(age);
            }
        }
        views.push(ProjectionView {
            rebuild: rebuilds.remove(&name),
            name,
            checkpoint: checkpoint.map_or(0, |at| at.position as i64),
            head: head.map_or(0, |head| head.position as i64),
            lag: (lag + held_back) as i64,
            held_back_events: held_back as i64,
            lag_seconds,
            state: running,
            events_processed: events_processed as i64,
            failure,
            updated_at,
        });
    }
    Ok(views)
}

/// Asks the projections service to rebuild a read model from the log, without downtime.
#[utoipa::path(post, path = "/v1/admin/projections/{name}/rebuild", tag = "admin", operation_id = "rebuild_projection",
    params(("name" = String, Path, description = "`orders`, `inventory` or `payments`")),
    responses(
        (status = 202, description = "Requested; progress shows on `GET /v1/admin/projections`", body = Object),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope, or another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn request_rebuild(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let Some(projection) = read_models::by_name(&name) else {
        return Err(Problem::not_found(format!("no projection is called {name:?}")));
    };
    rebuilds::request(&state.pool, projection.name()).await.map_err(database_error)?;
    let status = rebuilds::statuses(&state.pool)
        .await
        .map_err(database_error)?
        .into_iter()
        .find(|status| status.name == projection.name());
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, "/v1/admin/projections")], Json(status)).into_response())
}
