//! `POST /v1/orders` and `POST /v1/orders/{order_id}/cancel`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::order::{CancelledBy, LineInput, Order, OrderCommand, OrderState, PlaceOrder};
use domain::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_kit::auth::Principal;
use service_kit::http::{Problem, RequestContext};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{run_command, Accepted, AppState, JsonBody};
use crate::commands::{execute, load};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]}))]
pub(crate) struct PlaceOrderRequest {
    customer_id: String,
    currency: String,
    payment_token: String,
    lines: Vec<LineRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelOrderRequest {
    reason: String,
}

/// A command on an order was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderAccepted {
    order_id: Uuid,
    /// The order stream's version after the command.
    version: u64,
    /// The global log position of the last event appended (read your writes with `min_position`).
    position: u64,
}

/// Place an order. A customer token places orders for its own `customer_id` only.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", operation_id = "place_order", request_body = PlaceOrderRequest,
    params(super::doc::IdempotencyKey),
    responses(
        (status = 202, description = "Accepted; the saga takes it from here", body = OrderAccepted,
         headers(("location" = String), ("etag" = String))),
        (status = 400, description = "Malformed JSON or wrong types", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `orders:write`, or another customer", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken (every broken rule in `errors`), or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]

pub(crate) async fn place(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    body: JsonBody<PlaceOrderRequest>,
) -> Response {
    let JsonBody { value: request, bytes } = body;
    if let Err(problem) = principal.require_customer(&request.customer_id) {
        return problem.into_response();
    }
    let (store, deadline) = (state.store.clone(), state.order_deadline);
    run_command(&state, &principal, &context, &headers, "/v1/orders", &bytes, move |invocation, now| async move {
        let order_id = invocation.ids.derive("order_id");
        let command = OrderCommand::Place(PlaceOrder {
            order_id,
            customer_id: request.customer_id,
            currency: request.currency,
            payment_token: request.payment_token,
            lines: request
                .lines
                .into_iter()
                .map(|l| LineInput { sku: l.sku, quantity: l.quantity, unit_price_cents: l.unit_price_cents })
                .collect(),
            placed_at: now,
            deadline: now + deadline,
        });
        let accepted = execute::<Order>(&*store, &Order::stream_id(order_id), &invocation, command).await?;
        Ok(Accepted {
            body: json!(OrderAccepted { order_id, version: accepted.stream_version, position: accepted.position }),
            location: format!("/v1/orders/{order_id}"),
        })
    })
    .await
}

/// Cancel an order; a confirmed order's payment is refunded. A customer cancels only its own orders.
#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", operation_id = "cancel_order", request_body = CancelOrderRequest,
    params(("order_id" = Uuid, Path), super::doc::IdempotencyKey, super::doc::IfMatch),
    responses(
        (status = 202, description = "Accepted", body = OrderAccepted),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `orders:write`, or another customer's order", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order's state forbids it (cancelled already, rejected)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    order_id: Result<Path<Uuid>, PathRejection>,
    body: JsonBody<CancelOrderRequest>,
) -> Response {
    let Path(order_id) = match order_id {
        Ok(path) => path,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    // A customer cancels only its own orders.
    if let Some(customer) = principal.customer() {
        match load::<Order>(&*state.store, &Order::stream_id(order_id)).await {
            Ok(OrderState::Placed(order)) if order.customer_id != customer => {
                return Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                    .with_detail("this order belongs to another customer")
                    .into_response();
            }
            // Unknown orders are the command's to report (404).
            Ok(_) => {}
            Err(error) => return Problem::from(error).into_response(),
        }
    }
    let path = format!("/v1/orders/{order_id}/cancel");
    let JsonBody { value: request, bytes } = body;
    let store = state.store.clone();
    run_command(&state, &principal, &context, &headers, &path, &bytes, move |invocation, _now| async move {
        let command = OrderCommand::Cancel { reason: request.reason, by: CancelledBy::Customer };
        let accepted = execute::<Order>(&*store, &Order::stream_id(order_id), &invocation, command).await?;
        Ok(Accepted {
            body: json!(OrderAccepted { order_id, version: accepted.stream_version, position: accepted.position }),
            location: format!("/v1/orders/{order_id}"),
        })
    })
    .await
}
