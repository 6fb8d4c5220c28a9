//! Append throughput of the PostgreSQL event store beside a raw INSERT baseline.
//!
//! Run: `cargo bench -p event-store --bench append` (needs DATABASE_URL, see
//! .cargo/config.toml). Creates a database of its own, measures, drops it, and
//! writes its section of BENCHMARKS.md.
//!
//! Baseline: the same rows inserted with one plain INSERT statement per append
//! (autocommit, each writer on a connection of its own, as pgbench) into
//! `bench_raw`, a table created `LIKE es_events INCLUDING
//! ALL` (same columns, defaults, constraints and indexes). The store adds what
//! the raw INSERT does not do: the expected-version check, the idempotency
//! check and the stream version bookkeeping. Store and baseline alternate over
//! several rounds; the median round is reported.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::bench::{self, quick};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use serde_json::json;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

const ROUNDS: usize = 7;
const MEASURE: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_millis(500);

struct Config {
    name: &'static str,
    writers: usize,
    events_per_append: usize,
}

const CONFIGS: [Config; 5] = [
    Config { name: "1-event appends, 1 writer", writers: 1, events_per_append: 1 },
    Config { name: "1-event appends, 8 writers", writers: 8, events_per_append: 1 },
    Config { name: "1-event appends, 32 writers", writers: 32, events_per_append: 1 },
    Config { name: "100-event appends, 1 writer", writers: 1, events_per_append: 100 },
    Config { name: "100-event appends, 8 writers", writers: 8, events_per_append: 100 },
];

#[derive(Clone, Copy)]
enum Side {
    Store,
    RawInsert,
}

struct Measurement {
    events_per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn new_events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "StockReserved".into(),
            schema_version: 1,
            payload: json!({"sku": "SKU-1", "order_id": Uuid::new_v4(), "quantity": i + 1}),
            metadata: Metadata {
                correlation_id: Uuid::new_v4().to_string(),
                causation_id: Uuid::new_v4().to_string(),
                actor: "bench".into(),
                ..Metadata::default()
            },
        })
        .collect()
}

