//! The rebuilds of the read models (`projection_rebuilds`): asked for by the
//! admin API, run by the projections service (or `projections rebuild`),
//! with the checkpoint of their shadow tables and how far they are.

use chrono::{DateTime, Utc};
use event_store::LogPosition;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::checkpoints::position_of;

/// Asks for a rebuild of `name`. A rebuild already requested or running is
/// left as it is; one that ended (done or failed) is requested anew, with
/// nothing of the last run's progress, times or error left to show.
pub async fn request(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_rebuilds (name, state) VALUES ($1, 'requested') \
         ON CONFLICT (name) DO UPDATE SET state = 'requested', commit_id = 0, position = 0, events_done = 0, \
             events_total = 0, requested_at = now(), started_at = NULL, run_started_at = NULL, \
             run_events_from = 0, finished_at = NULL, failed_event_id = NULL, failed_position = NULL, \
             error = NULL, updated_at = now() \
         WHERE projection_rebuilds.state NOT IN ('requested', 'running')",
    )
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// The rebuilds asked for or interrupted, oldest request first.
pub async fn pending(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT name FROM projection_rebuilds WHERE state IN ('requested', 'running') ORDER BY requested_at",
    )
    .fetch_all(pool)
    .await
}

/// A rebuild's record as it was found when a run began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `requested`, `running`, `done` or `failed`.
    pub state: String,
    pub checkpoint: Option<LogPosition>,
    pub events_done: u64,
}

/// Locks the record of `name`'s rebuild (created if missing) for a run.
pub async fn lock(tx: &mut PgConnection, name: &str) -> Result<Found, sqlx::Error> {
    sqlx::query("INSERT INTO projection_rebuilds (name, state) VALUES ($1, 'requested') ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let (state, commit, position, done): (String, i64, i64, i64) = sqlx::query_as(
        "SELECT state, commit_id, position, events_done FROM projection_rebuilds WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Found { state, checkpoint: position_of(commit, position), events_done: done as u64 })
}

/// A run resumes an interrupted rebuild: its rate counts from here.
pub async fn resume(tx: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET run_started_at = now(), run_events_from = events_done, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A run starts the rebuild over, from empty shadow tables.
pub async fn start(tx: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET state = 'running', commit_id = 0, position = 0, events_done = 0, \
             events_total = 0, started_at = now(), run_started_at = now(), run_events_from = 0, \
             finished_at = NULL, failed_event_id = NULL, failed_position = NULL, error = NULL, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves the shadow tables' checkpoint from `from` to `to`, in the page's
/// transaction; `false` if it was not at `from` or the rebuild is no longer
/// running (the page must not commit).
pub async fn advance(
    tx: &mut PgConnection,
    name: &str,
    (from, to): (Option<LogPosition>, LogPosition),
    events: usize,
) -> Result<bool, sqlx::Error> {
    let from = from.unwrap_or(LogPosition::START);
    let moved: i64 = sqlx::query_scalar(
        "WITH moved AS ( \
           UPDATE projection_rebuilds \
           SET commit_id = $4, position = $5, events_done = events_done + $6, \
               events_total = greatest(events_total, events_done + $6), updated_at = now() \
           WHERE name = $1 AND commit_id = $2 AND position = $3 AND state = 'running' \
           RETURNING name) \
         SELECT count(*) FROM moved",
    )
    .bind(name)
    .bind(from.commit as i64)
    .bind(from.position as i64)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .fetch_one(&mut *tx)
    .await?;
    Ok(moved == 1)
}

/// The events left to replay, as last counted.
pub async fn set_left(pool: &PgPool, name: &str, left: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_rebuilds SET events_total = events_done + $2 WHERE name = $1")
        .bind(name)
        .bind(left as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// The rebuild stopped at an event its projection cannot apply.
pub async fn failed_at(
    pool: &PgPool,
    name: &str,
    event_id: Uuid,
    position: u64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds \
         SET state = 'failed', failed_event_id = $2, failed_position = $3, error = $4, \
             finished_at = now(), updated_at = now() \
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

/// The rebuild cannot go on (one that stopped at an event is recorded with it already).
pub async fn failed(pool: &PgPool, name: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET state = 'failed', error = $2, finished_at = now(), updated_at = now() \
         WHERE name = $1 AND state <> 'failed'",
    )
    .bind(name)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The rebuilt tables are live, having applied `events` up to `to`.
pub async fn done(tx: &mut PgConnection, name: &str, to: LogPosition, events: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_rebuilds SET state = 'done', commit_id = $2, position = $3, events_done = $4, \
             events_total = $4, finished_at = now(), updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(to.commit as i64)
    .bind(to.position as i64)
    .bind(events as i64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The latest rebuild of a projection, with the figures the CLI's progress
/// bar shows: events done of total, rate and time left.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    pub name: String,
    /// `requested`, `running`, `done` or `failed`.
    pub state: String,
    pub events_done: u64,
    pub events_total: u64,
    /// Events replayed per second by the current (or last) run.
    pub events_per_second: Option<f64>,
    /// Seconds left at that rate, while running.
    pub eta_seconds: Option<f64>,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    name: String,
    state: String,
    events_done: i64,
    events_total: i64,
    run_events_from: i64,
    requested_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    run_started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    error: Option<String>,
}

impl From<StatusRow> for RebuildStatus {
    fn from(row: StatusRow) -> Self {
        let seconds = row.run_started_at.map(|start| (row.updated_at - start).as_seconds_f64()).filter(|s| *s > 0.0);
        let events_per_second = seconds.map(|seconds| (row.events_done - row.run_events_from).max(0) as f64 / seconds);
        let eta_seconds = events_per_second
            .filter(|rate| *rate > 0.0 && row.state == "running")
            .map(|rate| (row.events_total - row.events_done).max(0) as f64 / rate);
        RebuildStatus {
            name: row.name,
            state: row.state,
            events_done: row.events_done as u64,
            events_total: row.events_total as u64,
            events_per_second,
            eta_seconds,
            requested_at: row.requested_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            error: row.error,
        }
    }
}

/// The latest rebuild of every projection that had one.
pub async fn statuses(pool: &PgPool) -> Result<Vec<RebuildStatus>, sqlx::Error> {
    let rows: Vec<StatusRow> = sqlx::query_as(
        "SELECT name, state, events_done, events_total, run_events_from, requested_at, started_at, run_started_at, \
                finished_at, updated_at, error \
         FROM projection_rebuilds ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(RebuildStatus::from).collect())
}
