//! `POST /v1/inventory/{sku}/receipts`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use domain::inventory::{Inventory, InventoryCommand};
use domain::rules::{self, Problems};
use domain::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_kit::auth::Principal;
use service_kit::http::{FieldProblem, Problem, RequestContext};
use utoipa::ToSchema;

use super::{run_command, Accepted, AppState, JsonBody};
use crate::commands::execute;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"quantity": 50}))]
pub(crate) struct ReceiveStockRequest {
    /// 1 to 1,000,000 units.
    quantity: i64,
}

/// A stock receipt was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockAccepted {
    sku: String,
    version: u64,
    position: u64,
}

/// Receive stock of an item (created on its first receipt).
#[utoipa::path(post, path = "/v1/inventory/{sku}/receipts", tag = "inventory", operation_id = "receive_stock", request_body = ReceiveStockRequest,
    params(("sku" = String, Path, description = "1 to 64 of `A-Z a-z 0-9 - _ .`"), super::doc::IdempotencyKey,
           super::doc::IfMatch),
    responses(
        (status = 202, description = "Accepted", body = StockAccepted),
        (status = 400, description = "Malformed request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `inventory:write`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The item would hold more than 10^12 units", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A rule is broken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["inventory:write"])))]

pub(crate) async fn receive(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
    body: JsonBody<ReceiveStockRequest>,
) -> Response {
    let Path(sku) = match sku {
        Ok(path) => path,
        Err(rejection) => return Problem::from(rejection).into_response(),
    };
    // The sku names the stream: check it before it is used as one.
    let mut problems = Problems::default();
    rules::check_sku(&mut problems, "sku", &sku);
    if !problems.0.is_empty() {
        let errors = problems.0.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect();
        return Problem::validation(errors).into_response();
    }
    let path = format!("/v1/inventory/{sku}/receipts");
    let JsonBody { value: request, bytes } = body;
    let store = state.store.clone();
    run_command(&state, &principal, &context, &headers, &path, &bytes, move |invocation, _now| async move {
        let command = InventoryCommand::Receive { sku: sku.clone(), quantity: request.quantity };
        let accepted = execute::<Inventory>(&*store, &Inventory::stream_id(&sku), &invocation, command).await?;
        Ok(Accepted {
            body: json!(StockAccepted {
                sku: sku.clone(),
                version: accepted.stream_version,
                position: accepted.position
            }),
            location: format!("/v1/inventory/{sku}"),
        })
    })
    .await
}
