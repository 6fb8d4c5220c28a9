//! `POST /v1/orders` and `POST /v1/orders/{order_id}/cancel`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::order::{CancelledBy, LineInput, Order, OrderCommand, OrderState, PlaceOrder};
use domain::Aggregate;
use serde::Deserialize;
use serde_json::json;
use service_kit::auth::Principal;
use service_kit::http::{Problem, RequestContext};
use uuid::Uuid;

use super::{run_command, Accepted, AppState, JsonBody};
use crate::commands::{execute, load};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrderRequest {
    customer_id: String,
    currency: String,
    payment_token: String,
    lines: Vec<LineRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelOrderRequest {
    reason: String,
}

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
            body: json!({ "order_id": order_id, "version": accepted.stream_version, "position": accepted.position }),
            location: format!("/v1/orders/{order_id}"),
        })
    })
    .await
}

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
            body: json!({ "order_id": order_id, "version": accepted.stream_version, "position": accepted.position }),
            location: format!("/v1/orders/{order_id}"),
        })
    })
    .await
}
