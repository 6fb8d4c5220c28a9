//! Running one projection.
//!
//! 1. Become the live instance: a session advisory lock keyed by the name,
//!    on a connection of its own. Other instances wait as hot standbys and
//!    take over within `standby_poll` once the live one's connection ends.
//! 2. Follow the global log from the checkpoint, in batches of what is ready.
//! 3. Apply each batch in one transaction that also moves the checkpoint, from
//!    where this instance last left it: a crash anywhere loses or doubles
//!    nothing, and an instance that lost its lock cannot write (the move fails).
//!    Cancelling the runner never leaves a batch's transaction half done.
//! 4. An event the projection cannot apply stops it: what came before is
//!    committed, the event and the error are recorded, the others run on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, LogPosition, RecordedEvent};
use futures_util::StreamExt;
use read_models::{checkpoints, rebuilds, BatchError, Projection};
use service_kit::{live, Shutdown};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::rebuild;

/// Which tables a batch writes, and so which checkpoint moves with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The live tables in `public`; checkpoint in `projection_checkpoints`.
    Live,
    /// A rebuild's shadow tables in schema `rebuild_<name>`; checkpoint in `projection_rebuilds`.
    Shadow,
}

/// Advisory lock class of projections (the key is `hashtext(name)`).
const LOCK_CLASS: i32 = 0x5052_4f4a; // "PROJ"

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How often a standby instance tries to become the live one.
    pub standby_poll: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self { batch_size: 500, standby_poll: Duration::from_secs(1) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("projection {name} stopped at event {event_id} (position {position}): {error}")]
    Failed { name: &'static str, event_id: Uuid, position: u64, error: String },
    #[error("projection {0} lost its lock: another instance moved the checkpoint")]
    LostLock(&'static str),
    /// The database failed under the projection: run it again (after a pause).
    #[error("projection {name} was interrupted: {source}")]
    Interrupted { name: &'static str, source: sqlx::Error },
    #[error("projection database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Runs `projection` until `shutdown`, or until it fails.
pub async fn run(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    shutdown: &Shutdown,
) -> Result<(), RunError> {
    let name = projection.name();
    let lock = live::become_live(&pool, (LOCK_CLASS, name), name, config.standby_poll, shutdown).await?;
    let Some(mut lock) = lock else { return Ok(()) };
    tracing::info!(projection = name, "live");

    'from_checkpoint: loop {
        let mut checkpoint = checkpoints::load(&pool, name).await?;
        let mut events = store.subscribe(checkpoint).ready_chunks(config.batch_size.max(1));
        // Events of no concern to this projection are not worth a transaction
        // each: the checkpoint passes them in the next batch's transaction, or
        // after `SKIP_DELAY` on its own.
        let mut skipped: Option<Skipped> = None;
        loop {
            let flush_at = skipped.as_ref().map(|s| s.since + SKIP_DELAY);
            let chunk = tokio::select! {
                () = shutdown.requested() => break 'from_checkpoint,
                () = sleep_until(flush_at), if flush_at.is_some() => None,
                chunk = events.next() => match chunk {
                    Some(chunk) => Some(chunk),
                    None => break 'from_checkpoint,
                },
            };
            // A failed read is retried by the subscription from its last event,
            // so the events around an error still follow each other.
            let batch: Vec<RecordedEvent> = chunk
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| {
                    item.map_err(|error| tracing::warn!(projection = name, %error, "reading the log failed")).ok()
                })
                .collect();
            if !batch.iter().any(|event| projection.concerns(event)) {
                match batch.last() {
                    Some(last) => {
                        let since = Instant::now();
                        let passed = skipped.get_or_insert(Skipped { since, to: last.log_position, events: 0 });
                        passed.to = last.log_position;
                        passed.events += batch.len();
                        continue;
                    }
                    None if skipped.is_none() => continue,
                    None => {} // the passed events are due to be checkpointed
                }
            }
            let passed = skipped.take();
            // The batch's transaction runs in a task of its own: if this future
            // is cancelled, the transaction still commits or rolls back instead
            // of lingering, idle and holding locks, on a pooled connection. A
            // successor that started meanwhile is fenced off by the checkpoint.
            let started = std::time::Instant::now();
            let events = batch.len() as u64;
            let batch_task = {
                let (projection, pool) = (projection.clone(), pool.clone());
                tokio::spawn(async move {
                    match passed {
                        Some(passed) if batch.is_empty() => {
                            pass(&*projection, &pool, checkpoint, passed.to, passed.events).await
                        }
                        passed => {
                            let passed = passed.map_or(0, |p| p.events);
                            apply_batch(&*projection, &pool, Target::Live, (checkpoint, passed), &batch).await
                        }
                    }
                })
            };
            checkpoint = Some(match batch_task.await {
                Ok(Ok(position)) => {
                    metrics::counter!("projection_events_applied_total", "projection" => name.to_owned())
                        .increment(events);
                    metrics::histogram!("projection_batch_seconds", "projection" => name.to_owned())
                        .record(started.elapsed().as_secs_f64());
                    position
                }
                // Holding the lock, only a rebuild's swap moves the checkpoint:
                // the tables and the checkpoint are the rebuild's now.
                Ok(Err(RunError::LostLock(_))) if still_connected(&mut lock).await => {
                    tracing::info!(projection = name, "a rebuild was swapped in; following on from its checkpoint");
                    continue 'from_checkpoint;
                }
                Ok(Err(error)) => return Err(error),
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => break 'from_checkpoint, // the runtime is shutting down
            });
        }
    }
    tracing::info!(projection = name, "stopped");
    Ok(())
}

/// How long the checkpoint may stay behind events of no concern to the projection.
const SKIP_DELAY: Duration = Duration::from_millis(100);

/// Events passed over (of no concern) since the checkpoint last moved.
struct Skipped {
    since: Instant,
    to: LogPosition,
    events: usize,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Moves the checkpoint past events of no concern, alone in its transaction.
async fn pass(
    projection: &dyn Projection,
    pool: &PgPool,
    checkpoint: Option<LogPosition>,
    to: LogPosition,
    events: usize,
) -> Result<LogPosition, RunError> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    if !checkpoints::advance(&mut tx, name, (checkpoint, to), events, false).await? {
        return Err(RunError::LostLock(name));
    }
    // Lost in a server crash, this move would be made again: no need to wait for the disk.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(to)
}

/// Whether the connection holding the advisory lock (and so the lock) is alive.
async fn still_connected(lock: &mut PgConnection) -> bool {
    lock.ping().await.is_ok()
}

/// Applies a batch to `target` and moves its checkpoint, in one transaction.
/// On an event the projection cannot apply, commits the events before it,
/// records the failure and stops. A database error that is not transient is
/// narrowed down to its event by splitting the batch.
///
/// `passed` events of no concern came between `checkpoint` and the batch;
/// they count as processed with it.
#[tracing::instrument(name = "projection.batch", skip_all, fields(projection = projection.name(), events = batch.len()))]
pub(crate) async fn apply_batch(
    projection: &dyn Projection,
    pool: &PgPool,
    target: Target,
    (checkpoint, passed): (Option<LogPosition>, usize),
    batch: &[RecordedEvent],
) -> Result<LogPosition, RunError> {
    let name = projection.name();
    let (index, error) = match try_batch(projection, pool, target, (checkpoint, passed), batch).await {
        Ok(Some(position)) => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                for event in batch {
                    let correlation_id = event.metadata.correlation_id.as_str();
                    tracing::debug!(projection = name, event_id = %event.event_id, correlation_id, "applied");
                }
            }
            return Ok(position);
        }
        Ok(None) => return Err(RunError::LostLock(name)),
        // Passing trouble (the connection, a deadlock, a failover) is not
        // the event's fault: the runner is restarted, the event retried.
        Err(BatchError::Database(error)) if event_store::is_transient(&error) => {
            return Err(RunError::Interrupted { name, source: error })
        }
        Err(BatchError::Database(error)) if batch.len() > 1 => {
            tracing::debug!(projection = name, %error, events = batch.len(), "batch failed; splitting it");
            let (first, second) = batch.split_at(batch.len() / 2);
            let checkpoint = Box::pin(apply_batch(projection, pool, target, (checkpoint, passed), first)).await?;
            return Box::pin(apply_batch(projection, pool, target, (Some(checkpoint), 0), second)).await;
        }
        Err(BatchError::Database(error)) => (0, error.to_string()),
        Err(BatchError::Event { index, source }) => (index, source.to_string()),
    };
    if index > 0 {
        // Keep the progress before the failing event.
        Box::pin(apply_batch(projection, pool, target, (checkpoint, passed), &batch[..index])).await?;
    }
    let event = &batch[index];
    let position = event.log_position.position;
    tracing::error!(projection = name, ?target, event_id = %event.event_id, position, %error, "projection stopped");
    match target {
        Target::Live => checkpoints::record_failure(pool, name, event.event_id, position, &error).await?,
        Target::Shadow => rebuilds::failed_at(pool, name, event.event_id, position, &error).await?,
    }
    Err(RunError::Failed { name, event_id: event.event_id, position, error })
}

/// One transaction: the batch's writes and the checkpoint's move. `None` if
/// the checkpoint was not where this runner left it (nothing is written).
async fn try_batch(
    projection: &dyn Projection,
    pool: &PgPool,
    target: Target,
    (checkpoint, passed): (Option<LogPosition>, usize),
    batch: &[RecordedEvent],
) -> Result<Option<LogPosition>, BatchError> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    if target == Target::Shadow {
        rebuild::use_shadow_tables(&mut tx, name).await?;
    }
    let written = projection.apply(&mut tx, batch).await?;
    let last = batch[batch.len() - 1].log_position;
    let moved = match target {
        Target::Live => {
            checkpoints::advance(&mut tx, name, (checkpoint, last), passed + batch.len(), written > 0).await?
        }
        Target::Shadow => rebuilds::advance(&mut tx, name, (checkpoint, last), passed + batch.len()).await?,
    };
    if !moved {
        return Ok(None); // rolled back when dropped
    }
    if written == 0 {
        // Only the checkpoint moves: if a server crash lost this commit, the
        // events would be read again and ignored again. No need to wait for
        // the disk (a later commit that must wait flushes this one too).
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Some(last))
}
