//! `POST /v1/inventory/{sku}/receipts`.

use application::{Application, ReceiveStock, StockAccepted};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use service_kit::http::Problem;
use utoipa::ToSchema;

use super::{Accepted, ApiError, CommandRequest, Resource};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"quantity": 50}))]
pub(crate) struct ReceiveStockRequest {
    /// 1 to 1,000,000 units.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(deserialize_with = "super::integer")]
    quantity: i64,
}

impl Resource for StockAccepted {
    fn location(&self) -> String {
        format!("/v1/inventory/{}", self.sku)
    }

    fn version(&self) -> u64 {
        self.version
    }
}

/// Receive stock of an item (created on its first receipt).
#[utoipa::path(post, path = "/v1/inventory/{sku}/receipts", tag = "inventory", operation_id = "receive_stock", request_body = ReceiveStockRequest,
    params(("sku" = String, Path, description = "1 to 64 of `A-Z a-z 0-9 - _ .`", pattern = "^[A-Za-z0-9._-]{1,64}$"), super::doc::IdempotencyKey,
           super::doc::IfMatch),
    responses(
        (status = 202, description = "Accepted", body = StockAccepted),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `inventory:write`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The item would hold more than 10^12 units", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken, or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["inventory:write"])))]
pub(crate) async fn receive(
    State(application): State<Application>,
    sku: Result<Path<String>, PathRejection>,
    CommandRequest { request, body }: CommandRequest<ReceiveStockRequest>,
) -> Result<Accepted<StockAccepted>, ApiError> {
    let Path(sku) = sku?;
    let receipt = ReceiveStock { sku, quantity: body.quantity };
    Ok(Accepted(application.receive_stock(&request, receipt).await?))
}
