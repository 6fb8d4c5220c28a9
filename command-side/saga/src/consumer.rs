//! One durable JetStream pull consumer feeding one reaction (the saga
//! participants that hear its subject, or the notifier).
//!
//! A message is acknowledged only after the reaction is done (for a
//! participant: its append committed). Otherwise it is delivered again after
//! a pause: a reaction waiting for the gateway or the store is retried however
//! long that takes; one that failed is retried up to `max_deliveries` times
//! and then moved to the dead-letter stream with its error, like a message
//! that cannot be read at all. Messages are handled concurrently, so one slow
//! or failing message holds up nothing behind it.
//!
//! Messages are taken in batches of what has arrived. Where a reaction says
//! that several messages of a batch command one stream ([`Reaction::together`]:
//! an order's lines reported reserved), they are handled in one go, and each
//! is then settled as if handled alone; if that cannot be done, they are
//! handled one by one, as if they had come apart.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesError;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use metrics::SharedString;
use service_kit::nats::dead_letters;
use service_kit::Shutdown;
use tracing::Instrument;

use super::config::Deliveries;
use super::participants::ReactionError;
use super::trigger::{Malformed, Trigger};
use super::SagaError;

/// Headers of a dead-lettered message, beside the original ones (read back
/// by the admin API through `service_kit::nats::dead_letters`).
pub const DEAD_LETTER_ERROR: &str = dead_letters::ERROR;
pub const DEAD_LETTER_CONSUMER: &str = dead_letters::CONSUMER;
pub const DEAD_LETTER_SUBJECT: &str = dead_letters::SUBJECT;
pub const DEAD_LETTER_DELIVERIES: &str = dead_letters::DELIVERIES;

/// What a consumer feeds its messages to.
#[async_trait::async_trait]
pub trait Reaction: Send + Sync {
    /// Who reacts, in logs and metrics (`inventory`, `inventory+deadline`, `notifications`).
    fn participant(&self) -> &str;

    async fn react(&self, trigger: &Trigger) -> Result<(), ReactionError>;

    /// The stream this message's reaction commands, where reactions to
    /// messages of one batch that command the same stream may run together
    /// ([`Self::react_together`]); `None`, the default: each alone.
    fn together(&self, _trigger: &Trigger) -> Option<String> {
        None
    }

    /// Reacts at once to several messages whose reactions command the stream
    /// `key`; `false` (having done nothing) when they are to be handled one
    /// by one instead.
    async fn react_together(&self, _key: &str, _triggers: &[&Trigger]) -> Result<bool, ReactionError> {
        Ok(false)
    }
}

/// One durable consumer: its name, the one subject it hears, how many
/// messages it handles at once, where a new one starts, and the consumers
/// of the same subject it takes over.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    /// `(category, event type)`: the subject `<prefix>.<category>.<type>`.
    pub event: (&'static str, &'static str),
    pub concurrency: usize,
    pub start: DeliverPolicy,
    /// Consumers this one replaces (see [`open`]): when it is created, it
    /// starts where the one furthest behind had acknowledged everything,
    /// and they are deleted.
    pub replaces: Vec<String>,
}

impl Subscription {
    /// `<participant>-<EventType>`, e.g. `order-StockReserved`, from the start of the stream.
    pub fn new(participant: &str, event: (&'static str, &'static str), concurrency: usize) -> Self {
        let name = format!("{participant}-{}", event.1);
        Self { name, event, concurrency, start: DeliverPolicy::All, replaces: Vec::new() }
    }
}

/// Consumes until `shutdown`, or until the subscription fails.
pub async fn consume(
    js: &jetstream::Context,
    deliveries: &Deliveries,
    subscription: &Subscription,
    reaction: &dyn Reaction,
    shutdown: &Shutdown,
) -> Result<(), SagaError> {
    let (name, concurrency) = (&subscription.name, subscription.concurrency);
    let stream = js.get_stream(&deliveries.events.stream).await.map_err(|e| SagaError::Nats(e.to_string()))?;
    let consumer = open(&stream, deliveries, subscription).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(concurrency * 4)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| SagaError::Nats(e.to_string()))?;
    tracing::info!(consumer = %name, "consuming");
    // What has arrived, up to what may be pending: no wait for more.
    let batches = messages.take_until(shutdown.requested()).ready_chunks(concurrency * 4);
    let groups = batches.flat_map(|batch| futures_util::stream::iter(gather(reaction, name, batch)));
    let context = Context { js, reaction, config: deliveries, consumer: name, who: shared(reaction.participant()) };
    groups.for_each_concurrent(concurrency, |group| handle_group(&context, group)).await;
    Ok(())
}

