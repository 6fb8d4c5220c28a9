//! Where each projection stands: `projection_checkpoints` for the live
//! tables, `projection_rebuilds` for a rebuild's shadow tables; and why it
//! stopped if it failed.

use event_store::LogPosition;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Which tables a batch writes, and so which checkpoint moves with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The live tables in `public`; checkpoint in `projection_checkpoints`.
    Live,
    /// A rebuild's shadow tables in schema `rebuild_<name>`; checkpoint in `projection_rebuilds`.
    Shadow,
}

pub(crate) fn position_of(commit: i64, position: i64) -> Option<LogPosition> {
    (position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 })
}

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
    Ok(position_of(commit, position))
}

/// Moves the checkpoint from `from` to `to`, in the batch's transaction (and
/// if `wrote`, notifies). `false` if it was not at `from`: something else
/// moved it (another instance, or a rebuild swapped in), and this batch must
/// not commit.
pub(crate) async fn advance(
    tx: &mut PgConnection,
    target: Target,
    name: &str,
    (from, to): (Option<LogPosition>, LogPosition),
    events: usize,
    wrote: bool,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    // A live move that wrote rows wakes the queries waiting for
    // `min_position` (query-side/src/progress.rs) when it commits; the
    // payload is `<name> <commit> <position>`. A batch that wrote nothing
    // does not notify: NOTIFY serialises commits, and a query waiting for an
    // event its read model ignores is rare (its poll finds the checkpoint).
    let sql = match target {
        Target::Live => {
            "WITH moved AS ( \
               UPDATE projection_checkpoints \
               SET commit_id = $4, position = $5, events_processed = events_processed + $6, \
                   state = 'running', failed_event_id = NULL, failed_position = NULL, error = NULL, \
                   updated_at = now() \
               WHERE name = $1 AND commit_id = $2 AND position = $3 \
               RETURNING name) \
             SELECT count(*) FROM moved \
             LEFT JOIN LATERAL (SELECT pg_notify('projection_progress', concat_ws(' ', $1, $4, $5)) \
                                WHERE $7) notified ON true"
        }
        Target::Shadow => {
            "WITH moved AS ( \
               UPDATE projection_rebuilds \
               SET commit_id = $4, position = $5, events_done = events_done + $6, \
                   events_total = greatest(events_total, events_done + $6), updated_at = now() \
               WHERE name = $1 AND commit_id = $2 AND position = $3 AND state = 'running' \
               RETURNING name) \
             SELECT count(*) FROM moved"
        }
    };
    let query = sqlx::query_scalar(sql)
        .bind(name)
        .bind(from.commit as i64)
        .bind(from.position as i64)
        .bind(to.commit as i64)
        .bind(to.position as i64)
        .bind(events as i64);
    let query = if target == Target::Live { query.bind(wrote) } else { query };
    let moved: i64 = query.fetch_one(&mut *tx).await?;
    Ok(moved == 1)
}

/// Records that `name` stopped at an event it cannot apply.
pub(crate) async fn record_failure(
    pool: &PgPool,
    target: Target,
    name: &str,
    event_id: Uuid,
    position: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    let sql = match target {
        Target::Live => {
            "UPDATE projection_checkpoints \
             SET state = 'failed', failed_event_id = $2, failed_position = $3, error = $4, updated_at = now() \
             WHERE name = $1"
        }
        Target::Shadow => {
            "UPDATE projection_rebuilds \
             SET state = 'failed', failed_event_id = $2, failed_position = $3, error = $4, \
                 finished_at = now(), updated_at = now() \
             WHERE name = $1"
        }
    };
    sqlx::query(sql).bind(name).bind(event_id).bind(position as i64).bind(error).execute(pool).await?;
    Ok(())
}

/// The live checkpoint's state: `running`, or `failed` until a rebuild or a restart.
pub(crate) async fn state(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM projection_checkpoints WHERE name = $1").bind(name).fetch_optional(pool).await
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
        checkpoint: position_of(commit, position),
        events_processed: applied as u64,
        state,
        failure: error.map(|e| serde_json::json!({"event_id": event_id, "position": failed_position, "error": e})),
    }))
}
