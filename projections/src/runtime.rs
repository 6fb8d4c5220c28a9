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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, LogPosition, RecordedEvent};
use futures_util::StreamExt;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{checkpoint, ApplyError, Projection};

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
    #[error("projection {name} stopped at event {event_id} (position {position}): {source}")]
    Failed { name: &'static str, event_id: Uuid, position: u64, source: ApplyError },
    #[error("projection {0} lost its lock: another instance moved the checkpoint")]
    LostLock(&'static str),
    /// The database failed under the projection: run it again (after a pause).
    #[error("projection {name} was interrupted: {source}")]
    Interrupted { name: &'static str, source: ApplyError },
    #[error("projection database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Runs `projection` until `shutdown` completes, or until it fails.
pub async fn run(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let name = projection.name();
    tokio::pin!(shutdown);
    let Some(_lock) = become_live(&pool, name, &config, &mut shutdown).await? else { return Ok(()) };
    tracing::info!(projection = name, "live");

    let mut checkpoint = checkpoint::load(&pool, name).await?;
    let mut events = store.subscribe(checkpoint).ready_chunks(config.batch_size.max(1));
    loop {
        let chunk = tokio::select! {
            () = &mut shutdown => break,
            chunk = events.next() => chunk,
        };
        let Some(chunk) = chunk else { break };
        // A failed read is retried by the subscription from its last event,
        // so the events around an error still follow each other.
        let batch: Vec<RecordedEvent> = chunk
            .into_iter()
            .filter_map(|item| {
                item.map_err(|error| tracing::warn!(projection = name, %error, "reading the log failed")).ok()
            })
            .collect();
        if batch.is_empty() {
            continue;
        }
        // The batch's transaction runs in a task of its own: if this future
        // is cancelled, the transaction still commits or rolls back instead
        // of lingering, idle and holding locks, on a pooled connection. A
        // successor that started meanwhile is fenced off by the checkpoint.
        let batch_task = {
            let (projection, pool) = (projection.clone(), pool.clone());
            tokio::spawn(async move { apply_batch(&*projection, &pool, checkpoint, &batch).await })
        };
        checkpoint = Some(match batch_task.await {
            Ok(result) => result?,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => break, // the runtime is shutting down
        });
    }
    tracing::info!(projection = name, "stopped");
    Ok(())
}

/// Waits for the advisory lock; `None` if shut down first. The returned
/// connection holds the lock until it is dropped.
async fn become_live(
    pool: &PgPool,
    name: &'static str,
    config: &ProjectorConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<PgConnection>, RunError> {
    let mut connection = pool.connect_options().connect().await?;
    let mut announced = false;
    loop {
        let live: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(name)
            .fetch_one(&mut connection)
            .await?;
        if live {
            return Ok(Some(connection));
        }
        if !announced {
            tracing::info!(projection = name, "another instance is live; standing by");
            announced = true;
        }
        tokio::select! {
            () = &mut *shutdown => {
                let _ = connection.close().await;
                return Ok(None);
            }
            () = tokio::time::sleep(config.standby_poll) => {}
        }
    }
}

/// Applies a batch and moves the checkpoint, in one transaction. On an event
/// the projection cannot apply, commits the events before it, records the
/// failure and stops.
async fn apply_batch(
    projection: &dyn Projection,
    pool: &PgPool,
    checkpoint: Option<LogPosition>,
    batch: &[RecordedEvent],
) -> Result<LogPosition, RunError> {
    let name = projection.name();
    let failed_at = {
        let mut tx = pool.begin().await?;
        let mut failed = None;
        for (index, event) in batch.iter().enumerate() {
            if let Err(error) = projection.apply(&mut tx, event).await {
                failed = Some((index, error));
                break;
            }
        }
        match failed {
            None => {
                let last = batch[batch.len() - 1].log_position;
                if !checkpoint::advance(&mut tx, name, checkpoint, last, batch.len()).await? {
                    return Err(RunError::LostLock(name));
                }
                tx.commit().await?;
                return Ok(last);
            }
            Some(failure) => failure, // the transaction rolls back when dropped
        }
    };
    let (index, error) = failed_at;
    if matches!(&error, ApplyError::Database(db) if is_transient(db)) {
        return Err(RunError::Interrupted { name, source: error });
    }
    if index > 0 {
        // Keep the progress before the failing event.
        Box::pin(apply_batch(projection, pool, checkpoint, &batch[..index])).await?;
    }
    let event = &batch[index];
    tracing::error!(projection = name, event_id = %event.event_id, position = event.log_position.position, %error, "projection stopped");
    checkpoint::record_failure(pool, name, event.event_id, event.log_position.position, &error.to_string()).await?;
    Err(RunError::Failed { name, event_id: event.event_id, position: event.log_position.position, source: error })
}

/// Connection trouble is not the event's fault: the runner is restarted, the event retried.
fn is_transient(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}
