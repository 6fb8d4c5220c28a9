//! Where each projection stands (`projection_checkpoints`): the position of
//! the last event its live tables applied, how many it processed, and why
//! it stopped if it failed. The runtime moves a checkpoint in the same
//! transaction as the batch's writes; the query API reads them for
//! read-your-writes (`min_position`) and the admin API.

use chrono::{DateTime, Utc};
use event_store::LogPosition;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The NOTIFY channel of a live checkpoint that moved past events it wrote
/// (payload `<name> <commit> <position>`): queries waiting for a position
/// listen to it.
pub const PROGRESS_CHANNEL: &str = "projection_progress";

/// A stored `(commit, position)`: `None` before the first event.
pub fn position_of(commit: i64, position: i64) -> Option<LogPosition> {
    (position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 })
}

/// The checkpoint of `name`, created at the start of the log if missing.
pub async fn load(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(pool)
        .await?;
    let (commit, position): (i64, i64) =
        sqlx::query_as("SELECT commit_id, position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?;
    Ok(position_of(commit, position))
}

/// Moves the checkpoint from `from` to `to`, in the batch's transaction (and
/// if `wrote`, notifies). `false` if it was not at `from`: something else
/// moved it (another instance, or a rebuild swapped in), and this batch must
/// not commit.
pub async fn advance(
    tx: &mut PgConnection,
    name: &str,
    (from, to): (Option<LogPosition>, LogPosition),
    events: usize,
    wrote: bool,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    // A move that wrote rows wakes the queries waiting for `min_position`
    // when it commits. A batch that wrote nothing does not notify: NOTIFY
    // serialises commits, and a query waiting for an event its read model
    // ignores is rare (its poll finds the checkpoint).
    let moved: i64 = sqlx::query_scalar(
        "WITH moved AS ( \
           UPDATE projection_checkpoints \
           SET commit_id = $4, position = $5, events_processed = events_processed + $6, \
               state = 'running', failed_event_id = NULL, failed_position = NULL, error = NULL, \
               updated_at = now() \
           WHERE name = $1 AND commit_id = $2 AND position = $3 \
           RETURNING name) \
         SELECT count(*) FROM moved \
         LEFT JOIN LATERAL (SELECT pg_notify('projection_progress', concat_ws(' ', $1, $4, $5)) \
                            WHERE $7) notified ON true",
    )
    .bind(name)
    .bind(from.commit as i64)
    .bind(from.position as i64)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .bind(wrote)
    .fetch_one(&mut *tx)
    .await?;
    Ok(moved == 1)
}

/// Records that `name` stopped at an event it cannot apply.
pub async fn record_failure(
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

/// The live checkpoint's state: `running`, or `failed` until a rebuild or a restart.
pub async fn state(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM projection_checkpoints WHERE name = $1").bind(name).fetch_optional(pool).await
}

/// Locks the checkpoint of `name` for a rebuild's swap (the live runner cannot
/// move it meanwhile) and answers where it is.
pub async fn lock(tx: &mut PgConnection, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let (commit, position): (i64, i64) =
        sqlx::query_as("SELECT commit_id, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    Ok(position_of(commit, position))
}

/// Hands the checkpoint of `name` to rebuilt tables that applied `events` up
/// to `to`: running again, and the queries waiting for a position hear of it.
pub async fn take_over(tx: &mut PgConnection, name: &str, to: LogPosition, events: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH live AS ( \
           UPDATE projection_checkpoints SET commit_id = $2, position = $3, events_processed = $4, \
               state = 'running', failed_event_id = NULL, failed_position = NULL, error = NULL, \
               updated_at = now() \
           WHERE name = $1) \
         SELECT pg_notify('projection_progress', concat_ws(' ', $1, $2, $3))",
    )
    .bind(name)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether `name` has applied the event at `at`.
pub async fn reached(pool: &PgPool, name: &str, at: LogPosition) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM projection_checkpoints WHERE name = $1 AND (commit_id, position) >= ($2, $3))",
    )
    .bind(name)
    .bind(i64::try_from(at.commit).unwrap_or(i64::MAX))
    .bind(i64::try_from(at.position).unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await
}

/// Where `name` stands: `None` before its first event.
pub async fn position(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT commit_id, position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(commit, position)| position_of(commit, position)))
}

/// Where every projection stands (one query for all of them).
pub async fn all_positions(pool: &PgPool) -> Result<Vec<(String, Option<LogPosition>)>, sqlx::Error> {
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT name, commit_id, position FROM projection_checkpoints").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(name, commit, position)| (name, position_of(commit, position))).collect())
}

/// Where a projection stands, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub checkpoint: Option<LogPosition>,
    pub events_processed: u64,
    /// `running`, `failed`, or `not started`.
    pub state: String,
    /// The event it stopped at, its position and the error, if it failed.
    pub failure: Option<Value>,
    pub updated_at: Option<DateTime<Utc>>,
}

type StatusRow = (String, i64, i64, i64, String, Option<Uuid>, Option<i64>, Option<String>, Option<DateTime<Utc>>);

fn status_of(row: StatusRow) -> ProjectionStatus {
    let (name, commit, position, applied, state, event_id, failed_position, error, updated_at) = row;
    ProjectionStatus {
        name,
        checkpoint: position_of(commit, position),
        events_processed: applied as u64,
        state,
        failure: error.map(|e| serde_json::json!({"event_id": event_id, "position": failed_position, "error": e})),
        updated_at,
    }
}

/// Where `name` stands; `None` if it never started.
pub async fn status(pool: &PgPool, name: &str) -> Result<Option<ProjectionStatus>, sqlx::Error> {
    let row: Option<StatusRow> = sqlx::query_as(
        "SELECT name, commit_id, position, events_processed, state, failed_event_id, failed_position, error, \
                updated_at \
         FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(status_of))
}

/// Where each of `names` stands, in name order (`not started` for one without a checkpoint).
pub async fn statuses(pool: &PgPool, names: &[&str]) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT p.name, coalesce(c.commit_id, 0), coalesce(c.position, 0), coalesce(c.events_processed, 0), \
                coalesce(c.state, 'not started'), c.failed_event_id, c.failed_position, c.error, c.updated_at \
         FROM unnest($1::text[]) AS p(name) LEFT JOIN projection_checkpoints c USING (name) \
         ORDER BY p.name",
    )
    .bind(names)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(status_of).collect())
}
