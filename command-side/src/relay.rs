//! The relay: tails the global log and publishes every event to JetStream.
//!
//! - Subject `<prefix>.<category>.<EventType>` (`events.order.OrderPlaced`),
//!   the event as JSON (`RecordedEvent`), headers `Nats-Msg-Id` (the event
//!   id: JetStream drops a repeat within its duplicate window),
//!   `Correlation-Id` and `Causation-Id`.
//! - One live relay per stream: a session advisory lock keyed by the stream
//!   name; another instance waits as a hot standby.
//! - The checkpoint (`relay_checkpoints`) moves only after JetStream has
//!   acknowledged every event of a batch, and only from where this instance
//!   left it. Killed at any point, the relay publishes again from the
//!   checkpoint; what JetStream had already stored is dropped as a duplicate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use event_store::{EventStore, LogPosition, RecordedEvent};
use futures_util::StreamExt;
use service_kit::config::{self, ConfigError, Source};
use service_kit::live;
use sqlx::PgPool;
use tokio::sync::watch;

/// Advisory lock class of relays (the key is `hashtext(stream name)`).
const LOCK_CLASS: i32 = 0x524c_4159; // "RLAY"

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The JetStream stream (created if missing, file storage).
    pub stream: String,
    /// Subjects are `<prefix>.<category>.<EventType>`.
    pub subject_prefix: String,
    /// Most events published before their acknowledgements are awaited.
    pub batch_size: usize,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How often a standby instance tries to become the live one.
    pub standby_poll: Duration,
    /// `RELAY_OPS_ADDR`: health and metrics of the relay process.
    pub ops_addr: SocketAddr,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stream: "EVENTS".into(),
            subject_prefix: "events".into(),
            batch_size: 256,
            duplicate_window: Duration::from_secs(120),
            standby_poll: Duration::from_secs(1),
            ops_addr: SocketAddr::from(([127, 0, 0, 1], 9101)),
        }
    }
}

