//! The floor of an HTTP command on this stack: a bare axum server whose
//! `POST /v1/orders` reads the same JSON body as the command API, writes one
//! `OrderPlaced`-sized row into `es_events` with one prepared `INSERT`, and
//! answers 202. No authentication, idempotency, decision, concurrency check,
//! NOTIFY, log line or metrics. `scripts/bench-api-cpu.sh` measures its CPU
//! per request beside the command API's, as what a command API written the
//! plain way on axum, sqlx and PostgreSQL costs on the machine in that hour.
//!
//! Takes `DATABASE_URL` and `COMMAND_HTTP_ADDR`; serves `/health/ready`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[derive(Deserialize)]
struct PlaceOrder {
    customer_id: String,
    currency: String,
    #[allow(dead_code)]
    payment_token: String,
    lines: Vec<Line>,
}

#[derive(Deserialize, serde::Serialize)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

async fn place(State(pool): State<PgPool>, Json(order): Json<PlaceOrder>) -> (StatusCode, Json<serde_json::Value>) {
    let order_id = Uuid::now_v7();
    let payload = json!({
        "order_id": order_id,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "lines": order.lines,
    });
    let metadata = json!({"correlation_id": Uuid::new_v4(), "causation_id": "", "actor": order.customer_id});
    let inserted = sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
         VALUES ($1, $2, 1, 'OrderPlaced', 1, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(format!("order-{order_id}"))
    .bind(payload)
    .bind(metadata)
    .execute(&pool)
    .await;
    match inserted {
        Ok(_) => (StatusCode::ACCEPTED, Json(json!({"order_id": order_id, "version": 1}))),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"detail": error.to_string()}))),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")?;
    let addr = std::env::var("COMMAND_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&url).await?;
    event_store::postgres::PgEventStore::new(pool.clone()).migrate().await?;
    let app = Router::new()
        .route("/v1/orders", post(place))
        .route("/health/ready", get(|| async { "ready" }))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
