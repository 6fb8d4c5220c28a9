//! `POST /v1/inventory/{sku}/receipts`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use domain::inventory::{Inventory, InventoryCommand};
use domain::rules::{self, Problems};
use domain::Aggregate;
use serde::Deserialize;
use serde_json::json;
use service_kit::auth::Principal;
use service_kit::http::{FieldProblem, Problem, RequestContext};

use super::{run_command, Accepted, AppState, JsonBody};
use crate::commands::execute;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiveStockRequest {
    quantity: i64,
}

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
            body: json!({ "sku": sku, "version": accepted.stream_version, "position": accepted.position }),
            location: format!("/v1/inventory/{sku}"),
        })
    })
    .await
}
