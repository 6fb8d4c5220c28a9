//! Visibility latency: from a command accepted (`POST /v1/orders` answered
//! 202) to the orders read model updated, at a steady 500 commands/s.
//!
//! Run: `cargo bench -p projections --bench visibility` (needs DATABASE_URL).
//! Creates a database of its own; runs the command API and the projections
//! service in this process, each with its own connection pool, as they run
//! in their own processes; sends commands open-loop (one every 2 ms, whatever
//! the answers' pace); drops the database and writes its section of
//! BENCHMARKS.md. `BENCH_QUICK=1` measures 5 s and leaves BENCHMARKS.md alone.
//!
//! "Updated" is when a `LISTEN`ing connection sees the orders checkpoint
//! (moved in the same transaction as the rows) reach the command's event.
//! Baseline: a bare `NOTIFY` to `LISTEN` round trip on the same server at the
//! same rate, the floor of any write-to-read notification.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

/// The services' allocator: the benchmark runs them as they run in production.
#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_store::bench::{self, quick};
use event_store::LogPosition;
use migrations::testing::with_database;
use projections::ProjectorConfig;
use serde_json::{json, Value};
use service_kit::Shutdown;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::time::MissedTickBehavior;

const RATE: u64 = 500;
const WARMUP: Duration = Duration::from_secs(2);

/// When each checkpoint of the orders projection was seen.
type Timeline = Arc<Mutex<Vec<(Instant, LogPosition)>>>;

async fn pool_like(pool: &PgPool, connections: u32) -> PgPool {
    PgPoolOptions::new().max_connections(connections).connect_with((*pool.connect_options()).clone()).await.unwrap()
}

/// Follows the orders checkpoint, which each batch's notification carries.
async fn watch_checkpoint(pool: PgPool, timeline: Timeline) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("projection_progress").await.unwrap();
    loop {
        let Ok(notification) = listener.recv().await else { return };
        let at = Instant::now();
        // `<name> <commit> <position>`: see projections/src/checkpoint.rs.
        let fields: Vec<&str> = notification.payload().split(' ').collect();
        if let ["orders", commit, position] = fields.as_slice() {
            let checkpoint = LogPosition { commit: commit.parse().unwrap(), position: position.parse().unwrap() };
            timeline.lock().unwrap().push((at, checkpoint));
        }
    }
}