/// The subscription's consumer, created if missing. A consumer created to
/// replace others ([`Subscription::replaces`]) starts after the last
/// message that the one furthest behind had acknowledged with all before
/// it, so nothing any of them still had to handle is skipped (what some had
/// handled comes again: reactions are idempotent); the replaced ones are
/// then deleted. A process of an earlier version still pulling from one of
/// them finds it gone (docs/operations.md, "Upgrading the saga").
async fn open(
    stream: &jetstream::stream::Stream,
    deliveries: &Deliveries,
    subscription: &Subscription,
) -> Result<PullConsumer, SagaError> {
    let Subscription { name, event: (category, event_type), concurrency, start, replaces } = subscription;
    let nats = |e: &dyn std::fmt::Display| SagaError::Nats(e.to_string());
    let mut floors = Vec::new();
    for replaced in replaces {
        match stream.consumer_info(replaced).await {
            Ok(info) => floors.push((replaced, info.ack_floor.stream_sequence)),
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {}
            Err(error) => return Err(nats(&error)),
        }
    }
    let start = match floors.iter().map(|(_, floor)| floor).min() {
        Some(floor) => DeliverPolicy::ByStartSequence { start_sequence: floor + 1 },
        None => *start,
    };
    // Whether this one was there already: asked only where there is something to take over.
    let exists = !floors.is_empty()
        && match stream.consumer_info(name).await {
            Ok(_) => true,
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => false,
            Err(error) => return Err(nats(&error)),
        };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.{category}.{event_type}", deliveries.events.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: deliveries.ack_wait,
                deliver_policy: start,
                max_ack_pending: (concurrency * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats(&e))?;
    for (replaced, floor) in floors {
        match stream.delete_consumer(replaced).await {
            Ok(_) if exists => {
                // A process stopped between creating this one and deleting it,
                // or one of an earlier version made it again.
                tracing::warn!(consumer = %name, replaced, floor, "deleted a replaced consumer that was left")
            }
            Ok(_) => tracing::info!(consumer = %name, replaced, from = floor + 1, "took over a replaced consumer"),
            // Another instance, starting at the same time, deleted it first.
            Err(error) if not_found(&error) => {}
            Err(error) => tracing::warn!(consumer = %name, replaced, %error, "could not delete a replaced consumer"),
        }
    }
    Ok(consumer)
}

fn not_found(error: &jetstream::stream::ConsumerError) -> bool {
    matches!(error.kind(), ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// A message, and what it says.
struct Delivery {
    message: jetstream::Message,
    trigger: Result<Trigger, Malformed>,
}

/// Messages of one batch handled in one go: one, or several whose reactions
/// command the stream `key`.
struct Group {
    key: Option<String>,
    deliveries: Vec<Delivery>,
}

/// Parses a batch and groups its messages by the stream their reactions
/// command, in the order they came.
fn gather(
    reaction: &dyn Reaction,
    consumer: &str,
    batch: Vec<Result<jetstream::Message, MessagesError>>,
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::with_capacity(batch.len());
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for message in batch {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(consumer, %error, "pulling messages failed");
                continue;
            }
        };
        let trigger = Trigger::parse(&message.subject, &message.payload);
        let key = trigger.as_ref().ok().and_then(|trigger| reaction.together(trigger));
        let delivery = Delivery { message, trigger };
        match key {
            Some(key) => match by_key.entry(key) {
                Entry::Occupied(at) => groups[*at.get()].deliveries.push(delivery),
                Entry::Vacant(entry) => {
                    groups.push(Group { key: Some(entry.key().clone()), deliveries: vec![delivery] });
                    entry.insert(groups.len() - 1);
                }
            },
            None => groups.push(Group { key: None, deliveries: vec![delivery] }),
        }
    }
    groups
}

/// What handling a message needs besides the message.
struct Context<'a> {
    js: &'a jetstream::Context,
    reaction: &'a dyn Reaction,
    config: &'a Deliveries,
    consumer: &'a str,
    /// Who reacts, as a label of the metrics (made once).
    who: SharedString,
}

fn shared(text: &str) -> SharedString {
    SharedString::from(Arc::<str>::from(text))
}

async fn handle_group(context: &Context<'_>, group: Group) {
    let Context { reaction, who, .. } = context;
    let started = Instant::now();
    let mut done = false;
    if let (Some(key), [first, _, ..]) = (&group.key, group.deliveries.as_slice()) {
        let triggers: Vec<&Trigger> = group.deliveries.iter().filter_map(|d| d.trigger.as_ref().ok()).collect();
        let participant = &**who;
        let correlation_id = header(&first.message, "Correlation-Id");
        let span = tracing::info_span!("saga", participant, stream = %key, correlation_id, together = triggers.len());
        service_kit::telemetry::continue_trace(&span, &header(&first.message, "traceparent"));
        done = match reaction.react_together(key, &triggers).instrument(span.clone()).await {
            Ok(done) => done,
            Err(error) => {
                span.in_scope(|| tracing::debug!(%error, "could not react to the messages together; one by one"));
                false
            }
        };
        if done {
            metrics::counter!("saga_messages_together_total", "participant" => who.clone())
                .increment(triggers.len() as u64);
        }
    }
    for delivery in group.deliveries {
        // Alone, each message's time is its own.
        let started = if done { started } else { Instant::now() };
        handle(context, delivery, done, started).await;
    }
}