async fn raw_insert(connection: &mut PgConnection, stream: &str, first_version: i64, events: &[NewEvent]) {
    if let [event] = events {
        sqlx::query(
            "INSERT INTO bench_raw (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.event_id)
        .bind(stream)
        .bind(first_version)
        .bind(&event.event_type)
        .bind(i32::from(event.schema_version))
        .bind(Json(&event.payload))
        .bind(Json(&event.metadata))
        .execute(&mut *connection)
        .await
        .expect("raw insert");
        return;
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let versions: Vec<i64> = (0..events.len() as i64).map(|i| first_version + i).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let schema: Vec<i32> = events.iter().map(|e| i32::from(e.schema_version)).collect();
    let payloads: Vec<Json<&serde_json::Value>> = events.iter().map(|e| Json(&e.payload)).collect();
    let metadata: Vec<Json<&Metadata>> = events.iter().map(|e| Json(&e.metadata)).collect();
    sqlx::query(
        "INSERT INTO bench_raw (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
         SELECT id, $2, v, t, s, p, m FROM unnest($1::uuid[], $3::bigint[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[]) \
         AS e(id, v, t, s, p, m)",
    )
    .bind(&ids)
    .bind(stream)
    .bind(&versions)
    .bind(&types)
    .bind(&schema)
    .bind(&payloads)
    .bind(&metadata)
    .execute(connection)
    .await
    .expect("raw insert");
}

async fn measure(store: &PgEventStore, config: &Config, side: Side) -> Measurement {
    // Start each measurement from a clean slate: neither side should pay for
    // flushing the pages the other one dirtied.
    if let Err(error) = sqlx::query("CHECKPOINT").execute(store.pool()).await {
        tracing::debug!(%error, "CHECKPOINT needs a superuser; measuring without it");
    }
    let store = Arc::new(store.clone());
    let started = Instant::now();
    let measure_from = started + WARMUP;
    let until = measure_from + if quick() { MEASURE / 2 } else { MEASURE };
    let writers = (0..config.writers).map(|_| {
        let store = store.clone();
        let n = config.events_per_append;
        tokio::spawn(async move {
            // The baseline's writer has a connection of its own, as pgbench: no
            // pool, so none of sqlx's checks of connections taken and given back.
            let mut own = match side {
                Side::RawInsert => Some(store.pool().acquire().await.expect("a connection").detach()),
                Side::Store => None,
            };
            let stream = format!("bench-{}", Uuid::new_v4());
            let mut version = 0u64;
            let mut counted = 0usize;
            let mut latencies = Vec::new();
            loop {
                let events = new_events(n);
                let began = Instant::now();
                if began >= until {
                    break;
                }
                match side {
                    Side::Store => {
                        let result =
                            store.append(&stream, ExpectedVersion::Exact(version), events).await.expect("append");
                        version = result.stream_version;
                    }
                    Side::RawInsert => {
                        let connection = own.as_mut().expect("the baseline's connection");
                        raw_insert(connection, &stream, version as i64 + 1, &events).await;
                        version += n as u64;
                    }
                }
                if began >= measure_from {
                    counted += n;
                    latencies.push(began.elapsed());
                }
            }
            (counted, latencies)
        })
    });
    let mut events = 0;
    let mut latencies = Vec::new();
    for writer in futures_util::future::join_all(writers).await {
        let (counted, mut lat) = writer.expect("writer");
        events += counted;
        latencies.append(&mut lat);
    }
    latencies.sort();
    let pick = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    Measurement {
        events_per_second: events as f64 / (until - measure_from).as_secs_f64(),
        p50: pick(0.50).copied().unwrap_or_default(),
        p99: pick(0.99).copied().unwrap_or_default(),
    }
}

fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.events_per_second.total_cmp(&b.events_per_second));
    runs.swap_remove(runs.len() / 2)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let scratch = bench::Scratch::create("esbench", 40).await;
    let pool = scratch.pool.clone();
    let store = PgEventStore::new(pool.clone());
    store.migrate().await.expect("migrate");
    sqlx::query("CREATE TABLE bench_raw (LIKE es_events INCLUDING ALL)").execute(&pool).await.expect("baseline table");
    let facts = bench::server_facts(&pool).await;

    // `BENCH_CONFIG=<part of a name>` measures only the matching configurations
    // (and, like BENCH_QUICK, leaves BENCHMARKS.md alone).
    let only = std::env::var("BENCH_CONFIG").ok();
    let mut rows = Vec::new();
    for config in CONFIGS.iter().filter(|c| only.as_deref().is_none_or(|part| c.name.contains(part))) {
        let (mut store_runs, mut raw_runs) = (Vec::new(), Vec::new());
        for _ in 0..if quick() { 1 } else { ROUNDS } {
            raw_runs.push(measure(&store, config, Side::RawInsert).await);
            store_runs.push(measure(&store, config, Side::Store).await);
        }
        let (s, r) = (median(store_runs), median(raw_runs));
        let ratio = s.events_per_second / r.events_per_second * 100.0;
        let row = format!(
            "| {} | {:.0} | {:.0} | {ratio:.0}% | {} / {} | {} / {} |",
            config.name,
            s.events_per_second,
            r.events_per_second,
            ms(s.p50),
            ms(s.p99),
            ms(r.p50),
            ms(r.p99)
        );
        println!("{row}");
        rows.push(row);
    }

    let section = format!(
        "## Event store appends\n\n\
         `cargo bench -p event-store --bench append` — {} — {}.\n\n\
         Each figure is the median of {ROUNDS} rounds of {}s; store and baseline alternate, each after a \
         `CHECKPOINT`. The baseline inserts the same rows with one plain `INSERT` per append into a table \
         `LIKE es_events INCLUDING ALL`, each writer on a connection of its own (as pgbench). Latency is per append. On 2 cores shared by the benchmark and the server, \
         single rounds vary by about ten points.\n\n\
         | configuration | store events/s | raw INSERT events/s | store / raw | store p50 / p99 ms | raw p50 / p99 ms |\n\
         |---|---:|---:|---:|---:|---:|\n{}\n\n",
        facts,
        bench::commit_and_date(),
        MEASURE.as_secs(),
        rows.join("\n")
    );
    if !quick() && only.is_none() {
        bench::write_section("append", &section);
    }

    scratch.drop_database().await;
}
