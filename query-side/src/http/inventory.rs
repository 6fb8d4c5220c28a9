//! `GET /v1/inventory/{sku}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use read_models::inventory::{self, InventoryView};
use service_kit::auth::ClientKey;
use service_kit::http::Problem;

use super::{database_error, one_row, AppState, Freshness};

/// One item's stock.
#[utoipa::path(get, path = "/v1/inventory/{sku}", tag = "inventory", operation_id = "get_inventory",
    params(("sku" = String, Path), Freshness),
    responses(
        (status = 200, description = "The item", body = InventoryView, headers(("ETag" = String, description = "What the row is at; send it back in `If-None-Match`"), ("Cache-Control" = String, description = "`private, max-age=5`"))),
        (status = 304, description = "Not modified: `If-None-Match` names its `ETag`"),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope, or another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or this client already waits for too many `min_position`s at once (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached in time, or too many queries wait for one (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["inventory:read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    client: ClientKey,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
    freshness: Result<Query<Freshness>, QueryRejection>,
) -> Result<Response, Problem> {
    let Path(sku) = sku?;
    let Query(freshness) = freshness?;
    state.fresh_enough("inventory", &freshness, &client).await?;
    let item = inventory::get(&state.pool, &sku).await.map_err(database_error)?;
    let item = item.ok_or_else(|| Problem::not_found(format!("no inventory item {sku:?}")))?;
    Ok(one_row(&headers, &item.version.to_string(), item))
}
