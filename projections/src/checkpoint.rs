//! The `projection_checkpoints` table: where each projection stands, and why
//! it stopped if it failed.

use event_store::LogPosition;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub(crate) async fn load(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let (commit, position): (i64, i64) =
        sqlx::query_as("SELECT commit_id, position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?;
    Ok((position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 }))
}

/// Moves the checkpoint from `from` to `to`, in the batch's transaction.
/// `false` if it was not at `from`: another instance moved it, and this one
/// must stop (its lock was lost).
pub(crate) async fn advance(
    tx: &mut PgConnection,
    name: &str,
    from: Option<LogPosition>,
    to: LogPosition,
    events: usize,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    let moved = sqlx::query(
        "UPDATE projection_checkpoints \
         SET commit_id = $4, position = $5, events_processed = events_processed + $6, \
             state = 'running', failed_event_id = NULL, failed_position = NULL, error = NULL, updated_at = now() \
         WHERE name = $1 AND commit_id = $2 AND position = $3",
    )
    .bind(name)
    .bind(from.commit as i64)
    .bind(from.position as i64)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .execute(&mut *tx)
    .await?;
    // Wakes queries waiting for `min_position` (query-side/src/progress.rs) when this commits.
    sqlx::query("SELECT pg_notify('projection_progress', $1)").bind(name).execute(&mut *tx).await?;
    Ok(moved.rows_affected() == 1)
}

pub(crate) async fn record_failure(
    pool: &PgPool,
    name: &str,
    event_id: Uuid,
    position: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_checkpoints \
         SET state = 'failed', failed_event_id = $2, failed_position = $3, error = $4, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(event_id)
    .bind(position as i64)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a projection stands, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub checkpoint: Option<LogPosition>,
    pub events_processed: u64,
    pub state: String,
    pub failure: Option<Value>,
}

pub async fn status(pool: &PgPool, name: &str) -> Result<Option<ProjectionStatus>, sqlx::Error> {
    type Row = (i64, i64, i64, String, Option<Uuid>, Option<i64>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT commit_id, position, events_processed, state, failed_event_id, failed_position, error \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(commit, position, applied, state, event_id, failed_position, error)| ProjectionStatus {
        name: name.to_owned(),
        checkpoint: (position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 }),
        events_processed: applied as u64,
        state,
        failure: error.map(|e| serde_json::json!({"event_id": event_id, "position": failed_position, "error": e})),
    }))
}
