//! The SQL of the PostgreSQL event store, beside the code that runs it.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{AppendResult, ExpectedVersion, LogPosition, LogStats, Metadata, NewEvent, RecordedEvent, StoreError};

const EVENT_COLUMNS: &str = "position, transaction_id::text::bigint AS commit_id, event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, recorded_at";

/// The outcome of `es_append`.
pub(super) enum Appended {
    Done(AppendResult),
    Conflict {
        actual: u64,
    },
    /// Some event ids are stored already; nothing was written.
    Duplicate,
}

/// `es_append`'s answer: result, new version, transaction id, last position.
type AppendRow = (String, Option<i64>, Option<i64>, Option<i64>);

pub(super) async fn append(
    executor: impl sqlx::PgExecutor<'_>,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Appended, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.event_id);
        types.push(event.event_type.as_str());
        versions.push(i32::from(event.schema_version));
        payloads.push(Json(&event.payload));
        metadata.push(Json(&event.metadata));
    }
    let expected = expected.required().map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let row: Result<AppendRow, _> = sqlx::query_as(
        "SELECT result, new_version, commit_id, last_position FROM es_append($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(stream_id)
    .bind(expected)
    .bind(&ids)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_one(executor)
    .await;
    match row {
        Ok((result, version, commit, position)) => match (result.as_str(), version, commit, position) {
            ("appended", Some(version), Some(commit), Some(position)) => Ok(Appended::Done(AppendResult {
                stream_version: version as u64,
                log_position: LogPosition { commit: commit as u64, position: position as u64 },
            })),
            ("conflict", Some(actual), _, _) => Ok(Appended::Conflict { actual: actual as u64 }),
            ("duplicate", _, _, _) => Ok(Appended::Duplicate),
            other => Err(StoreError::Backend(format!("es_append answered {other:?}").into())),
        },
        // Two appends with the same new ids raced past the duplicate check.
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("es_events_event_id_key") => Ok(Appended::Duplicate),
        Err(error) => Err(error.into()),
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    commit_id: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i32,
    payload: Json<serde_json::Value>,
    metadata: Json<Metadata>,
    recorded_at: DateTime<Utc>,
}

impl From<EventRow> for RecordedEvent {
    fn from(row: EventRow) -> Self {
        RecordedEvent {
            log_position: LogPosition { commit: row.commit_id as u64, position: row.position as u64 },
            event_id: row.event_id,
            stream_id: row.stream_id,
            stream_version: row.stream_version as u64,
            event_type: row.event_type,
            // The column is written only from a u16.
            schema_version: u16::try_from(row.schema_version).unwrap_or(u16::MAX),
            payload: row.payload.0,
            metadata: row.metadata.0,
            recorded_at: row.recorded_at,
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) async fn events_by_id(
    executor: impl sqlx::PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM es_events WHERE event_id = ANY($1)");
    let rows: Vec<EventRow> = sqlx::query_as(&sql).bind(ids).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub(super) async fn read_stream(
    pool: &PgPool,
    stream_id: &str,
    from_version: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
    );
    let rows: Vec<EventRow> = sqlx::query_as(&sql).bind(stream_id).bind(to_i64(from_version)).fetch_all(pool).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub(super) async fn read_all(
    pool: &PgPool,
    after: Option<LogPosition>,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let after = after.unwrap_or(LogPosition::START);
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM es_events \
         WHERE (transaction_id, position) > ($1::text::xid8, $2) \
           AND transaction_id < (SELECT es_read_horizon()) \
         ORDER BY transaction_id, position \
         LIMIT $3"
    );
    let rows: Vec<EventRow> = sqlx::query_as(&sql)
        .bind(after.commit.to_string())
        .bind(to_i64(after.position))
        .bind(to_i64(limit as u64))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Whether committed events exist after `after`, readable or not.
pub(super) async fn anything_after(pool: &PgPool, after: Option<LogPosition>) -> Result<bool, StoreError> {
    let after = after.unwrap_or(LogPosition::START);
    let found: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM es_events WHERE (transaction_id, position) > ($1::text::xid8, $2))",
    )
    .bind(after.commit.to_string())
    .bind(to_i64(after.position))
    .fetch_one(pool)
    .await?;
    Ok(found)
}

pub(super) async fn stats(pool: &PgPool) -> Result<LogStats, StoreError> {
    let (held_back, commit, position): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "WITH horizon AS MATERIALIZED (SELECT es_read_horizon() AS xmin) \
         SELECT \
           (SELECT count(*) FROM es_events, horizon WHERE transaction_id >= horizon.xmin), \
           head.commit_id, head.position \
         FROM horizon LEFT JOIN LATERAL ( \
           SELECT transaction_id::text::bigint AS commit_id, position FROM es_events \
           WHERE transaction_id < horizon.xmin ORDER BY transaction_id DESC, position DESC LIMIT 1 \
         ) head ON true",
    )
    .fetch_one(pool)
    .await?;
    let readable_head = commit.zip(position).map(|(c, p)| LogPosition { commit: c as u64, position: p as u64 });
    Ok(LogStats { readable_head, held_back_events: held_back as u64 })
}
