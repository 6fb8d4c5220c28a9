//! HTTP commands beside one INSERT each: `POST /v1/orders` against the
//! command API running as its own process (the release binary), with 1, 8
//! and 32 clients, and in the same run the same number of connections each
//! inserting one `OrderPlaced`-sized row per statement into a table `LIKE
//! es_events INCLUDING ALL` (the most a one-statement-per-command design
//! could do).
//!
//! Run: `cargo bench -p command-api --bench commands` (needs DATABASE_URL,
//! see .cargo/config.toml). Uses a database of its own, dropped afterwards,
//! and writes its section of BENCHMARKS.md. `BENCH_QUICK=1`: one short round,
//! BENCHMARKS.md left alone.
//!
//! This process is the load generator (closed loop: each client sends its
//! next request when the last one is answered, over a kept-alive
//! connection); the service has its own process and runtime. Both sides
//! alternate, each measurement after a `CHECKPOINT`, and each figure is the
//! median of the rounds.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::bench::{self, quick};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use common::{Service, SECRET};

const CLIENTS: [usize; 3] = [1, 8, 32];
const ROUNDS: usize = 3;
const WARM_UP: Duration = Duration::from_secs(1);

fn measure_for() -> Duration {
    Duration::from_secs(if quick() { 2 } else { 5 })
}

struct Measurement {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `clients` closed loops of `work` for the warm-up and the measured
/// time; counts the calls begun after the warm-up.
async fn closed_loop<F, Fut>(clients: usize, work: F) -> Measurement
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let from = Instant::now() + WARM_UP;
    let until = from + measure_for();
    let loops = (0..clients).map(|client| {
        let work = work.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let began = Instant::now();
                if began >= until {
                    return latencies;
                }
                work(client).await;
                if began >= from {
                    latencies.push(began.elapsed());
                }
            }
        })
    });
    let mut latencies: Vec<Duration> =
        futures_util::future::join_all(loops).await.into_iter().flat_map(|l| l.expect("a client")).collect();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measurement { per_second: latencies.len() as f64 / measure_for().as_secs_f64(), p50: pick(0.5), p99: pick(0.99) }
}

/// One `INSERT` of a row the size of an `OrderPlaced` with its metadata, on
/// the client's own connection (as pgbench: no pool, so none of sqlx's checks
/// of a connection taken from or given back to its pool).
async fn insert_one(connection: &mut PgConnection) {
    let order_id = Uuid::new_v4();
    let payload = json!({
        "order_id": order_id, "customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa",
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1999}], "total_cents": 1999,
        "placed_at": chrono::Utc::now(), "deadline": chrono::Utc::now(),
    });
    let metadata = json!({"correlation_id": Uuid::new_v4().to_string(), "causation_id": Uuid::new_v4().to_string(),
        "actor": "customer:c-42", "trace_context": {}});
    sqlx::query(
        "INSERT INTO bench_raw (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
         VALUES ($1, $2, 1, 'OrderPlaced', 1, $3, $4)",
    )
    .bind(Uuid::new_v4())
    .bind(format!("order-{order_id}"))
    .bind(Json(&payload))
    .bind(Json(&metadata))
    .execute(connection)
    .await
    .expect("raw insert");
}

async fn place_order(client: &reqwest::Client, url: &str, token: &str) {
    let body = json!({"customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa",
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1999}]});
    let response = client.post(url).bearer_auth(token).json(&body).send().await.expect("POST /v1/orders");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED, "{:?}", response.text().await);
}

async fn checkpoint(pool: &PgPool) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(pool).await {
        tracing::debug!(%error, "CHECKPOINT needs a superuser; measuring without it");
    }
}

fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    runs.swap_remove(runs.len() / 2)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let scratch = bench::Scratch::create("cmdbench", 40).await;
    let pool = scratch.pool.clone();
    migrations::MIGRATOR.run(&pool).await.expect("migrate");
    sqlx::query("CREATE TABLE bench_raw (LIKE es_events INCLUDING ALL)").execute(&pool).await.expect("baseline table");
    let facts = bench::server_facts(&pool).await;

    let service = Service::start(&scratch.url).await;
    let orders = Arc::new(format!("{}/v1/orders", service.base));
    let token = Arc::new(service_kit::testing::token(SECRET, "c-42", "orders:write"));
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");

    let rounds = if quick() { 1 } else { ROUNDS };
    let mut rows = Vec::new();
    for clients in CLIENTS {
        let (mut raw_runs, mut http_runs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            checkpoint(&pool).await;
            let mut connections = Vec::new();
            for _ in 0..clients {
                connections.push(tokio::sync::Mutex::new(pool.acquire().await.expect("a connection").detach()));
            }
            let connections = Arc::new(connections);
            raw_runs.push(
                closed_loop(clients, move |client| {
                    let connections = connections.clone();
                    async move { insert_one(&mut *connections[client].lock().await).await }
                })
                .await,
            );
            checkpoint(&pool).await;
            let (http, orders, token) = (http.clone(), orders.clone(), token.clone());
            http_runs.push(
                closed_loop(clients, move |_| {
                    let (http, orders, token) = (http.clone(), orders.clone(), token.clone());
                    async move { place_order(&http, &orders, &token).await }
                })
                .await,
            );
        }
        let (raw, http) = (median(raw_runs), median(http_runs));
        let row = format!(
            "| {clients} | {:.0} | {:.0} | {:.0}% | {} / {} | {} / {} |",
            http.per_second,
            raw.per_second,
            http.per_second / raw.per_second * 100.0,
            ms(http.p50),
            ms(http.p99),
            ms(raw.p50),
            ms(raw.p99),
        );
        println!("{row}");
        rows.push(row);
    }
    drop(service);

    let section = format!(
        "## HTTP commands\n\n\
         `cargo bench -p command-api --bench commands` — {facts} — {}.\n\n\
         `POST /v1/orders` (one line, a bearer token, no Idempotency-Key) against the command API's release \
         binary in its own process, from closed-loop clients in the benchmark's process over kept-alive \
         connections; beside it, in the same run, as many connections each inserting one `OrderPlaced`-sized row \
         per statement (autocommit, each client on a connection of its own, as pgbench) into a table `LIKE \
         es_events INCLUDING ALL`. The two alternate, each after a \
         `CHECKPOINT`; each figure is the median of {ROUNDS} rounds of {} s after {} s of warm-up. Target: at 32 \
         clients at least 1.5x the raw rate, at 1 and 8 clients at least 70% of it.\n\n\
         | clients | POST /v1/orders per s | raw INSERTs per s | orders / raw | orders p50 / p99 ms | raw p50 / p99 ms |\n\
         |---:|---:|---:|---:|---:|---:|\n{}\n",
        bench::commit_and_date(),
        measure_for().as_secs(),
        WARM_UP.as_secs(),
        rows.join("\n")
    );
    if !quick() {
        bench::write_section("commands", &section);
    }
    scratch.drop_database().await;
}