/// Reacts to the message (unless `done`: its reaction ran with others') and settles it.
async fn handle(context: &Context<'_>, delivery: Delivery, done: bool, started: Instant) {
    let Context { js, reaction, config, consumer, who } = context;
    let Delivery { message, trigger } = delivery;
    let participant = &**who;
    let delivered = message.info().map_or(1, |info| info.delivered);
    let correlation_id = header(&message, "Correlation-Id");
    let span = tracing::info_span!("saga", participant, subject = %message.subject, correlation_id, delivered);
    // The trace of the request that caused the event goes on here.
    service_kit::telemetry::continue_trace(&span, &header(&message, "traceparent"));
    async {
        let outcome = match trigger {
            Ok(_) if done => Ok(()),
            Ok(trigger) => reaction.react(&trigger).await,
            Err(malformed) => Err(ReactionError::from(malformed)),
        };
        let verdict = match outcome {
            Ok(()) if config.redeliver_once && delivered == 1 => settle(&message, AckKind::Nak(None), "redelivered").await,
            Ok(()) => settle(&message, AckKind::Ack, "handled").await,
            Err(ReactionError::Waiting(reason)) => {
                tracing::info!(%reason, "waiting; the message is delivered again later");
                settle(&message, AckKind::Nak(Some(waiting_delay(config.retry_delay, delivered))), "waiting").await
            }
            Err(ReactionError::Failed(reason)) if delivered < config.max_deliveries => {
                tracing::warn!(%reason, "reaction failed; the message is delivered again");
                settle(&message, AckKind::Nak(Some(config.retry_delay * delivered.clamp(1, 60) as u32)), "retried").await
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(%reason, "giving up on the message: to the dead-letter stream");
                match dead_letter(js, config, consumer, &message, delivered, &reason).await {
                    Ok(()) => settle(&message, AckKind::Term, "dead_lettered").await,
                    Err(error) => {
                        tracing::error!(%error, "the dead-letter stream did not take the message; it is delivered again");
                        settle(&message, AckKind::Nak(Some(config.retry_delay)), "retried").await
                    }
                }
            }
        };
        tracing::debug!(verdict, "message settled");
        metrics::counter!("saga_messages_total", "participant" => who.clone(), "outcome" => verdict).increment(1);
        metrics::histogram!("saga_message_seconds", "participant" => who.clone())
            .record(started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await;
}

/// Answers the message; a lost answer only means one more delivery.
async fn settle(message: &jetstream::Message, kind: AckKind, verdict: &'static str) -> &'static str {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, verdict, "could not answer the message; it will be delivered again");
    }
    verdict
}

/// Grows with each delivery, up to a minute: a gateway down for long is not
/// asked about every message every second.
fn waiting_delay(base: Duration, delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.clamp(1, 8) - 1).unwrap_or(0);
    (base * 2u32.pow(exponent)).min(Duration::from_secs(60))
}

fn header(message: &jetstream::Message, name: &str) -> String {
    message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned()).unwrap_or_default()
}

/// Publishes the message to `<dead-letter prefix>.<consumer>` with why it failed.
async fn dead_letter(
    js: &jetstream::Context,
    config: &Deliveries,
    consumer: &str,
    message: &jetstream::Message,
    delivered: i64,
    reason: &str,
) -> Result<(), SagaError> {
    let mut headers = message.headers.clone().unwrap_or_default();
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{consumer}/{sequence}").as_str());
    headers.insert(DEAD_LETTER_ERROR, single_line(reason).as_str());
    headers.insert(DEAD_LETTER_CONSUMER, consumer);
    headers.insert(DEAD_LETTER_SUBJECT, message.subject.as_str());
    headers.insert(DEAD_LETTER_DELIVERIES, delivered.to_string().as_str());
    let subject = format!("{}.{consumer}", config.dead_letter_prefix);
    let ack = js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
        .map_err(|e| SagaError::Nats(e.to_string()))?;
    ack.await.map_err(|e| SagaError::Nats(e.to_string()))?;
    metrics::counter!("saga_dead_letters_total", "consumer" => consumer.to_owned()).increment(1);
    Ok(())
}

/// Header values hold one line.
fn single_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_grows_from_the_base_up_to_a_minute() {
        let base = Duration::from_millis(500);
        assert_eq!(waiting_delay(base, 1), base);
        assert_eq!(waiting_delay(base, 3), base * 4);
        assert_eq!(waiting_delay(Duration::from_secs(1), 50), Duration::from_secs(60));
    }

    #[test]
    fn dead_letter_headers_hold_one_line() {
        assert_eq!(single_line("a\nb\r\tc"), "a b  c");
    }
}
