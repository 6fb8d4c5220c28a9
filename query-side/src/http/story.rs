//! `GET /v1/admin/orders/{order_id}/story`: what happened to an order: every
//! event of the order carrying one of its correlation ids (the placement's,
//! and those of the requests that cancelled or shipped it; another order that
//! reused a correlation id stays out), across the order, payment
//! and inventory streams, in log order, with the time between steps; and
//! the dead letters that carry them.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use read_models::story::{self, Step};
use serde::Serialize;
use service_kit::http::Problem;
use utoipa::ToSchema;
use uuid::Uuid;

use super::dead_letters::{summary, DeadLetterSummary};
use super::{database_error, store_error, AppState};

/// Most steps a story shows.
const MAX_STEPS: i64 = 1000;
/// Most dead letters searched for the story's.
const MAX_DEAD_LETTERS: usize = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoryStep {
    #[serde(flatten)]
    step: Step,
    /// Milliseconds since the step before (0 for the first).
    since_previous_ms: i64,
    /// Milliseconds since the first step.
    since_start_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderStory {
    order_id: Uuid,
    /// The correlation ids of the order's own events, first the placement's.
    correlation_ids: Vec<String>,
    steps: Vec<StoryStep>,
    /// Dead letters carrying one of them (the oldest 1,000 dead letters searched).
    dead_letters: Vec<DeadLetterSummary>,
    /// NATS did not answer: the dead letters could not be searched.
    dead_letters_unavailable: bool,
}

/// What happened to an order, step by step, across streams.
#[utoipa::path(get, path = "/v1/admin/orders/{order_id}/story", tag = "admin", operation_id = "order_story",
    params(("order_id" = Uuid, Path)),
    responses(
        (status = 200, description = "The order's story", body = OrderStory),
        (status = 400, description = "Not an order id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database or the event store is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn story(
    State(state): State<AppState>,
    order_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<OrderStory>, Problem> {
    let Path(order_id) = order_id?;
    let events = state.store.read_stream_page(&format!("order-{order_id}"), 1, 1000).await.map_err(store_error)?;
    if events.is_empty() {
        return Err(Problem::not_found(format!("no order {order_id}")));
    }
    let mut correlation_ids: Vec<String> = Vec::new();
    for event in &events {
        if !correlation_ids.contains(&event.metadata.correlation_id) {
            correlation_ids.push(event.metadata.correlation_id.clone());
        }
    }
    let found = story::steps(&state.pool, order_id, &correlation_ids, MAX_STEPS).await.map_err(database_error)?;
    let start = found.first().map(|s| s.recorded_at);
    let mut previous = start;
    let steps = found
        .into_iter()
        .map(|step| {
            let at = step.recorded_at;
            let since = |from: Option<chrono::DateTime<chrono::Utc>>| from.map_or(0, |f| (at - f).num_milliseconds());
            let (since_previous_ms, since_start_ms) = (since(previous), since(start));
            previous = Some(at);
            StoryStep { step, since_previous_ms, since_start_ms }
        })
        .collect();
    let (dead_letters, dead_letters_unavailable) = match state.dead_letters.page(None, 0, MAX_DEAD_LETTERS).await {
        Ok((letters, _)) => (
            letters
                .iter()
                .filter(|l| l.header("Correlation-Id").is_some_and(|c| correlation_ids.iter().any(|id| id == c)))
                .map(summary)
                .collect(),
            false,
        ),
        Err(error) => {
            tracing::warn!(%error, "the story's dead letters could not be searched");
            (Vec::new(), true)
        }
    };
    Ok(Json(OrderStory { order_id, correlation_ids, steps, dead_letters, dead_letters_unavailable }))
}
