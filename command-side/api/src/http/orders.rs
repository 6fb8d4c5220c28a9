//! `POST /v1/orders`, `POST /v1/orders/{order_id}/cancel` and `POST /v1/orders/{order_id}/ship`.

use application::{Application, CancelOrder, OrderAccepted, PlaceOrder, ShipOrder};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use domain::order::LineInput;
use serde::Deserialize;
use service_kit::http::Problem;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Accepted, ApiError, BodilessCommand, CommandRequest, Resource};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa",
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}], "contact_email": "ada@example.com"}))]
pub(crate) struct PlaceOrderRequest {
    /// 1 to 64 characters without control characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")]
    customer_id: String,
    /// ISO 4217: three upper-case letters.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    /// 1 to 256 characters without control characters.
    #[schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,256}$")]
    payment_token: String,
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    lines: Vec<LineRequest>,
    /// Optional: where the customer hears about the order. Personal data:
    /// stored only sealed under the customer's key, which
    /// `DELETE /v1/customers/{customer_id}/personal-data` destroys.
    #[serde(default)]
    #[schema(
        max_length = 254,
        pattern = "^[^@\\s\\u0000-\\u001f\\u007f-\\u009f]{1,64}@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
    )]
    contact_email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    /// 1 to 64 of `A-Z a-z 0-9 - _ .`
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    sku: String,
    #[schema(minimum = 1, maximum = 10000)]
    #[serde(deserialize_with = "super::integer")]
    quantity: i64,
    #[schema(minimum = 0, maximum = 1000000000)]
    #[serde(deserialize_with = "super::integer")]
    unit_price_cents: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelOrderRequest {
    /// 1 to 500 characters without control characters.
    #[schema(min_length = 1, max_length = 500, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,500}$")]
    reason: String,
}

impl Resource for OrderAccepted {
    fn location(&self) -> String {
        format!("/v1/orders/{}", self.order_id)
    }

    fn version(&self) -> u64 {
        self.version
    }
}

impl From<PlaceOrderRequest> for PlaceOrder {
    fn from(request: PlaceOrderRequest) -> Self {
        let lines = request.lines.into_iter();
        Self {
            customer_id: request.customer_id,
            currency: request.currency,
            payment_token: request.payment_token,
            lines: lines
                .map(|l| LineInput { sku: l.sku, quantity: l.quantity, unit_price_cents: l.unit_price_cents })
                .collect(),
            contact_email: request.contact_email,
        }
    }
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
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken (every broken rule in `errors`), or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]

pub(crate) async fn place(
    State(application): State<Application>,
    CommandRequest { request, body }: CommandRequest<PlaceOrderRequest>,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    Ok(Accepted(application.place_order(&request, body.into()).await?))
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
        (status = 409, description = "The order's state forbids it (cancelled already, rejected, shipped)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken, or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:write"])))]
pub(crate) async fn cancel(
    State(application): State<Application>,
    order_id: Result<Path<Uuid>, PathRejection>,
    CommandRequest { request, body }: CommandRequest<CancelOrderRequest>,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    let Path(order_id) = order_id?;
    let cancel = CancelOrder { order_id, reason: body.reason };
    Ok(Accepted(application.cancel_order(&request, cancel).await?))
}

/// Ship a confirmed order: its stock leaves the inventory (on hand and
/// reserved both drop by its quantities), and it can no longer be cancelled.
/// No body.
#[utoipa::path(post, path = "/v1/orders/{order_id}/ship", tag = "orders", operation_id = "ship_order",
    params(("order_id" = Uuid, Path), super::doc::IdempotencyKey, super::doc::IfMatch),
    responses(
        (status = 202, description = "Accepted; the saga ships each line's stock", body = OrderAccepted),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither scope `orders:fulfil` nor `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not confirmed (pending, shipped already, cancelled, rejected)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An Idempotency-Key reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["orders:fulfil"]), ("bearer" = ["admin"])))]
pub(crate) async fn ship(
    State(application): State<Application>,
    order_id: Result<Path<Uuid>, PathRejection>,
    BodilessCommand(request): BodilessCommand,
) -> Result<Accepted<OrderAccepted>, ApiError> {
    let Path(order_id) = order_id?;
    Ok(Accepted(application.ship_order(&request, ShipOrder { order_id }).await?))
}
