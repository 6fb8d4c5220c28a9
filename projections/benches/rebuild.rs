//! Rebuild rate: replaying a log of 1,000,000 events into the orders and the
//! inventory read models, beside a set-based SQL baseline on the same data.
//!
//! Run: `cargo bench -p projections --bench rebuild` (needs DATABASE_URL, see
//! .cargo/config.toml). Creates a database of its own, loads a shop history
//! (`projections::testing::shop_history`) straight into `es_events`, measures,
//! drops the database and writes its section of BENCHMARKS.md.
//! `BENCH_QUICK=1` replays 100,000 events and leaves BENCHMARKS.md alone.
//!
//! Baseline: one `INSERT ... SELECT` per read model that computes the same
//! rows from `es_events` in SQL (the last order event per order, the last
//! payment event, the stock sums per sku), into tables created `LIKE` the read
//! models. The benchmark checks that the baseline's rows equal the rebuilt
//! ones, so both do the same work. The rebuild reads the log through the
//! event store, decodes every event and folds it in Rust, as the live
//! projections do.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::bench::{self, quick};
use event_store::{EventStore, PgEventStore};
use migrations::testing::with_database;
use projections::rebuild::{rebuild, RebuildOptions};
use projections::testing::{bulk_load, event_count, shop_history, snapshot};
use sqlx::PgPool;
use tokio::sync::watch;

/// The orders read model in one statement.
const BASELINE_ORDERS: &str = "\
INSERT INTO baseline_orders (order_id, customer_id, status, payment_status, reason, currency, total_cents, lines,
                             version, payment_version, created_at, updated_at)
SELECT (p.payload->>'order_id')::uuid, p.payload->>'customer_id',
       CASE o.event_type WHEN 'OrderConfirmed' THEN 'confirmed' WHEN 'OrderRejected' THEN 'rejected'
                         WHEN 'OrderCancelled' THEN 'cancelled' ELSE 'pending' END,
       CASE pay.event_type WHEN 'PaymentRequested' THEN 'pending' WHEN 'PaymentCaptured' THEN 'captured'
                           WHEN 'PaymentDeclined' THEN 'declined' WHEN 'PaymentRefunded' THEN 'refunded'
                           ELSE 'none' END,
       reason.reason,
       p.payload->>'currency', (p.payload->>'total_cents')::bigint, p.payload->'lines',
       o.stream_version, coalesce(pay.stream_version, 0), (p.payload->>'placed_at')::timestamptz,
       greatest(o.recorded_at, pay.recorded_at)
FROM es_events p
JOIN (SELECT DISTINCT ON (stream_id) stream_id, stream_version, event_type, recorded_at
      FROM es_events WHERE stream_id LIKE 'order-%' ORDER BY stream_id, stream_version DESC) o USING (stream_id)
LEFT JOIN (SELECT DISTINCT ON (stream_id) substr(stream_id, 9) AS id, stream_version, event_type, recorded_at
           FROM es_events WHERE stream_id LIKE 'payment-%' ORDER BY stream_id, stream_version DESC) pay
       ON pay.id = substr(p.stream_id, 7)
LEFT JOIN (SELECT DISTINCT ON (stream_id) stream_id, payload->>'reason' AS reason
           FROM es_events WHERE event_type IN ('OrderRejected', 'OrderCancelled')
           ORDER BY stream_id, stream_version DESC) reason USING (stream_id)
WHERE p.event_type = 'OrderPlaced'";

/// The inventory read model in one statement.
const BASELINE_INVENTORY: &str = "\
INSERT INTO baseline_inventory (sku, on_hand, reserved, version, updated_at)
SELECT substr(stream_id, 11),
       sum(CASE event_type WHEN 'StockReceived' THEN (payload->>'quantity')::bigint ELSE 0 END),
       sum(CASE event_type WHEN 'StockReserved' THEN (payload->>'quantity')::bigint
                           WHEN 'StockReleased' THEN -(payload->>'quantity')::bigint ELSE 0 END),
       max(stream_version), max(recorded_at)
FROM es_events WHERE stream_id LIKE 'inventory-%' GROUP BY stream_id";

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn rebuild_timed(name: &str, store: &Arc<dyn EventStore>, pool: &PgPool) -> Duration {
    execute(pool, "CHECKPOINT").await;
    let projection = projections::by_name(name).expect("a projection");
    let (progress, _) = watch::channel(Default::default());
    let started = Instant::now();
    rebuild(projection, store.clone(), pool.clone(), RebuildOptions::default(), &progress).await.expect("rebuild");
    started.elapsed()
}

