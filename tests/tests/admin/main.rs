//! The operators' API across the whole shop: a dead letter replayed through
//! the query API reaches the participant again, which recognises the event
//! and changes nothing (its writes derive from the event's id).

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use serde_json::{json, Value};
use system_tests::system::{Settings, System};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_handled_again_and_changes_nothing() {
    let mut system = System::start(Settings::default()).await;
    let client = system.client.clone();
    client.confirmed_order("SKU-D", 10, 3, 100).await;

    // The order's OrderPlaced, as if its consumer had given up on it (the inventory failing).
    system
        .dead_letter_last_order_placed("inventory-deadline-OrderPlaced", "inventory: the database was away too long")
        .await;
    let js = async_nats::jetstream::new(async_nats::connect(system.nats.url()).await.unwrap());
    let events = js.get_stream(&system.stream).await.unwrap();

    let pool = system.pool().await;
    let count =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM es_events").fetch_one(&pool).await.unwrap() };
    let before = count().await;
    let listed = client.query("/v1/admin/dead-letters").await.unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    let sequence = items[0]["sequence"].as_u64().unwrap();
    let replay = format!("{}/v1/admin/dead-letters/{sequence}/replay", client.query);
    let replayed = client.call("POST", &replay, Value::Null).await;
    let stored_as = replayed["stored_as"].as_u64().unwrap();

    // The subject's consumer (the inventory's and the deadline's) takes it again.
    let mut consumer: PullConsumer = events.get_consumer("inventory-deadline-OrderPlaced").await.unwrap();
    let started = Instant::now();
    while consumer.info().await.unwrap().ack_floor.stream_sequence < stored_as {
        assert!(started.elapsed() < Duration::from_secs(30), "the replay was not handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count().await, before, "the replay appended nothing");
    let item = system.client.query("/v1/inventory/SKU-D").await.unwrap();
    assert_eq!((item["on_hand"].as_u64(), item["reserved"].as_u64()), (Some(10), Some(3)), "{item}");
    let left = client.query("/v1/admin/dead-letters").await.unwrap();
    assert_eq!(left["items"], json!([]));
    system.stop(false);
}
