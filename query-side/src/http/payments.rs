//! `GET /v1/payments/{order_id}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use read_models::orders;
use read_models::payments::{self, PaymentRow};
use service_kit::auth::{ClientKey, Principal};
use service_kit::http::Problem;
use uuid::Uuid;

use super::{database_error, one_row, progress_error, AppState, Freshness};

/// The payment of an order. A customer token reads its own orders' payments only.
#[utoipa::path(get, path = "/v1/payments/{order_id}", tag = "payments", operation_id = "get_payment",
    params(("order_id" = Uuid, Path), Freshness),
    responses(
        (status = 200, description = "The payment", body = PaymentRow, headers(("ETag" = String, description = "What the row is at; send it back in `If-None-Match`"), ("Cache-Control" = String, description = "`private, max-age=5`"))),
        (status = 304, description = "Not modified: `If-None-Match` names its `ETag`"),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope, or another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited, or this client already waits for too many `min_position`s at once (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_position` not reached in time, or too many queries wait for one (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    client: ClientKey,
    headers: HeaderMap,
    order_id: Result<Path<Uuid>, PathRejection>,
    freshness: Result<Query<Freshness>, QueryRejection>,
) -> Result<Response, Problem> {
    let Path(order_id) = order_id?;
    let Query(freshness) = freshness?;
    // Another customer's payment is 403 at once, before any wait (see `get_one` of orders).
    if let (Some(_), Some(customer)) = (principal.customer(), customer_of(&state, order_id).await?) {
        principal.require_customer(&customer)?;
    }
    state.fresh_enough("payments", &freshness, &client).await?;
    let payment = payments::get(&state.pool, order_id).await.map_err(database_error)?;
    let payment = payment.ok_or_else(|| Problem::not_found(format!("no payment for order {order_id}")))?;
    if principal.customer().is_some() {
        principal.require_customer(&owner(&state, order_id, &client).await?)?;
    }
    Ok(one_row(&headers, &payment.version.to_string(), payment))
}

/// Who placed the order a payment belongs to. The orders read model may lag
/// the payments one: if it lacks the order yet, it is given the time to
/// catch up before the answer is decided.
async fn owner(state: &AppState, order_id: Uuid, client: &ClientKey) -> Result<String, Problem> {
    if let Some(customer) = customer_of(state, order_id).await? {
        return Ok(customer);
    }
    state
        .progress
        .wait_caught_up("orders", "payments", state.min_position_wait, &client.0)
        .await
        .map_err(progress_error)?;
    customer_of(state, order_id)
        .await?
        .ok_or_else(|| Problem::unavailable(format!("the order of payment {order_id} is not readable yet"), 1))
}

async fn customer_of(state: &AppState, order_id: Uuid) -> Result<Option<String>, Problem> {
    orders::customer_of(&state.pool, order_id).await.map_err(database_error)
}
