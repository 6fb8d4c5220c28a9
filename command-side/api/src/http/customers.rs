//! `DELETE /v1/customers/{customer_id}/personal-data`: the customer's right
//! to be forgotten (crypto-shredding, ADR 0014).

use application::Application;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use domain::rules::{self, Problems};
use serde::Serialize;
use service_kit::http::{FieldProblem, Problem};
use service_kit::personal_data::VaultError;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Erased {
    customer_id: String,
    /// Keys destroyed now (0: none was left, erased before or never given any data).
    keys_destroyed: u64,
}

/// Erase a customer's personal data: their keys are destroyed, so every
/// value sealed under them (in events, read models, messages, backups) reads
/// as erased from now on. The log still replays; nothing else changes.
/// Asking again is harmless.
#[utoipa::path(delete, path = "/v1/customers/{customer_id}/personal-data", tag = "customers",
    operation_id = "erase_personal_data",
    params(("customer_id" = String, Path, description = "1 to 64 characters without control characters", pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,64}$")),
    responses(
        (status = 202, description = "Erased", body = Erased),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing scope `admin`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a customer id", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["admin"])))]
pub(crate) async fn erase(
    State(application): State<Application>,
    customer_id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Erased>), Problem> {
    let Path(customer_id) = customer_id?;
    let mut problems = Problems::default();
    rules::check_customer_id(&mut problems, "customer_id", &customer_id);
    if !problems.0.is_empty() {
        return Err(Problem::validation(
            problems.0.into_iter().map(|e| FieldProblem { field: e.field, message: e.message }).collect(),
        ));
    }
    let keys_destroyed = application.vault().erase(&customer_id).await.map_err(|error| {
        tracing::error!(%error, "cannot erase personal data");
        match error {
            VaultError::Database(db) if event_store::is_transient(&db) => {
                Problem::unavailable("the database is unavailable", 1)
            }
            _ => Problem::internal(),
        }
    })?;
    tracing::info!(%customer_id, keys_destroyed, "personal data erased");
    Ok((StatusCode::ACCEPTED, Json(Erased { customer_id, keys_destroyed })))
}
