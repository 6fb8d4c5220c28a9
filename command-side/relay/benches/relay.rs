//! Relay publish rate: events/s from the log into JetStream, acknowledged and
//! checkpointed, beside a bare JetStream publish of the same messages.
//!
//! Run: `cargo bench -p relay --bench relay` (needs DATABASE_URL and
//! NATS_URL, see .cargo/config.toml). Creates a database and two JetStream
//! streams of its own, measures, deletes them and writes its section of
//! BENCHMARKS.md. `BENCH_QUICK=1` relays 20,000 events and leaves
//! BENCHMARKS.md alone.
//!
//! Baseline: the same messages (subject, headers, JSON body) published
//! straight to JetStream by one publisher, in batches of the relay's size,
//! each batch's acknowledgements awaited: what the relay does minus reading
//! the log and moving its checkpoint.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use event_store::bench::{self, quick};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore, RecordedEvent};
use migrations::testing::with_database;
use relay::RelayConfig;
use serde_json::json;
use service_kit::Shutdown;
use uuid::Uuid;

fn config(name: &str) -> RelayConfig {
    let id = Uuid::new_v4().simple().to_string();
    RelayConfig {
        stream: format!("BENCH_{name}_{id}"),
        subject_prefix: format!("bench{name}{id}"),
        // JetStream sets a stream's max_bytes aside from the server's storage
        // until the stream is deleted (a killed run leaves it): 1 GiB holds a
        // full run's 200,000 events, where the production default is 10 GiB.
        max_bytes: 1 << 30,
        ..Default::default()
    }
}

async fn stored(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

/// The bare publisher: the relay's messages, batch by batch, acks awaited.
async fn publish_directly(js: &jetstream::Context, config: &RelayConfig, events: &[RecordedEvent]) -> Duration {
    relay::ensure_stream(js, config).await.unwrap();
    let started = Instant::now();
    for batch in events.chunks(config.batch_size) {
        let mut acks = Vec::with_capacity(batch.len());
        for event in batch {
            let payload = serde_json::to_vec(event).unwrap();
            let subject = relay::subject(&config.subject_prefix, event);
            acks.push(js.publish_with_headers(subject, relay::headers(event), payload.into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let events: usize = if quick() { 20_000 } else { 200_000 };
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
    let js = jetstream::new(async_nats::connect(&url).await.expect("NATS must be running"));
    service_kit::testing::drop_stale_streams(&js, &["BENCH"]).await;
    with_database(8, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        for chunk in 0..events / 100 {
            let batch = (0..100)
                .map(|n| NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: "StockReceived".into(),
                    schema_version: 1,
                    payload: json!({"sku": format!("SKU-{chunk}"), "quantity": n + 1}),
                    metadata: Metadata { correlation_id: format!("bench-{chunk}"), ..Metadata::default() },
                })
                .collect();
            store.append(&format!("inventory-SKU-{chunk}"), ExpectedVersion::Any, batch).await.unwrap();
        }
        let log = store.read_all(None, events).await.unwrap();
        let facts = bench::server_facts(&pool).await;

        let direct = config("direct");
        let baseline = publish_directly(&js, &direct, &log).await;
        assert_eq!(stored(&js, &direct.stream).await, events as u64);

        let relayed = config("relay");
        relay::ensure_stream(&js, &relayed).await.unwrap();
        let (stop, shutdown) = Shutdown::new();
        let started = Instant::now();
        let running = tokio::spawn({
            let (store, pool, js, relayed) = (Arc::new(store.clone()) as Arc<dyn EventStore>, pool.clone(), js.clone(), relayed.clone());
            async move { relay::run(store, pool, js, relayed, &shutdown).await }
        });
        loop {
            let published: Option<i64> =
                sqlx::query_scalar("SELECT events_published FROM relay_checkpoints WHERE name = $1")
                    .bind(&relayed.stream)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            if published.unwrap_or(0) as usize >= events {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let relay_time = started.elapsed();
        stop.fire();
        running.await.unwrap().unwrap();
        assert_eq!(stored(&js, &relayed.stream).await, events as u64);
        for stream in [&direct.stream, &relayed.stream] {
            let _ = js.delete_stream(stream).await;
        }

        let rate = |time: Duration| events as f64 / time.as_secs_f64();
        let row = format!(
            "| {events} | {:.0} | {:.0} | {:.0}% |",
            rate(relay_time),
            rate(baseline),
            rate(relay_time) / rate(baseline) * 100.0
        );
        println!("{row}");
        let section = format!(
            "## Relay publish rate\n\n\
             `cargo bench -p relay --bench relay` — {facts}, NATS {} with JetStream (file storage) — {}.\n\n\
             The relay reads a log of {events} events and publishes each to JetStream (batches of {}, \
             acknowledgements awaited, the checkpoint written beside the publishing), timed until its checkpoint has passed them \
             all. Baseline: the same messages published straight to JetStream, batch by batch, acks awaited.\n\n\
             | events | relay events/s | bare JetStream publish events/s | relay / bare |\n\
             |---:|---:|---:|---:|\n{row}\n",
            js.client().server_info().version,
            bench::commit_and_date(),
            relayed.batch_size,
        );
        if !quick() {
            bench::write_section("relay", &section);
        }
    })
    .await;
}
