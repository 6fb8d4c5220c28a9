//! The relay's checkpoint (`relay_checkpoints`): the position of the last
//! event JetStream acknowledged, per stream.

use event_store::LogPosition;
use sqlx::PgPool;

/// The checkpoint of `name`, created at the start of the log if missing.
pub(crate) async fn load(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
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
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for
/// this statement's transaction; the relay writes its checkpoint hundreds of
/// times a second under load, and each flush is a disk write): a checkpoint
/// lost in a database crash only makes the relay publish its last events
/// again, which JetStream drops as duplicates (their message ids) and the
/// consumers would recognise anyway.
pub(crate) async fn advance(
    pool: &PgPool,
    name: &str,
    from: Option<LogPosition>,
    to: LogPosition,
    events: usize,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    let moved = sqlx::query(
        "WITH no_flush_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         UPDATE relay_checkpoints SET commit_id = $4, position = $5, events_published = events_published + $6, \
             updated_at = now() \
         FROM no_flush_wait \
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

/// Where the relay of `name` stands: `None` before the first event.
pub(crate) async fn position(pool: &PgPool, name: &str) -> Result<Option<LogPosition>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT commit_id, position FROM relay_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(row.and_then(|(commit, position)| {
        (position > 0).then_some(LogPosition { commit: commit as u64, position: position as u64 })
    }))
}
