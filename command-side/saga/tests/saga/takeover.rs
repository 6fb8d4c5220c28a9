//! A consumer that replaces others of its subject (before one consumer fed
//! every participant that hears a subject, each had its own) starts where
//! the one furthest behind had acknowledged everything, and deletes them;
//! started again, it carries on where it was.

use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream::Stream};
use event_store::testing::eventually;
use futures_util::StreamExt;
use relay::RelayConfig;
use saga::consumer::{self, Subscription};
use service_kit::Shutdown;
use uuid::Uuid;

use super::together::{publish, stream_of_its_own, Recording, WITHIN};

const AHEAD: &str = "ahead-StockReserved";
const BEHIND: &str = "behind-StockReserved";

/// A durable consumer of the subject as a participant had it, having
/// acknowledged the first `acknowledged` messages.
async fn participants_own(stream: &Stream, events: &RelayConfig, name: &str, acknowledged: usize) {
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: format!("{}.inventory.StockReserved", events.subject_prefix),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(acknowledged).messages().await.unwrap();
    let mut acked = 0;
    while let Some(message) = messages.next().await {
        message.unwrap().double_ack().await.unwrap();
        acked += 1;
    }
    assert_eq!(acked, acknowledged);
}

async fn exists(stream: &Stream, name: &str) -> bool {
    match stream.consumer_info(name).await {
        Ok(_) => true,
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => false,
        Err(error) => panic!("{error}"),
    }
}

/// The skus the reaction was given, in order.
fn handled(reaction: &Recording) -> Vec<String> {
    let log = reaction.log.lock().unwrap();
    log.iter().map(|line| line.rsplit(' ').next().unwrap().to_owned()).collect()
}

/// Consumes `subscription` into `reaction` until `count` messages were handled.
async fn consume_until(
    js: &jetstream::Context,
    events: &RelayConfig,
    subscription: &Subscription,
    reaction: &Arc<Recording>,
    count: usize,
) {
    let (stop, shutdown) = Shutdown::new();
    let consuming = {
        let (js, reaction, subscription) = (js.clone(), reaction.clone(), subscription.clone());
        let deliveries = saga::Deliveries::new(events.clone());
        tokio::spawn(async move {
            consumer::consume(&js, &deliveries, &subscription, &*reaction, &shutdown).await.unwrap();
        })
    };
    let stream = js.get_stream(&events.stream).await.unwrap();
    eventually(WITHIN, "the messages are handled and acknowledged", || async {
        let Ok(info) = stream.clone().consumer_info(&subscription.name).await else { return None };
        (handled(reaction).len() >= count && info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
    })
    .await;
    stop.fire();
    consuming.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_replacing_others_starts_where_the_one_furthest_behind_was() {
    let (js, events) = stream_of_its_own("TAKEOVER").await;
    for n in 0..8 {
        publish(&js, &events.subject_prefix, &format!("S{n}"), Uuid::new_v4()).await;
    }
    let stream = js.get_stream(&events.stream).await.unwrap();
    participants_own(&stream, &events, AHEAD, 5).await;
    participants_own(&stream, &events, BEHIND, 3).await;

    let subscription = Subscription {
        replaces: vec![AHEAD.into(), BEHIND.into()],
        ..Subscription::new("joint", ("inventory", "StockReserved"), 1)
    };
    let reaction = Arc::new(Recording::open());
    consume_until(&js, &events, &subscription, &reaction, 5).await;
    assert_eq!(
        handled(&reaction),
        ["S3", "S4", "S5", "S6", "S7"],
        "from the first that one of them still had to handle"
    );
    assert!(!exists(&stream, AHEAD).await && !exists(&stream, BEHIND).await, "the replaced consumers are deleted");

    // A process of the earlier version makes its consumer again (from the
    // start of the stream); started again, the consumer deletes it and
    // carries on where it was.
    participants_own(&stream, &events, BEHIND, 0).await;
    publish(&js, &events.subject_prefix, "S8", Uuid::new_v4()).await;
    consume_until(&js, &events, &subscription, &reaction, 6).await;
    assert_eq!(handled(&reaction), ["S3", "S4", "S5", "S6", "S7", "S8"]);
    assert!(!exists(&stream, BEHIND).await, "the one left over is deleted");

    js.delete_stream(&events.stream).await.unwrap();
}
