//! The relay against a real PostgreSQL and a real NATS JetStream: every event
//! published once, in log order, with its headers; killed at any point and
//! restarted, nothing missing and nothing stored twice. Each test has its own
//! database, and its own JetStream stream and subjects, deleted at the end.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore, RecordedEvent};
use futures_util::StreamExt;
use migrations::testing::with_database;
use relay::{RelayConfig, RelayError};
use serde_json::json;
use service_kit::shutdown::Trigger;
use service_kit::Shutdown;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A JetStream context, and a stream name and subject prefix of the test's own.
async fn with_jetstream<F, Fut>(test: F)
where
    F: FnOnce(jetstream::Context, RelayConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
    let client = async_nats::connect(&url).await.expect("NATS must be running (see README)");
    let js = jetstream::new(client);
    service_kit::testing::drop_stale_streams(&js, &["RELAYTEST"]).await;
    let id = Uuid::new_v4().simple().to_string();
    let config = RelayConfig {
        stream: format!("RELAYTEST_{id}"),
        subject_prefix: format!("relaytest{id}"),
        batch_size: 20,
        standby_poll: Duration::from_millis(100),
        // Small: JetStream reserves a stream's max_bytes of the shared server's
        // storage, and streams that failed runs leave must not use it up.
        max_bytes: 64 << 20,
        ..RelayConfig::default()
    };
    let stream = config.stream.clone();
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(test(js.clone(), config))).await;
    let _ = js.delete_stream(&stream).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn new_event(n: usize, correlation: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: if n % 2 == 0 { "StockReceived".into() } else { "OrderPlaced".into() },
        schema_version: 1,
        payload: json!({"n": n}),
        metadata: Metadata {
            correlation_id: correlation.into(),
            causation_id: format!("cause-{n}"),
            ..Metadata::default()
        },
    }
}

async fn append(store: &PgEventStore, n: usize) {
    let stream = if n % 2 == 0 { format!("inventory-SKU-{}", n % 5) } else { format!("order-{}", Uuid::new_v4()) };
    store.append(&stream, ExpectedVersion::Any, vec![new_event(n, &format!("corr-{n}"))]).await.unwrap();
}

fn start(store: &PgEventStore, pool: &sqlx::PgPool, js: &jetstream::Context, config: &RelayConfig) -> Running {
    let (stop, shutdown) = Shutdown::new();
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let (pool, js, config) = (pool.clone(), js.clone(), config.clone());
    let task = tokio::spawn(async move { relay::run(store, pool, js, config, &shutdown).await });
    Running { stop, task }
}

struct Running {
    stop: Trigger,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.fire();
        self.task.await.unwrap().unwrap();
    }
}

/// The relay's checkpoint: position, and events published.
async fn relay_checkpoint(pool: &sqlx::PgPool, stream: &str) -> (i64, i64) {
    sqlx::query_as("SELECT position, events_published FROM relay_checkpoints WHERE name = $1")
        .bind(stream)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A message as a consumer sees it.
struct Published {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
}

impl Published {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|value| value.as_str().to_owned())
    }

    /// `Nats-Msg-Id` (a standard header: looked up by its constant, not by text).
    fn message_id(&self) -> Option<String> {
        self.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|value| value.as_str().to_owned())
    }
}

