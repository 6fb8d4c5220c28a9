//! The query API's routes, and what every query shares: `min_position`, and
//! problem+json for bad parameters and unknown ids.

mod admin;
mod inventory;
mod orders;
mod payments;

use std::time::Duration;

use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use service_kit::auth::{self, Gate};
use service_kit::http::Problem;
use sqlx::PgPool;

use crate::progress::Progress;

#[derive(Clone)]
pub(crate) struct AppState {
    pub pool: PgPool,
    pub progress: Progress,
    pub min_position_wait: Duration,
}

pub(crate) fn router(state: AppState, gate: Gate) -> Router {
    let scope = |scope: &'static str| from_fn(move |request, next| auth::require_scope(scope, request, next));
    let api = Router::new()
        .route("/v1/orders", get(orders::list).route_layer(scope(auth::ORDERS_READ)))
        .route("/v1/orders/{order_id}", get(orders::get_one).route_layer(scope(auth::ORDERS_READ)))
        .route("/v1/inventory/{sku}", get(inventory::get_one).route_layer(scope(auth::INVENTORY_READ)))
        .route("/v1/payments/{order_id}", get(payments::get_one).route_layer(scope(auth::ORDERS_READ)))
        .route("/v1/admin/projections", get(admin::list).route_layer(scope(auth::ADMIN)))
        .route("/v1/admin/projections/{name}/rebuild", post(admin::request_rebuild).route_layer(scope(auth::ADMIN)))
        .layer(from_fn_with_state(gate, auth::authenticate));
    Router::new()
        .merge(api)
        .route("/metrics", get(admin::metrics))
        .merge(service_kit::ops::health_router(vec![service_kit::ops::Check::database(
            state.pool.clone(),
            projections::migrations_expected(),
        )]))
        .fallback(service_kit::http::not_found_route)
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
        })
        .with_state(state)
}

/// `?min_position=N` on a single-resource query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Freshness {
    min_position: Option<u64>,
}

impl AppState {
    /// Waits until `projection` has applied `min_position`; 503 with
    /// `Retry-After` if it has not within the configured time.
    pub async fn fresh_enough(&self, projection: &str, freshness: &Freshness) -> Result<(), Problem> {
        let Some(position) = freshness.min_position else { return Ok(()) };
        match self.progress.wait_for(projection, position, self.min_position_wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Problem::unavailable(
                format!("the {projection} read model has not reached position {position} yet"),
                1,
            )),
            Err(error) => Err(database_error(error)),
        }
    }
}

pub(crate) fn database_error(error: sqlx::Error) -> Problem {
    tracing::error!(%error, "read model query failed");
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            Problem::unavailable("the database is unavailable", 1)
        }
        _ => Problem::internal(),
    }
}