struct Percentiles {
    count: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn percentiles(mut latencies: Vec<Duration>) -> Percentiles {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Percentiles { count: latencies.len(), p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0) }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// `NOTIFY` from one connection, `LISTEN` on another, `RATE` a second.
async fn notify_round_trips(pool: &PgPool, duration: Duration) -> Percentiles {
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen("bench_round_trip").await.unwrap();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (pool, sent) = (pool.clone(), sent.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let until = Instant::now() + duration;
            let mut n = 0u64;
            while Instant::now() < until {
                ticks.tick().await;
                sent.lock().unwrap().push(Instant::now());
                sqlx::query("SELECT pg_notify('bench_round_trip', $1)")
                    .bind(n.to_string())
                    .execute(&pool)
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let mut latencies = Vec::new();
    while let Ok(Ok(notification)) = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await {
        let n: usize = notification.payload().parse().unwrap();
        let sent_at = sent.lock().unwrap()[n];
        latencies.push(sent_at.elapsed());
    }
    sender.await.unwrap();
    percentiles(latencies)
}

#[tokio::main]
async fn main() {
    let measure = if quick() { Duration::from_secs(5) } else { Duration::from_secs(30) };
    with_database(4, |pool| async move {
        let facts = bench::server_facts(&pool).await;
        let baseline = notify_round_trips(&pool, measure.min(Duration::from_secs(10))).await;

        let env = [
            ("COMMAND_HTTP_ADDR", "127.0.0.1:0"),
            ("COMMAND_OPS_ADDR", "127.0.0.1:0"),
            ("AUTH_MODE", "off"),
            ("RATE_LIMIT_PER_SECOND", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
        ];
        let config = command_api::Config::from_source(&service_kit::config::Vars(&env)).unwrap();
        let app = command_api::App::build_with_pool(config, pool_like(&pool, 10).await).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let (stop, shutdown) = Shutdown::new();
        let api = tokio::spawn(app.run_until(shutdown.clone()));
        let projection_pool = pool_like(&pool, 10).await;
        // The store as the projections service opens it: gathering commits after a wake-up.
        let subscription =
            event_store::SubscriptionConfig { gather: projections::app::DEFAULT_GATHER, ..Default::default() };
        let store_config = event_store::PgStoreConfig { subscription, ..Default::default() };
        let projecting = tokio::spawn(projections::service::run_all(
            Arc::new(event_store::PgEventStore::with_config(projection_pool.clone(), store_config)),
            projection_pool,
            ProjectorConfig::default(),
            Default::default(),
            shutdown,
        ));
        let timeline: Timeline = Arc::default();
        let watcher = tokio::spawn(watch_checkpoint(pool_like(&pool, 2).await, timeline.clone()));

        // Open loop: a command every 2 ms, each in a task of its own.
        let client = reqwest::Client::new();
        let accepted: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut requests = Vec::new();
        while started.elapsed() < WARMUP + measure {
            ticks.tick().await;
            let (client, url, accepted) = (client.clone(), format!("{base}/v1/orders"), accepted.clone());
            let counted = started.elapsed() >= WARMUP;
            requests.push(tokio::spawn(async move {
                let body = json!({"customer_id": "c-1", "currency": "EUR", "payment_token": "tok_visa",
                                  "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]});
                let response = client.post(url).json(&body).send().await.expect("POST /v1/orders");
                assert_eq!(response.status(), 202);
                let at = Instant::now();
                let answer: Value = response.json().await.unwrap();
                if counted {
                    accepted.lock().unwrap().push((at, answer["position"].as_u64().unwrap()));
                }
            }));
        }
        let sent_for = started.elapsed() - WARMUP;
        for request in requests {
            request.await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;

        let accepted = std::mem::take(&mut *accepted.lock().unwrap());
        let positions: Vec<i64> = accepted.iter().map(|(_, position)| *position as i64).collect();
        let commits: std::collections::HashMap<i64, i64> =
            sqlx::query_as("SELECT position, transaction_id::text::bigint FROM es_events WHERE position = ANY($1)")
                .bind(&positions)
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let timeline = std::mem::take(&mut *timeline.lock().unwrap());
        let latencies: Vec<Duration> = accepted
            .iter()
            .map(|(at, position)| {
                let event = LogPosition { commit: commits[&(*position as i64)] as u64, position: *position };
                let seen = timeline.partition_point(|(_, checkpoint)| *checkpoint < event);
                let (visible_at, _) = timeline.get(seen).expect("every command became visible");
                visible_at.saturating_duration_since(*at)
            })
            .collect();
        let result = percentiles(latencies);
        let achieved = result.count as f64 / sent_for.as_secs_f64();

        stop.fire();
        api.await.unwrap().unwrap();
        projecting.await.unwrap();
        watcher.abort();

        let row = |what: &str, p: &Percentiles| {
            format!("| {what} | {} | {} | {} | {} | {} |", p.count, ms(p.p50), ms(p.p90), ms(p.p99), ms(p.max))
        };
        let rows =
            [row("command accepted → orders read model updated", &result), row("baseline: NOTIFY → LISTEN", &baseline)];
        for row in &rows {
            println!("{row}");
        }
        let section = format!(
            "## Visibility latency\n\n\
             `cargo bench -p projections --bench visibility` — {facts} — {}.\n\n\
             `POST /v1/orders` at a steady {RATE}/s (open loop, {:.0}/s achieved) for {} s after {} s of warm-up; \
             the command API and the projections service run in the benchmark's process, each with its own \
             pool. Latency runs from the 202 answer to the moment a listening connection sees the orders \
             checkpoint, which moves in the read model's own transaction, reach the command's event. \
             Target: p50 under 10 ms, p99 under 50 ms.\n\n\
             | path | samples | p50 ms | p90 ms | p99 ms | max ms |\n\
             |---|---:|---:|---:|---:|---:|\n{}\n",
            bench::commit_and_date(),
            achieved,
            measure.as_secs(),
            WARMUP.as_secs(),
            rows.join("\n"),
        );
        if !quick() {
            bench::write_section("visibility", &section);
        }
    })
    .await;
}