/// Every message of the stream, in order, once it holds `expected` messages
/// (read by a consumer of the test's own, as the saga participants read).
async fn messages(js: &jetstream::Context, name: &str, expected: u64) -> Vec<Published> {
    // The relay creates the stream when it starts.
    let mut found = None;
    for _ in 0..400 {
        match js.get_stream(name).await {
            Ok(stream) => {
                found = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut stream: stream::Stream = found.expect("the relay created its stream within 20 s");
    for _ in 0..400 {
        if stream.info().await.unwrap().state.messages >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream.info().await.unwrap().state.messages, expected, "messages in the stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
        .await
        .unwrap();
    let mut all = Vec::new();
    while (all.len() as u64) < expected {
        let mut batch = consumer.fetch().max_messages(expected as usize - all.len()).messages().await.unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            all.push(Published {
                subject: message.subject.to_string(),
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.to_vec(),
            });
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_published_in_log_order_with_its_id_and_correlation() {
    with_jetstream(|js, config| async move {
        with_database(10, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            for n in 0..30 {
                append(&store, n).await;
            }
            let relay = start(&store, &pool, &js, &config);
            for n in 30..50 {
                append(&store, n).await;
            }
            let published = messages(&js, &config.stream, 50).await;
            let log = store.read_all(None, 1000).await.unwrap();
            assert_eq!(log.len(), 50);
            for (message, event) in published.iter().zip(&log) {
                let category = if event.event_type == "StockReceived" { "inventory" } else { "order" };
                assert_eq!(message.subject, format!("{}.{category}.{}", config.subject_prefix, event.event_type));
                assert_eq!(message.message_id(), Some(event.event_id.to_string()));
                assert_eq!(message.header("Correlation-Id"), Some(event.metadata.correlation_id.clone()));
                assert_eq!(message.header("Causation-Id"), Some(event.metadata.causation_id.clone()));
                let decoded: RecordedEvent = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(&decoded, event);
            }
            relay.stop().await;
            let (position, published) = relay_checkpoint(&pool, &config.stream).await;
            assert_eq!((position as u64, published), (log[49].log_position.position, 50));
        })
        .await;
    })
    .await;
}

/// Killed again and again while events are appended, and started again (as
/// a second instance too, standing by), the relay leaves every event in the
/// stream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_at_any_point_publishes_every_event_once() {
    with_jetstream(|js, config| async move {
        with_database(12, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            let writer = {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..300 {
                        append(&store, n).await;
                        if n % 25 == 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            };
            for round in 0..8u64 {
                let first = start(&store, &pool, &js, &config);
                let standby = start(&store, &pool, &js, &config);
                tokio::time::sleep(Duration::from_millis(30 + round * 23)).await;
                first.task.abort(); // a crash: whatever was in flight is lost
                let _ = first.task.await;
                tokio::time::sleep(Duration::from_millis(150)).await; // the standby takes over
                standby.task.abort();
                let _ = standby.task.await;
            }
            writer.await.unwrap();
            let relay = start(&store, &pool, &js, &config);
            let published = messages(&js, &config.stream, 300).await;
            relay.stop().await;
            let ids: HashSet<String> = published.iter().map(|message| message.message_id().unwrap()).collect();
            let log: HashSet<String> =
                store.read_all(None, 1000).await.unwrap().iter().map(|e| e.event_id.to_string()).collect();
            assert_eq!(ids.len(), 300, "no event stored twice");
            assert_eq!(ids, log, "every event stored");
        })
        .await;
    })
    .await;
}

/// The window a kill rarely hits, forced: JetStream acknowledged a batch but
/// the checkpoint did not move. Published again, the events are dropped as
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_again_after_a_lost_checkpoint_are_stored_once() {
    with_jetstream(|js, config| async move {
        with_database(10, |pool| async move {
            let store = PgEventStore::new(pool.clone());
            for n in 0..40 {
                append(&store, n).await;
            }
            let relay = start(&store, &pool, &js, &config);
            messages(&js, &config.stream, 40).await;
            relay.stop().await;

            sqlx::query("UPDATE relay_checkpoints SET commit_id = 0, position = 0 WHERE name = $1")
                .bind(&config.stream)
                .execute(&pool)
                .await
                .unwrap();
            let relay = start(&store, &pool, &js, &config);
            let published: i64 = loop {
                let (position, published) = relay_checkpoint(&pool, &config.stream).await;
                if position > 0 {
                    break published;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            relay.stop().await;
            assert!(published > 40, "the relay published again");
            let stored = messages(&js, &config.stream, 40).await;
            let ids: HashSet<String> = stored.iter().map(|message| message.message_id().unwrap()).collect();
            assert_eq!(ids.len(), 40);
        })
        .await;
    })
    .await;
}

/// The events' stream is bounded (`RELAY_STREAM_MAX_AGE`, `RELAY_STREAM_MAX_BYTES`):
/// created so, and a stream created earlier without bounds gets them.
#[tokio::test]
async fn the_stream_is_bounded_and_an_unbounded_one_gets_its_bounds() {
    with_jetstream(|js, config| async move {
        js.create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let config = RelayConfig { max_age: Duration::from_secs(3600), max_bytes: 64 << 20, ..config };
        let mut stream = relay::ensure_stream(&js, &config).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!((info.config.max_age, info.config.max_bytes), (Duration::from_secs(3600), 64 << 20));
        let defaults = RelayConfig::default();
        assert_eq!((defaults.max_age, defaults.max_bytes), (Duration::from_secs(7 * 86400), 10 << 30));
    })
    .await;
}
