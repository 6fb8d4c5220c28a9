//! `/v1/webhooks`: merchants register the endpoints the notifier sends the
//! orders' milestones to (scope `admin`; ADR 0015).

use application::webhooks::{Delivery, Endpoint, RegistryError};
use application::Application;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::http::{FieldProblem, Problem};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::JsonBody;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://merchant.example/hooks/orders", "events": ["order.confirmed", "order.cancelled"]}))]
pub(crate) struct RegisterWebhook {
    /// `http` or `https`, to a host the configuration allows (never an internal address in production).
    #[schema(
        max_length = 2048,
        pattern = "^https?://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~/-]*)?$"
    )]
    url: String,
    /// The event types to receive: any of `order.confirmed`, `order.rejected`, `order.cancelled`, `order.shipped`.
    #[schema(min_items = 1, max_items = 4, inline, value_type = Vec<EventType>)]
    events: Vec<String>,
    /// A note for operators.
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{0,200}$")]
    description: String,
}

/// An event type an endpoint may hear.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the strings `events` holds
pub(crate) enum EventType {
    #[schema(rename = "order.confirmed")]
    Confirmed,
    #[schema(rename = "order.rejected")]
    Rejected,
    #[schema(rename = "order.cancelled")]
    Cancelled,
    #[schema(rename = "order.shipped")]
    Shipped,
}

/// A registered endpoint, with its signing secret: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisteredWebhook {
    id: Uuid,
    url: String,
    events: Vec<String>,
    description: String,
    created_at: DateTime<Utc>,
    /// `whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks). Not shown again.
    secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Webhooks {
    items: Vec<Endpoint>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deliveries {
    /// Newest first.
    items: Vec<Delivery>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    /// How many of the newest deliveries (1 to 200, default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// Register a webhook endpoint: it receives the order events it names,
/// signed with the secret this answer shows once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "register_webhook",
    request_body = RegisterWebhook,
    responses(
        (status = 201, description = "Registered (`Location`)", body = RegisteredWebhook),
        (status = 400, description = "Not a JSON object of this shape", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A URL that is not allowed, or unknown event types", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn register(
    State(application): State<Application>,
    body: JsonBody<RegisterWebhook>,
) -> Result<(StatusCode, HeaderMap, Json<RegisteredWebhook>), Problem> {
    let RegisterWebhook { url, events, description } = body.value;
    let registered =
        application.webhooks().register(&url, &events, &description).await.map_err(|error| match error {
            RegistryError::Invalid { field, message } => {
                Problem::validation(vec![FieldProblem { field: field.into(), message }])
            }
            RegistryError::Database(error) => database(error),
        })?;
    let endpoint = registered.endpoint;
    tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, events = ?endpoint.events, "webhook endpoint registered");
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/webhooks/{}", endpoint.id)) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let answer = RegisteredWebhook {
        id: endpoint.id,
        url: endpoint.url,
        events: endpoint.events,
        description: endpoint.description,
        created_at: endpoint.created_at,
        secret: registered.secret,
    };
    Ok((StatusCode::CREATED, headers, Json(answer)))
}

/// The registered endpoints (without their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "list_webhooks",
    responses(
        (status = 200, description = "The live endpoints, oldest first", body = Webhooks),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn list(State(application): State<Application>) -> Result<Json<Webhooks>, Problem> {
    let items = application.webhooks().list().await.map_err(database)?;
    Ok(Json(Webhooks { items }))
}

/// Delete an endpoint: nothing more is sent to it and its pending deliveries
/// are cancelled.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "delete_webhook",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not an endpoint id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint (or deleted already)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn delete(
    State(application): State<Application>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path(id) = id?;
    if !application.webhooks().delete(id).await.map_err(database)? {
        return Err(Problem::not_found(format!("no webhook endpoint {id}")));
    }
    tracing::info!(endpoint_id = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The newest deliveries to an endpoint, each with its attempts: when, the
/// endpoint's status, how long it took, what failed.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "list_webhook_deliveries",
    params(("id" = Uuid, Path), DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = Deliveries),
        (status = 400, description = "Not an endpoint id, or a bad limit", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn deliveries(
    State(application): State<Application>,
    id: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<Deliveries>, Problem> {
    let Path(id) = id?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request("limit must be 1 to 200"));
    }
    match application.webhooks().deliveries(id, limit).await.map_err(database)? {
        Some(items) => Ok(Json(Deliveries { items })),
        None => Err(Problem::not_found(format!("no webhook endpoint {id}"))),
    }
}

fn database(error: sqlx::Error) -> Problem {
    if event_store::is_transient(&error) {
        tracing::warn!(%error, "database unavailable");
        Problem::unavailable("the database is unavailable", 1)
    } else {
        tracing::error!(%error, "webhook endpoints");
        Problem::internal()
    }
}
