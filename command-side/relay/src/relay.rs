//! The relay's loop: from the checkpoint, every event of the log published
//! to JetStream, the checkpoint moved once JetStream acknowledged them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use event_store::{EventStore, LogPosition, RecordedEvent};
use futures_util::StreamExt;
use service_kit::{live, supervise, Shutdown};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::checkpoint;
use crate::config::RelayConfig;

/// Advisory lock class of relays (the key is `hashtext(stream name)`).
const LOCK_CLASS: i32 = 0x524c_4159; // "RLAY"

/// Pause before a failed relay starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// The checkpoint is written at most this often: under load each write would
/// otherwise cover a batch or two (a transaction per few events), and what a
/// crash loses is only republished, which JetStream drops as duplicates.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the JetStream stream: {0}")]
    CreateStream(#[from] jetstream::context::CreateStreamError),
    #[error("cannot open the JetStream stream: {0}")]
    GetStream(#[from] jetstream::context::GetStreamError),
    #[error("JetStream did not take event {event_id}: {reason}")]
    Publish { event_id: uuid::Uuid, reason: String },
    #[error("the relay lost its lock: another instance moved the checkpoint")]
    LostLock,
    #[error("the relay's checkpoint writer failed: {0}")]
    Checkpoint(String),
    #[error("relay database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The stream the relay publishes to, created if missing, its limits
/// (`RELAY_STREAM_MAX_AGE`, `RELAY_STREAM_MAX_BYTES`) brought up to date if not.
pub async fn ensure_stream(js: &jetstream::Context, config: &RelayConfig) -> Result<stream::Stream, RelayError> {
    js.create_or_update_stream(stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        ..Default::default()
    })
    .await?;
    Ok(js.get_stream(&config.stream).await?)
}

/// Relays the log until `shutdown`, or until it fails.
pub async fn run(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    shutdown: &Shutdown,
) -> Result<(), RelayError> {
    ensure_stream(&js, &config).await?;
    let lock = live::become_live(&pool, (LOCK_CLASS, &config.stream), "relay", config.standby_poll, shutdown).await?;
    let Some(_lock) = lock else { return Ok(()) };
    tracing::info!(stream = %config.stream, "relay live");
    let checkpoint = checkpoint::load(&pool, &config.stream).await?;
    // The checkpoint is written beside the publishing, not in its way: the
    // next batches go out while the last position commits. What a crash loses
    // is at most the positions not yet written (up to CHECKPOINT_EVERY of
    // them), and JetStream drops those events as duplicates when they are
    // published again.
    let (progress, reports) = watch::channel(Progress { at: checkpoint, published: 0 });
    let mut keeper = tokio::spawn(keep_checkpoint(pool.clone(), config.stream.clone(), checkpoint, reports));
    let mut keeper_ended = None;
    let mut events = store.subscribe(checkpoint).ready_chunks(config.batch_size.max(1));
    let relayed = async {
        loop {
            let chunk = tokio::select! {
                () = shutdown.requested() => return Ok(()),
                ended = &mut keeper => {
                    keeper_ended = Some(());
                    // It only ends on its own when it failed.
                    return Err(match ended {
                        Ok(Err(error)) => error,
                        Ok(Ok(())) => RelayError::LostLock,
                        Err(panic) => RelayError::Checkpoint(panic.to_string()),
                    });
                }
                chunk = events.next() => chunk,
            };
            let Some(chunk) = chunk else { return Ok(()) };
            let batch: Vec<RecordedEvent> = chunk
                .into_iter()
                .filter_map(|item| item.map_err(|error| tracing::warn!(%error, "reading the log failed")).ok())
                .collect();
            let Some(last) = batch.last().map(|event| event.log_position) else { continue };
            publish(&js, &config.subject_prefix, &batch).await?;
            metrics::counter!("relay_events_published_total").increment(batch.len() as u64);
            metrics::gauge!("relay_published_position").set(last.position as f64);
            progress.send_modify(|p| {
                p.at = Some(last);
                p.published += batch.len() as u64;
            });
        }
    };
    let outcome = relayed.await;
    // The keeper writes the last acknowledged position, then ends.
    drop(progress);
    let kept = match keeper_ended {
        Some(()) => Ok(()),
        None => keeper.await.unwrap_or_else(|panic| Err(RelayError::Checkpoint(panic.to_string()))),
    };
    tracing::info!(stream = %config.stream, "relay stopped");
    outcome.and(kept)
}

/// How far JetStream has acknowledged, and how many events that was in all.
#[derive(Debug, Clone, Copy)]
struct Progress {
    at: Option<LogPosition>,
    published: u64,
}

/// Writes the newest acknowledged position whenever it changes, at most every
/// [`CHECKPOINT_EVERY`], until the relay drops its end (then the last one);
/// fails when another instance moved the checkpoint.
async fn keep_checkpoint(
    pool: PgPool,
    name: String,
    mut written: Option<LogPosition>,
    mut reports: watch::Receiver<Progress>,
) -> Result<(), RelayError> {
    let mut counted = 0;
    loop {
        let open = reports.changed().await.is_ok();
        let now = *reports.borrow_and_update();
        if let Some(to) = now.at.filter(|to| Some(*to) != written) {
            if !checkpoint::advance(&pool, &name, written, to, (now.published - counted) as usize).await? {
                return Err(RelayError::LostLock);
            }
            (written, counted) = (Some(to), now.published);
        }
        if !open {
            return Ok(());
        }
        // Positions acknowledged meanwhile go in the next write together (and
        // a relay that stops meanwhile waits out the pause for its last one).
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

/// Runs the relay until `shutdown`, starting it again after a pause whenever
/// it fails (NATS or the database away, its lock lost).
pub async fn run_supervised(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    shutdown: Shutdown,
) {
    supervise("relay", &shutdown, RESTART_PAUSE, || {
        run(store.clone(), pool.clone(), js.clone(), config.clone(), &shutdown)
    })
    .await;
}

/// Publishes a batch, then waits for every acknowledgement.
async fn publish(js: &jetstream::Context, prefix: &str, batch: &[RecordedEvent]) -> Result<(), RelayError> {
    let mut acks = Vec::with_capacity(batch.len());
    for event in batch {
        let failed = |reason: String| RelayError::Publish { event_id: event.event_id, reason };
        let payload = serde_json::to_vec(event).map_err(|e| failed(e.to_string()))?;
        let mut headers = headers(event);
        if !event.metadata.trace_context.is_empty() {
            // A traced event: the publish is a span of its trace, and the consumers continue from it.
            let span = tracing::info_span!("relay.publish", event_id = %event.event_id, event_type = %event.event_type);
            service_kit::telemetry::continue_trace(&span, &event.metadata.trace_context);
            let traceparent = service_kit::telemetry::traceparent(&span);
            if !traceparent.is_empty() {
                headers.insert("traceparent", traceparent.as_str());
            }
        }
        let ack = js
            .publish_with_headers(subject(prefix, event), headers, payload.into())
            .await
            .map_err(|e| failed(e.to_string()))?;
        acks.push((event.event_id, ack));
    }
    for (event_id, ack) in acks {
        ack.await.map_err(|e| RelayError::Publish { event_id, reason: e.to_string() })?;
    }
    for event in batch {
        let correlation_id = event.metadata.correlation_id.as_str();
        tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, correlation_id, "published");
    }
    Ok(())
}

/// `<prefix>.<category>.<EventType>`, each token kept to what a subject allows.
pub fn subject(prefix: &str, event: &RecordedEvent) -> String {
    let token = |text: &str| -> String {
        let cleaned: String =
            text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        if cleaned.is_empty() {
            "_".into()
        } else {
            cleaned
        }
    };
    format!("{prefix}.{}.{}", token(event.category()), token(&event.event_type))
}

/// `Nats-Msg-Id` (the event id), `Correlation-Id`, `Causation-Id`, and the
/// writer's `traceparent` when it was traced.
pub fn headers(event: &RecordedEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.to_string().as_str());
    if !event.metadata.correlation_id.is_empty() {
        headers.insert("Correlation-Id", event.metadata.correlation_id.as_str());
    }
    if !event.metadata.causation_id.is_empty() {
        headers.insert("Causation-Id", event.metadata.causation_id.as_str());
    }
    if !event.metadata.trace_context.is_empty() {
        headers.insert("traceparent", event.metadata.trace_context.as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use event_store::Metadata;
    use uuid::Uuid;

    use super::*;

    fn event(stream_id: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            log_position: LogPosition { commit: 1, position: 1 },
            event_id: Uuid::new_v4(),
            stream_id: stream_id.into(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            payload: serde_json::json!({}),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn subjects_are_prefix_category_and_type() {
        assert_eq!(subject("events", &event("order-1", "OrderPlaced")), "events.order.OrderPlaced");
        assert_eq!(subject("events", &event("inventory-SKU-1", "StockReserved")), "events.inventory.StockReserved");
    }

    #[test]
    fn subject_tokens_never_carry_dots_spaces_or_wildcards() {
        assert_eq!(subject("events", &event("a.b*c-1", "Odd Type>")), "events.a_b_c.Odd_Type_");
        assert_eq!(subject("events", &event("", "")), "events._._");
    }
}
