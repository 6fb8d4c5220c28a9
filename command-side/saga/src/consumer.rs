//! One durable JetStream pull consumer feeding one participant.
//!
//! A message is acknowledged only after the participant's append committed.
//! Otherwise it is delivered again after a pause: a participant waiting for
//! the gateway or the store is retried however long that takes; one that
//! failed is retried up to `max_deliveries` times and then moved to the
//! dead-letter stream with its error, like a message that cannot be read at
//! all. Messages are handled concurrently, so one slow or failing message
//! holds up nothing behind it.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use service_kit::Shutdown;
use tracing::Instrument;

use super::participants::{Participant, ReactionError, Reactor};
use super::trigger::Trigger;
use super::{SagaConfig, SagaError};

/// Headers of a dead-lettered message, beside the original ones.
pub const DEAD_LETTER_ERROR: &str = "Dead-Letter-Error";
pub const DEAD_LETTER_CONSUMER: &str = "Dead-Letter-Consumer";
pub const DEAD_LETTER_SUBJECT: &str = "Dead-Letter-Subject";
pub const DEAD_LETTER_DELIVERIES: &str = "Dead-Letter-Deliveries";

/// `<participant>-<EventType>`, e.g. `inventory-OrderPlaced`.
pub fn consumer_name(participant: Participant, event_type: &str) -> String {
    format!("{}-{event_type}", participant.name())
}

/// Consumes until `stop` turns true, or until the subscription fails.
pub async fn consume(
    js: &jetstream::Context,
    reactor: &Reactor,
    config: &SagaConfig,
    participant: Participant,
    (category, event_type): (&str, &str),
    shutdown: &Shutdown,
) -> Result<(), SagaError> {
    let name = consumer_name(participant, event_type);
    let concurrency = if participant == Participant::Payment { config.gateway_concurrency } else { config.concurrency };
    let stream = js.get_stream(&config.events.stream).await.map_err(|e| SagaError::Nats(e.to_string()))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.{category}.{event_type}", config.events.subject_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                deliver_policy: DeliverPolicy::All,
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
    tracing::info!(consumer = %name, "saga participant consuming");
    let handled = messages.take_until(shutdown.requested()).for_each_concurrent(concurrency, |message| async {
        match message {
            Ok(message) => handle(js, reactor, config, participant, &name, message).await,
            Err(error) => tracing::warn!(consumer = %name, %error, "pulling messages failed"),
        }
    });
    handled.await;
    Ok(())
}

async fn handle(
    js: &jetstream::Context,
    reactor: &Reactor,
    config: &SagaConfig,
    participant: Participant,
    consumer: &str,
    message: jetstream::Message,
) {
    let started = Instant::now();
    let delivered = message.info().map_or(1, |info| info.delivered);
    let correlation_id = header(&message, "Correlation-Id");
    let span = tracing::info_span!("saga", participant = participant.name(), subject = %message.subject, correlation_id, delivered);
    // The trace of the request that caused the event goes on here.
    service_kit::telemetry::continue_trace(&span, &header(&message, "traceparent"));
    async {
        let outcome = match Trigger::parse(&message.subject, &message.payload) {
            Ok(trigger) => participant.react(reactor, &trigger).await,
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
        metrics::counter!("saga_messages_total", "participant" => participant.name(), "outcome" => verdict).increment(1);
        metrics::histogram!("saga_message_seconds", "participant" => participant.name())
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
    config: &SagaConfig,
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
