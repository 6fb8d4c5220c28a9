//! `GET /v1/inventory/{sku}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use service_kit::http::Problem;

use super::{database_error, AppState, Freshness};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct InventoryView {
    sku: String,
    on_hand: i64,
    reserved: i64,
    available: i64,
    version: i64,
}

pub(crate) async fn get_one(
    State(state): State<AppState>,
    sku: Result<Path<String>, PathRejection>,
    freshness: Result<Query<Freshness>, QueryRejection>,
) -> Result<Json<InventoryView>, Problem> {
    let Path(sku) = sku?;
    let Query(freshness) = freshness?;
    state.fresh_enough("inventory", &freshness).await?;
    let item: Option<InventoryView> = sqlx::query_as(
        "SELECT sku, on_hand, reserved, on_hand - reserved AS available, version FROM rm_inventory WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_optional(&state.pool)
    .await
    .map_err(database_error)?;
    item.map(Json).ok_or_else(|| Problem::not_found(format!("no inventory item {sku:?}")))
}
