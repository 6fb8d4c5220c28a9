//! One durable JetStream pull consumer feeding one reaction (a saga
//! participant, or the notifier).
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
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesError;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
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
    /// Who reacts, in logs and metrics (`inventory`, `notifications`).
    fn participant(&self) -> &'static str;

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
/// messages it handles at once, and where a new one starts.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    /// `(category, event type)`: the subject `<prefix>.<category>.<type>`.
    pub event: (&'static str, &'static str),
    pub concurrency: usize,
    pub start: DeliverPolicy,
}

impl Subscription {
    /// `<participant>-<EventType>`, e.g. `inventory-OrderPlaced`, from the start of the stream.
    pub fn new(participant: &str, event: (&'static str, &'static str), concurrency: usize) -> Self {
        Self { name: format!("{participant}-{}", event.1), event, concurrency, start: DeliverPolicy::All }
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
    let Subscription { name, event: (category, event_type), concurrency, start } = subscription;
    let concurrency = *concurrency;
    let stream = js.get_stream(&deliveries.events.stream).await.map_err(|e| SagaError::Nats(e.to_string()))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.{category}.{event_type}", deliveries.events.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: deliveries.ack_wait,
                deliver_policy: *start,
                max_ack_pending: (concurrency * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SagaError::Nats(e.to_string()))?;
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
    groups.for_each_concurrent(concurrency, |group| handle_group(js, reaction, deliveries, name, group)).await;
    Ok(())
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

async fn handle_group(
    js: &jetstream::Context,
    reaction: &dyn Reaction,
    config: &Deliveries,
    consumer: &str,
    group: Group,
) {
    let started = Instant::now();
    let mut done = false;
    if let (Some(key), [first, _, ..]) = (&group.key, group.deliveries.as_slice()) {
        let triggers: Vec<&Trigger> = group.deliveries.iter().filter_map(|d| d.trigger.as_ref().ok()).collect();
        let participant = reaction.participant();
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
            metrics::counter!("saga_messages_together_total", "participant" => participant)
                .increment(triggers.len() as u64);
        }
    }
    for delivery in group.deliveries {
        // Alone, each message's time is its own.
        let started = if done { started } else { Instant::now() };
        handle(js, reaction, config, consumer, delivery, done, started).await;
    }
}

/// Reacts to the message (unless `done`: its reaction ran with others') and settles it.
async fn handle(
    js: &jetstream::Context,
    reaction: &dyn Reaction,
    config: &Deliveries,
    consumer: &str,
    delivery: Delivery,
    done: bool,
    started: Instant,
) {
    let Delivery { message, trigger } = delivery;
    let participant = reaction.participant();
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
        metrics::counter!("saga_messages_total", "participant" => participant, "outcome" => verdict).increment(1);
        metrics::histogram!("saga_message_seconds", "participant" => participant)
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
