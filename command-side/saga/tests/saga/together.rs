//! A consumer's batches, against a real JetStream: messages whose reactions
//! command one stream and that arrive together are handled in one go, the
//! others alone; where the reaction cannot take them together they are
//! handled one by one; every message is settled either way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use domain::inventory::InventoryEvent;
use domain::EventPayload;
use event_store::testing::eventually;
use event_store::{LogPosition, Metadata, RecordedEvent};
use relay::RelayConfig;
use saga::consumer::{self, Reaction, Subscription};
use saga::participants::ReactionError;
use saga::trigger::{Fact, Trigger};
use service_kit::Shutdown;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Writes down what it was asked to do. A reaction to the sku `GATE` waits
/// for a permit (so that the messages after it pile up); the order `apart`
/// cannot be handled together.
pub(super) struct Recording {
    pub(super) log: Mutex<Vec<String>>,
    gate: Semaphore,
    apart: Uuid,
}

impl Recording {
    /// Handles every message but the sku `GATE`'s at once, together where it can.
    pub(super) fn open() -> Self {
        Self { log: Mutex::new(Vec::new()), gate: Semaphore::new(0), apart: Uuid::nil() }
    }
}

fn reserved(trigger: &Trigger) -> (&str, Uuid) {
    match &trigger.event {
        Fact::Inventory { sku, event: InventoryEvent::StockReserved { order_id, .. } } => (sku, *order_id),
        other => panic!("not a reservation: {other:?}"),
    }
}

#[async_trait::async_trait]
impl Reaction for Recording {
    fn participant(&self) -> &'static str {
        "test"
    }

    async fn react(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        let (sku, order_id) = reserved(trigger);
        if sku == "GATE" {
            self.log.lock().unwrap().push("gate".into());
            self.gate.acquire().await.unwrap().forget();
        } else {
            self.log.lock().unwrap().push(format!("alone {order_id} {sku}"));
        }
        Ok(())
    }

    fn together(&self, trigger: &Trigger) -> Option<String> {
        Some(reserved(trigger).1.to_string())
    }

    async fn react_together(&self, key: &str, triggers: &[&Trigger]) -> Result<bool, ReactionError> {
        let skus: Vec<&str> = triggers.iter().map(|t| reserved(t).0).collect();
        self.log.lock().unwrap().push(format!("together {key} {}", skus.join(",")));
        Ok(key != self.apart.to_string())
    }
}

pub(super) const WITHIN: Duration = Duration::from_secs(20);

pub(super) async fn publish(js: &jetstream::Context, prefix: &str, sku: &str, order_id: Uuid) {
    let event = InventoryEvent::StockReserved { sku: sku.into(), order_id, quantity: 1 };
    let recorded = RecordedEvent {
        log_position: LogPosition { commit: 1, position: 1 },
        event_id: Uuid::new_v4(),
        stream_id: format!("inventory-{sku}"),
        stream_version: 1,
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        payload: event.to_payload(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    };
    let body = serde_json::to_vec(&recorded).unwrap();
    let subject = relay::subject(prefix, &recorded);
    js.publish_with_headers(subject, relay::headers(&recorded), body.into()).await.unwrap().await.unwrap();
}

/// Publishes a message that holds the consumer (one message at a time) on
/// the gate, then `behind`; once JetStream has sent them all, opens the gate
/// and waits until every message is acknowledged.
async fn round(
    js: &jetstream::Context,
    events: &RelayConfig,
    name: &str,
    reaction: &Recording,
    behind: &[(&str, Uuid)],
) {
    publish(js, &events.subject_prefix, "GATE", Uuid::new_v4()).await;
    eventually(WITHIN, "the gate holds the consumer", || async {
        (reaction.log.lock().unwrap().last().map(String::as_str) == Some("gate")).then_some(())
    })
    .await;
    for (sku, order_id) in behind {
        publish(js, &events.subject_prefix, sku, *order_id).await;
    }
    let stream = js.get_stream(&events.stream).await.unwrap();
    let pending = behind.len() + 1;
    eventually(WITHIN, "the messages behind the gate were sent", || async {
        (stream.clone().consumer_info(name).await.unwrap().num_ack_pending == pending).then_some(())
    })
    .await;
    // Sent is not yet read off the socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reaction.gate.add_permits(1);
    eventually(WITHIN, "every message is acknowledged", || async {
        let info = stream.clone().consumer_info(name).await.unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
}

/// A connection to NATS and an events stream of the test's own (`<NAME>_<id>`);
/// the test deletes it.
pub(super) async fn stream_of_its_own(name: &str) -> (jetstream::Context, RelayConfig) {
    service_kit::telemetry::init_for_tests();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
    let js = jetstream::new(async_nats::connect(url.as_str()).await.expect("NATS must be running (see README)"));
    service_kit::testing::drop_stale_streams(&js, &[name]).await;
    let id = Uuid::new_v4().simple().to_string();
    let events = RelayConfig {
        stream: format!("{name}_{id}"),
        subject_prefix: format!("{}{id}", name.to_lowercase()),
        // Small: JetStream reserves a stream's max_bytes of the shared server's
        // storage, and streams that failed runs leave must not use it up.
        max_bytes: 64 << 20,
        ..RelayConfig::default()
    };
    relay::ensure_stream(&js, &events).await.unwrap();
    (js, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_about_one_stream_that_arrive_together_are_handled_together() {
    let (js, events) = stream_of_its_own("TOGETHER").await;
    let deliveries = saga::Deliveries::new(events.clone());
    // One message at a time: the gate holds the consumer.
    let subscription = Subscription::new("test", ("inventory", "StockReserved"), 1);
    let (two_lines, one_line, apart) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let reaction = Arc::new(Recording { log: Mutex::new(Vec::new()), gate: Semaphore::new(0), apart });
    let (stop, shutdown) = Shutdown::new();
    let consuming = {
        let (js, reaction) = (js.clone(), reaction.clone());
        tokio::spawn(async move {
            consumer::consume(&js, &deliveries, &subscription, &*reaction, &shutdown).await.unwrap();
        })
    };

    round(&js, &events, "test-StockReserved", &reaction, &[("A", two_lines), ("B", two_lines), ("C", one_line)]).await;
    round(&js, &events, "test-StockReserved", &reaction, &[("D", apart), ("E", apart)]).await;

    let log = reaction.log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "gate".to_owned(),
            format!("together {two_lines} A,B"),
            format!("alone {one_line} C"),
            "gate".to_owned(),
            format!("together {apart} D,E"),
            format!("alone {apart} D"),
            format!("alone {apart} E"),
        ]
    );
    stop.fire();
    consuming.await.unwrap();
    js.delete_stream(&events.stream).await.unwrap();
}
