//! `GET /v1/orders/{order_id}` and `GET /v1/orders` (filters, cursor pagination).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use read_models::orders::{self, Filter, OrderRow};
use serde::{Deserialize, Serialize};
use service_kit::auth::{ClientKey, Principal};
use service_kit::http::Problem;
use service_kit::personal_data::{Opened, VaultError};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use axum::http::HeaderMap;
use axum::response::Response;

use super::{cache_headers, database_error, one_row, AppState, Freshness};

/// One order. A customer token reads its own orders only.
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders", operation_id = "get_order",
    params(("order_id" = Uuid, Path), Freshness),
    responses(
        (status = 200, description = "The order", body = OrderRow, headers(("ETag" = String, description = "What the row is at; send it back in `If-None-Match`"), ("Cache-Control" = String, description = "`private, max-age=5`"))),
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
    // Who may read it is known before any wait: an order's customer never
    // changes, so another customer's order is 403 at once.
    if let Some(customer) = orders::customer_of(&state.pool, order_id).await.map_err(database_error)? {
        principal.require_customer(&customer)?;
    }
    state.fresh_enough("orders", &freshness, &client).await?;
    let order = orders::get(&state.pool, order_id).await.map_err(database_error)?;
    let mut order = order.ok_or_else(|| Problem::not_found(format!("no order {order_id}")))?;
    principal.require_customer(&order.customer_id)?;
    reveal_contact(&state, std::slice::from_mut(&mut order)).await?;
    // The row shows the order's and the payment's streams, and whether the address is erased.
    let erased = if order.contact_email_erased { "-erased" } else { "" };
    let tag = format!("{}.{}{erased}", order.version, order.payment_version);
    Ok(one_row(&headers, &tag, order))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only this customer's orders (a customer token: its own, whether given or not).
    #[param(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")]
    customer_id: Option<String>,
    /// `pending`, `confirmed`, `shipped`, `rejected` or `cancelled`.
    #[param(pattern = "^(pending|confirmed|shipped|rejected|cancelled)$")]
    status: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^(3[0-9]){1,18}2e(3[0-9]|6[1-6]){32}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page {
    items: Vec<OrderRow>,
    next_cursor: Option<String>,
}

const STATUSES: [&str; 5] = ["pending", "confirmed", "shipped", "rejected", "cancelled"];
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// Orders, newest first. The cursor is the (created_at, order_id) of the
/// last item, so pages stay stable while new orders arrive.
#[utoipa::path(get, path = "/v1/orders", tag = "orders", operation_id = "list_orders", params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = Page),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope, or another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<(HeaderMap, Json<Page>), Problem> {
    let Query(query) = query?;
    let (filter, limit) = query.checked(&principal)?;
    let (mut items, next) = orders::page(&state.pool, &filter, limit).await.map_err(database_error)?;
    reveal_contact(&state, &mut items).await?;
    let next_cursor = next.map(|(created_at, order_id)| encode_cursor(created_at, order_id));
    Ok((cache_headers(), Json(Page { items, next_cursor })))
}

/// Opens each order's sealed contact address with its customer's key, now
/// (one query for all): an erased customer's reads as erased (ADR 0014).
async fn reveal_contact(state: &AppState, orders: &mut [OrderRow]) -> Result<(), Problem> {
    let sealed: Vec<(usize, (Uuid, &str))> = orders
        .iter()
        .enumerate()
        .filter_map(|(i, order)| Some((i, (order.contact_key_id?, order.contact_email_sealed.as_deref()?))))
        .collect();
    if sealed.is_empty() {
        return Ok(());
    }
    let values: Vec<(Uuid, &str)> = sealed.iter().map(|(_, value)| *value).collect();
    let opened = state.vault.open_all(&values).await.map_err(|error| {
        tracing::error!(%error, "cannot open contact addresses");
        match error {
            VaultError::Database(db) => database_error(db),
            _ => Problem::internal(),
        }
    })?;
    let at: Vec<usize> = sealed.iter().map(|(i, _)| *i).collect();
    for (i, opened) in at.into_iter().zip(opened) {
        match opened {
            Opened::Clear(email) => orders[i].contact_email = Some(email),
            Opened::Erased => orders[i].contact_email_erased = true,
            Opened::Unreadable => {}
        }
    }
    Ok(())
}

impl ListQuery {
    /// The filter and page size asked for, checked; a customer lists its own
    /// orders, whether it says so or not.
    fn checked(mut self, principal: &Principal) -> Result<(Filter, u32), Problem> {
        if let Some(customer) = principal.customer() {
            principal.require_customer(self.customer_id.get_or_insert_with(|| customer.to_owned()))?;
        }
        if let Some(customer_id) = &self.customer_id {
            let mut problems = domain::rules::Problems::default();
            domain::rules::check_customer_id(&mut problems, "customer_id", customer_id);
            if let Some(problem) = problems.0.first() {
                return Err(Problem::bad_request(format!("customer_id {}", problem.message)));
            }
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::bad_request(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        if let Some(status) = self.status.as_deref().filter(|s| !STATUSES.contains(s)) {
            return Err(Problem::bad_request(format!("status {status:?} is not one of {}", STATUSES.join(", "))));
        }
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        Ok((Filter { customer_id: self.customer_id, status: self.status, after }, limit))
    }
}

/// Opaque to clients: hex of `<microseconds>.<order id>`.
fn encode_cursor(created_at: DateTime<Utc>, order_id: Uuid) -> String {
    let plain = format!("{}.{}", created_at.timestamp_micros(), order_id.simple());
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), Problem> {
    let bad = || Problem::bad_request("the cursor is not one this API gave out");
    if cursor.len() % 2 != 0 || cursor.len() > 200 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let plain = String::from_utf8(bytes).map_err(|_| bad())?;
    let (micros, id) = plain.split_once('.').ok_or_else(bad)?;
    let at = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let id = Uuid::from_u128(42);
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        for bad in ["", "zz", "abc", "00", &"ab".repeat(101)] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