impl RelayConfig {
    /// `RELAY_STREAM` and `RELAY_SUBJECT_PREFIX`, checked.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let stream: String = config::parsed(source, "RELAY_STREAM", defaults.stream.clone())?;
        let subject_prefix: String = config::parsed(source, "RELAY_SUBJECT_PREFIX", defaults.subject_prefix.clone())?;
        let token =
            |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !token(&stream) {
            return Err(ConfigError::new("RELAY_STREAM", stream, "letters, digits, - and _ only"));
        }
        if !subject_prefix.split('.').all(token) {
            return Err(ConfigError::new(
                "RELAY_SUBJECT_PREFIX",
                subject_prefix,
                "dot-separated tokens of letters, digits, - and _",
            ));
        }
        let ops_addr = config::parsed(source, "RELAY_OPS_ADDR", defaults.ops_addr)?;
        Ok(Self { stream, subject_prefix, ops_addr, ..defaults })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the JetStream stream: {0}")]
    CreateStream(#[from] jetstream::context::CreateStreamError),
    #[error("JetStream did not take event {event_id}: {reason}")]
    Publish { event_id: uuid::Uuid, reason: String },
    #[error("the relay lost its lock: another instance moved the checkpoint")]
    LostLock,
    #[error("the relay's checkpoint writer failed: {0}")]
    Checkpoint(String),
    #[error("relay database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The stream the relay publishes to, created if missing.
pub async fn ensure_stream(js: &jetstream::Context, config: &RelayConfig) -> Result<stream::Stream, RelayError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await?;
    Ok(stream)
}

/// Relays the log until `shutdown` completes, or until it fails.
pub async fn run(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    tokio::pin!(shutdown);
    ensure_stream(&js, &config).await?;
    let lock =
        live::become_live(&pool, (LOCK_CLASS, &config.stream), "relay", config.standby_poll, &mut shutdown).await?;
    let Some(_lock) = lock else { return Ok(()) };
    tracing::info!(stream = %config.stream, "relay live");
    let checkpoint = load_checkpoint(&pool, &config.stream).await?;
    // The checkpoint is written beside the publishing, not in its way: the
    // next batch goes out while the last one's position commits. What a crash
    // loses is at most the positions not yet written, and JetStream drops
    // those events as duplicates when they are published again.
    let (progress, reports) = watch::channel(Progress { at: checkpoint, published: 0 });
    let mut keeper = tokio::spawn(keep_checkpoint(pool.clone(), config.stream.clone(), checkpoint, reports));
    let mut keeper_ended = None;
    let mut events = store.subscribe(checkpoint).ready_chunks(config.batch_size.max(1));
    let relayed = async {
        loop {
            let chunk = tokio::select! {
                () = &mut shutdown => return Ok(()),
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

/// Writes the newest acknowledged position whenever it changes, until the
/// relay drops its end; fails when another instance moved the checkpoint.
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
            if !advance(&pool, &name, written, to, (now.published - counted) as usize).await? {
                return Err(RelayError::LostLock);
            }
            (written, counted) = (Some(to), now.published);
        }
        if !open {
            return Ok(());
        }
    }
}

/// Runs the relay until `shutdown`, starting it again after a pause whenever
/// it fails (NATS or the database away, its lock lost).
pub async fn run_supervised(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let supervisor = async {
        loop {
            let mut stop = stopping.clone();
            let outcome = run(store.clone(), pool.clone(), js.clone(), config.clone(), async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
            match outcome {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "relay interrupted; starting again"),
            }
            let mut stop = stopping.clone();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(RESTART_PAUSE) => {}
            }
        }
    };
    tokio::pin!(supervisor);
    tokio::select! {
        () = &mut supervisor => {}
        () = shutdown => {
            let _ = stop.send(true);
            supervisor.await;
        }
    }
}

/// The most events `relay_lag_events` counts: beyond, it says this many.
pub const LAG_COUNT_LIMIT: u64 = 100_000;

/// Reports `relay_lag_events` (readable events after the checkpoint, up to
/// [`LAG_COUNT_LIMIT`]) every `every`, for as long as it is polled.
pub async fn report_lag(store: Arc<dyn EventStore>, pool: PgPool, stream: String, every: Duration) {
    loop {
        let checkpoint: Result<Option<(i64, i64)>, _> =
            sqlx::query_as("SELECT commit_id, position FROM relay_checkpoints WHERE name = $1")
                .bind(&stream)
                .fetch_optional(&pool)
                .await;
        let after = checkpoint.map(|row| {
            row.map(|(commit, position)| LogPosition { commit: commit as u64, position: position as u64 })
                .filter(|checkpoint| *checkpoint != LogPosition::START)
        });
        match after {
            Ok(after) => match store.count_after(after, LAG_COUNT_LIMIT).await {
                Ok(lag) => metrics::gauge!("relay_lag_events").set(lag as f64),
                Err(error) => tracing::debug!(%error, "cannot count the relay's lag"),
            },
            Err(error) => tracing::debug!(%error, "cannot read the relay's checkpoint"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Pause before a failed relay starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

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

async fn load_checkpoint(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    sqlx::query("INSERT INTO relay_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let (commit, position): (i64, i64) =
        sqlx::query_as("SELECT commit_id, position FROM relay_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?;
    Ok((position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 }))
}

/// Moves the checkpoint from `from` to `to`; `false` if it was not at `from`.
async fn advance(
    pool: &PgPool,
    name: &str,
    from: Option<LogPosition>,
    to: LogPosition,
    events: usize,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    let moved = sqlx::query(
        "UPDATE relay_checkpoints SET commit_id = $4, position = $5, events_published = events_published + $6, \
             updated_at = now() \
         WHERE name = $1 AND commit_id = $2 AND position = $3",
    )
    .bind(name)
    .bind(from.commit as i64)
    .bind(from.position as i64)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() == 1)
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
    fn the_stream_and_prefix_settings_are_checked() {
        use service_kit::config::Vars;
        let config = RelayConfig::from_source(&Vars(&[])).unwrap();
        assert_eq!((config.stream.as_str(), config.subject_prefix.as_str()), ("EVENTS", "events"));
        let custom = RelayConfig::from_source(&Vars(&[("RELAY_SUBJECT_PREFIX", "shop.events")])).unwrap();
        assert_eq!(custom.subject_prefix, "shop.events");
        let bad = RelayConfig::from_source(&Vars(&[("RELAY_STREAM", "a.b")])).unwrap_err();
        assert!(bad.to_string().contains("RELAY_STREAM"), "{bad}");
        let bad = RelayConfig::from_source(&Vars(&[("RELAY_SUBJECT_PREFIX", "events.>")])).unwrap_err();
        assert!(bad.to_string().contains("RELAY_SUBJECT_PREFIX"), "{bad}");
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
