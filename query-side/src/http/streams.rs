//! `/v1/admin/streams/{stream_id}`: a stream's events a page at a time, and
//! the aggregate's state at any version (time travel), folded by the same
//! domain code the command side decides with.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::inventory::Inventory;
use domain::order::Order;
use domain::payment::Payment;
use domain::{Aggregate, EventPayload};
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use service_kit::http::Problem;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{store_error as store_problem, AppState};

/// Most events a state folds (a stream longer than this shows its state up to here).
const MAX_FOLD: u64 = 1_000_000;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamEvent {
    version: u64,
    /// Its place in the global log.
    position: u64,
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u16,
    recorded_at: DateTime<Utc>,
    correlation_id: String,
    causation_id: String,
    actor: String,
    /// As stored (personal data stays sealed).
    #[schema(value_type = Object)]
    payload: serde_json::Value,
}

impl From<RecordedEvent> for StreamEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            version: event.stream_version,
            position: event.log_position.position,
            event_id: event.event_id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            actor: event.metadata.actor,
            payload: event.payload,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamPage {
    stream_id: String,
    events: Vec<StreamEvent>,
    /// Pass as `from_version` for the next page; absent on the last.
    next_version: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamState {
    stream_id: String,
    /// The version the state is at: the one asked for, or the stream's last if it is shorter.
    version: u64,
    /// The aggregate's state after that version, as the domain folds it.
    #[schema(value_type = Object)]
    state: serde_json::Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The first version (default 1).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    from_version: Option<u64>,
    /// 1 to 500, default 100.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateQuery {
    /// The version to fold up to (default: the last).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    version: Option<u64>,
}

/// The stream's category, if it is `order-<uuid>`, `payment-<uuid>` or `inventory-<sku>`.
fn check_stream(stream_id: &str) -> Result<&'static str, Problem> {
    match stream_id.split_once('-') {
        Some(("order", id)) if Uuid::parse_str(id).is_ok() => Ok("order"),
        Some(("payment", id)) if Uuid::parse_str(id).is_ok() => Ok("payment"),
        Some(("inventory", sku)) if sku_ok(sku) => Ok("inventory"),
        _ => Err(Problem::bad_request("a stream is order-<uuid>, payment-<order uuid> or inventory-<sku>")),
    }
}

fn sku_ok(sku: &str) -> bool {
    let mut problems = domain::rules::Problems::default();
    domain::rules::check_sku(&mut problems, "sku", sku);
    problems.0.is_empty()
}

/// A stream's events, a page at a time.
#[utoipa::path(get, path = "/v1/admin/streams/{stream_id}/events", tag = "admin", operation_id = "read_stream",
    params(("stream_id" = String, Path, description = "`order-<uuid>`, `payment-<order uuid>` or `inventory-<sku>`", pattern = r"^((order|payment)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|inventory-[A-Za-z0-9._-]{1,64})$"), PageQuery),
    responses(
        (status = 200, description = "A page of the stream's events", body = StreamPage),
        (status = 400, description = "Not a stream, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The event store is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    stream_id: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<StreamPage>, Problem> {
    let (Path(stream_id), Query(query)) = (stream_id?, query?);
    check_stream(&stream_id)?;
    let (from, limit) = (query.from_version.unwrap_or(1), query.limit.unwrap_or(100));
    if from == 0 || from > i64::MAX as u64 || !(1..=500).contains(&limit) {
        return Err(Problem::bad_request("from_version is 1 or more; limit is 1 to 500"));
    }
    // One more than asked tells whether there is a next page.
    let mut events = state.store.read_stream_page(&stream_id, from, limit + 1).await.map_err(store_problem)?;
    if events.is_empty() && state.store.read_stream_page(&stream_id, 1, 1).await.map_err(store_problem)?.is_empty() {
        return Err(Problem::not_found(format!("no stream {stream_id}")));
    }
    let next_version = (events.len() > limit).then(|| from + limit as u64);
    events.truncate(limit);
    Ok(Json(StreamPage { stream_id, events: events.into_iter().map(StreamEvent::from).collect(), next_version }))
}

/// The aggregate's state at a version of its stream: its events up to
/// there, folded by the domain (time travel).
#[utoipa::path(get, path = "/v1/admin/streams/{stream_id}/state", tag = "admin", operation_id = "stream_state",
    params(("stream_id" = String, Path, description = "`order-<uuid>`, `payment-<order uuid>` or `inventory-<sku>`", pattern = r"^((order|payment)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|inventory-[A-Za-z0-9._-]{1,64})$"), StateQuery),
    responses(
        (status = 200, description = "The state at that version", body = StreamState),
        (status = 400, description = "Not a stream, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "An event this code cannot read", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The event store is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn state_at(
    State(state): State<AppState>,
    stream_id: Result<Path<String>, PathRejection>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<StreamState>, Problem> {
    let (Path(stream_id), Query(query)) = (stream_id?, query?);
    let category = check_stream(&stream_id)?;
    if query.version.is_some_and(|v| v == 0 || v > i64::MAX as u64) {
        return Err(Problem::bad_request("version is 1 to 9223372036854775807"));
    }
    let version = query.version.unwrap_or(MAX_FOLD).min(MAX_FOLD);
    if version == 0 {
        return Err(Problem::bad_request("version is 1 or more"));
    }
    let limit = usize::try_from(version).unwrap_or(usize::MAX);
    let events = state.store.read_stream_page(&stream_id, 1, limit).await.map_err(store_problem)?;
    let Some(last) = events.last().map(|e| e.stream_version) else {
        return Err(Problem::not_found(format!("no stream {stream_id}")));
    };
    let folded = match category {
        "order" => fold::<Order>(&events),
        "payment" => fold::<Payment>(&events),
        _ => fold::<Inventory>(&events),
    }
    .map_err(|reason| {
        tracing::error!(%stream_id, %reason, "time travel: an event this code cannot read");
        Problem::internal()
    })?;
    Ok(Json(StreamState { stream_id, version: last, state: folded }))
}

/// The state after `events`, as JSON.
fn fold<A>(events: &[RecordedEvent]) -> Result<serde_json::Value, String>
where
    A: Aggregate,
    A::State: Serialize,
{
    let mut decoded = Vec::with_capacity(events.len());
    for event in events {
        let payload = event.payload.clone();
        decoded.push(
            A::Event::from_stored(&event.event_type, event.schema_version, payload)
                .map_err(|e| format!("event {}: {e}", event.event_id))?,
        );
    }
    serde_json::to_value(A::fold(decoded.iter())).map_err(|e| e.to_string())
}
