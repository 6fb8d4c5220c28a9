//! Long histories: a stock receipt (`POST /v1/inventory/{sku}/receipts`) on
//! an item whose stream already holds 1k, 100k and 1M events, beside the
//! same command on a fresh item in the same run; cold (the first command
//! after the API's process starts) and warm (the commands after it).
//!
//! Run: `cargo bench -p command-api --bench history` (needs DATABASE_URL).
//! Uses a database of its own, dropped afterwards, and writes its section of
//! BENCHMARKS.md. `BENCH_QUICK=1`: 1k and 100k only, BENCHMARKS.md left alone.
//!
//! The history is written in bulk (appends of 10,000 reservations and
//! releases of distinct orders, as a best-selling item collects them), then
//! loaded once through the application, as the first command after an
//! upgrade would: that load folds it all and leaves a snapshot behind (in a
//! running system the saga leaves one every 100 events). The API runs as its
//! own process (the release binary); this process only sends requests.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

mod common;

use std::time::{Duration, Instant};

use domain::inventory::{Inventory, InventoryEvent};
use domain::{Aggregate, EventPayload};
use event_store::bench::{self, quick};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use serde_json::json;
use uuid::Uuid;

use common::{Service, SECRET};

/// Warm commands measured per item and size.
const WARM: usize = 200;
const BATCH: usize = 10_000;

fn sizes() -> Vec<u64> {
    if quick() {
        vec![1_000, 100_000]
    } else {
        vec![1_000, 100_000, 1_000_000]
    }
}

fn new_event(event: &InventoryEvent) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.to_payload(),
        metadata: Metadata::default(),
    }
}

/// Writes `size` events to the item `sku`: a receipt, then reservations and
/// releases of distinct orders; answers how long the first full load took.
async fn seed(store: &PgEventStore, sku: &str, size: u64) -> Duration {
    let stream = Inventory::stream_id(sku);
    let mut events = vec![InventoryEvent::StockReceived { sku: sku.into(), quantity: 1_000 }];
    let mut written = 0u64;
    let mut order = 0u128;
    while written < size {
        while events.len() < BATCH && written + (events.len() as u64) < size {
            // Each order reserves one unit, and its release follows.
            let n = written + events.len() as u64;
            if n % 2 == 1 {
                order += 1;
                let order_id = Uuid::from_u128(order);
                events.push(InventoryEvent::StockReserved { sku: sku.into(), order_id, quantity: 1 });
            } else {
                let order_id = Uuid::from_u128(order);
                events.push(InventoryEvent::StockReleased { sku: sku.into(), order_id, quantity: 1 });
            }
        }
        let batch: Vec<NewEvent> = events.drain(..).map(|e| new_event(&e)).collect();
        written += batch.len() as u64;
        store.append(&stream, ExpectedVersion::Any, batch).await.expect("seed the history");
    }
    let started = Instant::now();
    application::commands::load::<Inventory>(store, &stream).await.expect("the first load");
    let first_load = started.elapsed();
    // The snapshot that load offered is written in the background.
    for _ in 0..600 {
        if store.read_snapshot(&stream).await.expect("read snapshot").is_some_and(|s| s.stream_version == size) {
            return first_load;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no snapshot of {stream} was written");
}

async fn receipt(http: &reqwest::Client, base: &str, token: &str, sku: &str) -> Duration {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/v1/inventory/{sku}/receipts"))
        .bearer_auth(token)
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .expect("POST receipt");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED, "{:?}", response.text().await);
    started.elapsed()
}

struct Figures {
    cold: Duration,
    p50: Duration,
    p99: Duration,
}

/// The first command after a fresh start of the API on `sku` (cold), then
/// `WARM` more, alternating with the same on `fresh` (a new item each time).
async fn measure(url: &str, token: &str, sku: &str, fresh: &str) -> (Figures, Figures) {
    let http = reqwest::Client::new();
    let mut cold = [Duration::ZERO; 2];
    for (i, item) in [sku, fresh].into_iter().enumerate() {
        let service = Service::start(url).await;
        cold[i] = receipt(&http, &service.base, token, item).await;
        drop(service);
    }
    let service = Service::start(url).await;
    let (mut long, mut short) = (Vec::new(), Vec::new());
    for _ in 0..WARM {
        long.push(receipt(&http, &service.base, token, sku).await);
        short.push(receipt(&http, &service.base, token, fresh).await);
    }
    let figures = |cold: Duration, mut latencies: Vec<Duration>| {
        latencies.sort();
        let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        Figures { cold, p50: pick(0.5), p99: pick(0.99) }
    };
    (figures(cold[0], long), figures(cold[1], short))
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let scratch = bench::Scratch::create("historybench", 8).await;
    migrations::MIGRATOR.run(&scratch.pool).await.expect("migrate");
    let facts = bench::server_facts(&scratch.pool).await;
    let store = PgEventStore::new(scratch.pool.clone());
    let token = service_kit::testing::token(SECRET, "ops", "admin inventory:write");

    let mut rows = Vec::new();
    for size in sizes() {
        let sku = format!("LONG-{size}");
        let started = Instant::now();
        let first_load = seed(&store, &sku, size).await;
        println!("{size} events written in {:.1} s; first load {} ms", started.elapsed().as_secs_f64(), ms(first_load));
        let (long, fresh) = measure(&scratch.url, &token, &sku, &format!("FRESH-{size}")).await;
        let row = format!(
            "| {size} | {} | {} / {} | {} | {} / {} | {:.2}x | {} |",
            ms(long.cold),
            ms(long.p50),
            ms(long.p99),
            ms(fresh.cold),
            ms(fresh.p50),
            ms(fresh.p99),
            long.p99.as_secs_f64() / fresh.p99.as_secs_f64(),
            ms(first_load),
        );
        println!("{row}");
        rows.push(row);
    }

    let section = format!(
        "## Long histories\n\n\
         `cargo bench -p command-api --bench history` — {facts} — {}.\n\n\
         A stock receipt (`POST /v1/inventory/{{sku}}/receipts`) against the command API's release binary in its \
         own process, on an item whose stream holds N events (reservations and releases of distinct orders, \
         written in bulk), beside the same command on a fresh item. Cold: the first command after the API's \
         process started (a fresh start before each). Warm: {WARM} commands on each, alternating. The history's \
         first load through the application (what the first command after an upgrade pays once) folds it all and \
         leaves a snapshot; every load after starts from the latest snapshot (one every 100 events). Target: warm \
         p99 within 1.5x of the fresh item's, a cold first command under 50 ms at 1M.\n\n\
         | events in the stream | cold ms | warm p50 / p99 ms | fresh item: cold ms | fresh: warm p50 / p99 ms | p99 / fresh p99 | first load without a snapshot, ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n{}\n",
        bench::commit_and_date(),
        rows.join("\n")
    );
    if !quick() {
        bench::write_section("history", &section);
    }
    store.pool().close().await;
    scratch.drop_database().await;
}