fn rate(events: u64, time: Duration) -> String {
    format!("{:.0}", events as f64 / time.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let target: u64 = if quick() { 100_000 } else { 1_000_000 };
    with_database(16, |pool| async move {
        // About 8 events an order: a little more history than needed, cut to size.
        let mut history = shop_history(target as usize / 7, 42);
        let mut kept = 0;
        history.retain(|append| {
            let keep = kept + append.events.len() as u64 <= target;
            kept += if keep { append.events.len() as u64 } else { 0 };
            keep
        });
        let events = event_count(&history) as u64;
        let loading = Instant::now();
        bulk_load(&pool, &history).await.expect("load the history");
        drop(history);
        execute(&pool, "VACUUM ANALYZE es_events").await;
        println!("loaded {events} events in {:.1} s", loading.elapsed().as_secs_f64());
        let facts = bench::server_facts(&pool).await;

        execute(&pool, "CREATE TABLE baseline_orders (LIKE rm_orders INCLUDING ALL)").await;
        execute(&pool, "CREATE TABLE baseline_inventory (LIKE rm_inventory INCLUDING ALL)").await;
        execute(&pool, "CHECKPOINT").await;
        let started = Instant::now();
        execute(&pool, BASELINE_ORDERS).await;
        let baseline_orders = started.elapsed();
        execute(&pool, "CHECKPOINT").await;
        let started = Instant::now();
        execute(&pool, BASELINE_INVENTORY).await;
        let baseline_inventory = started.elapsed();

        let store: Arc<dyn EventStore> = Arc::new(PgEventStore::new(pool.clone()));
        let rebuild_orders = rebuild_timed("orders", &store, &pool).await;
        let rebuild_inventory = rebuild_timed("inventory", &store, &pool).await;

        let same = snapshot(&pool, "rm_orders", "order_id").await
            == snapshot(&pool, "baseline_orders", "order_id").await
            && snapshot(&pool, "rm_inventory", "sku").await == snapshot(&pool, "baseline_inventory", "sku").await;
        assert!(same, "the baseline must build the same rows as the projections");

        let (rebuild_both, baseline_both) = (rebuild_orders + rebuild_inventory, baseline_orders + baseline_inventory);
        let ratio = baseline_both.as_secs_f64() / rebuild_both.as_secs_f64() * 100.0;
        let rows = [
            ("orders", rebuild_orders, baseline_orders),
            ("inventory", rebuild_inventory, baseline_inventory),
            ("both, one after the other", rebuild_both, baseline_both),
        ]
        .map(|(what, rebuilt, baseline)| {
            format!(
                "| {what} | {} | {:.1} | {} | {:.1} | {:.0}% |",
                rate(events, rebuilt),
                rebuilt.as_secs_f64(),
                rate(events, baseline),
                baseline.as_secs_f64(),
                baseline.as_secs_f64() / rebuilt.as_secs_f64() * 100.0
            )
        });
        for row in &rows {
            println!("{row}");
        }
        let section = format!(
            "## Rebuild rate\n\n\
             `cargo bench -p projections --bench rebuild` — {facts} — {}.\n\n\
             {events} events of a shop's history (orders confirmed, rejected, declined, cancelled and refunded, \
             pending), replayed by `projections::rebuild` into shadow tables and swapped in, one read model \
             after the other. Events/s counts the events of the log, which every rebuild reads in full. \
             Baseline: one set-based `INSERT ... SELECT` per read model computing the same rows from \
             `es_events` (checked equal, row for row). Target: at least 50,000 events/s, and at least a \
             quarter of the baseline's rate.\n\n\
             | read model | rebuild events/s | rebuild s | SQL baseline events/s | baseline s | rebuild / baseline |\n\
             |---|---:|---:|---:|---:|---:|\n{}\n\n\
             Both read models rebuilt at {} events/s, {ratio:.0}% of the baseline.\n",
            bench::commit_and_date(),
            rows.join("\n"),
            rate(events, rebuild_both),
        );
        if !quick() {
            bench::write_section("rebuild", &section);
        }
    })
    .await;
}
