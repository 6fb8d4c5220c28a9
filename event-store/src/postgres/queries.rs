//! The SQL of the PostgreSQL event store, beside the code that runs it.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    subscription::Page, AppendResult, ExpectedVersion, HorizonBlocker, LogPosition, LogStats, Metadata, NewEvent,
    RecordedEvent, Snapshot, StoreError,
};

const EVENT_COLUMNS: &str = "position, transaction_id::text::bigint AS commit_id, event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, recorded_at";

/// The outcome of one append statement.
pub(super) enum Appended {
    Done(AppendResult),
    /// Nothing was written: a racing append took the same version first, or
    /// an event id is stored already. [`explain_rejection`] tells which.
    Rejected,
    /// Nothing was written: the stream was at this version, not the
    /// expected one (and no event id is stored). The statement tells this itself.
    Stale(u64),
}

/// The append, one statement: read the stream's version from the unique
/// index, and insert the events at the following versions if it is the
/// expected one (`$2` NULL: any). A racing append that read the same version
/// fails on `es_events_stream_version_key`; one whose event ids are stored
/// fails on `es_events_event_id_key`. Either way nothing is written. An
/// append left out because the stream was at another version, none of its
/// event ids stored, answers the stream's version (its position and commit
/// NULL), so its caller need not ask; the probe of the ids runs only then.
const APPEND_MANY: &str = "
WITH current AS (
    SELECT coalesce(max(stream_version), 0) AS version FROM es_events WHERE stream_id = $1
), inserted AS (
    INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, $1, current.version + e.ord, e.event_type, e.schema_version, e.payload, e.metadata
    FROM current,
         unnest($3::uuid[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[])
             WITH ORDINALITY AS e (event_id, event_type, schema_version, payload, metadata, ord)
    WHERE $2::bigint IS NULL OR current.version = $2
    ORDER BY e.ord
    RETURNING position, stream_version
)
SELECT max(stream_version), max(position), pg_current_xact_id()::text::bigint
FROM inserted HAVING count(*) > 0
UNION ALL
SELECT current.version, NULL, NULL FROM current
WHERE NOT EXISTS (SELECT FROM inserted) AND NOT EXISTS (SELECT FROM es_events WHERE event_id = ANY($3))";

/// The same for the most common case, one event, without arrays.
const APPEND_ONE: &str = "
WITH current AS (
    SELECT coalesce(max(stream_version), 0) AS version FROM es_events WHERE stream_id = $1
), inserted AS (
    INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
    SELECT $3, $1, current.version + 1, $4, $5, $6, $7
    FROM current
    WHERE $2::bigint IS NULL OR current.version = $2
    RETURNING position, stream_version, transaction_id
)
SELECT stream_version, position, transaction_id::text::bigint FROM inserted
UNION ALL
SELECT current.version, NULL, NULL FROM current
WHERE NOT EXISTS (SELECT FROM inserted) AND NOT EXISTS (SELECT FROM es_events WHERE event_id = $3)";

pub(super) async fn append(
    executor: impl sqlx::PgExecutor<'_>,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Appended, StoreError> {
    let expected = expected.required().map(to_i64);
    // The stream's version, and the position and commit of what was written (none: left out).
    type Row = (i64, Option<i64>, Option<i64>);
    let row: Result<Option<Row>, _> = if let [event] = events {
        sqlx::query_as(APPEND_ONE)
            .bind(stream_id)
            .bind(expected)
            .bind(event.event_id)
            .bind(&event.event_type)
            .bind(i32::from(event.schema_version))
            .bind(Json(&event.payload))
            .bind(Json(&event.metadata))
            .fetch_optional(executor)
            .await
    } else {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let versions: Vec<i32> = events.iter().map(|e| i32::from(e.schema_version)).collect();
        let payloads: Vec<_> = events.iter().map(|e| Json(&e.payload)).collect();
        let metadata: Vec<_> = events.iter().map(|e| Json(&e.metadata)).collect();
        sqlx::query_as(APPEND_MANY)
            .bind(stream_id)
            .bind(expected)
            .bind(&ids)
            .bind(&types)
            .bind(&versions)
            .bind(&payloads)
            .bind(&metadata)
            .fetch_optional(executor)
            .await
    };
    match row {
        Ok(Some((version, Some(position), Some(commit)))) => Ok(Appended::Done(AppendResult {
            stream_version: version as u64,
            log_position: LogPosition { commit: commit as u64, position: position as u64 },
        })),
        Ok(Some((version, _, _))) => Ok(Appended::Stale(version as u64)),
        Ok(None) => Ok(Appended::Rejected),
        Err(error) if is_append_race(&error) => Ok(Appended::Rejected),
        Err(error) => Err(error.into()),
    }
}

/// One append of a batch (see `group.rs`).
pub(super) struct BatchAppend<'a> {
    pub stream_id: &'a str,
    pub expected: ExpectedVersion,
    pub events: &'a [NewEvent],
}

/// Many appends to distinct streams (the caller makes sure), one statement: each is written if its
/// stream is at its expected version (`NULL`: any) and none of its event ids
/// is stored, else left out; nothing of an append is written unless all of
/// it is. Events are numbered by append (`$4`) and by their place in it
/// (`$5`), and are inserted, and take positions, in that order, which
/// [`append_batch`] makes the order of the streams' ids: a row that meets
/// another transaction's uncommitted row at the same version waits for that
/// transaction, and two batches of two processes inserting the same streams
/// in opposite orders would wait for each other until PostgreSQL's deadlock
/// check (a second) aborted one, holding the log back all the while. In one
/// order, one of them finds the other's row first and waits for its commit
/// only. Rows come back for the written appends (with their last version,
/// position and commit) and for those left out because their stream had
/// moved on (with its version; none for one with a stored event id).
///
/// The streams' versions and the stored ids are probed through their unique
/// indexes, one lookup each, as scalar subqueries the planner cannot turn
/// into joins (`the_batch_append_probes_each_stream_and_event_once` holds it to that:
/// an anti-join of appends with events probed every event for every append,
/// 1.5 ms for a batch of fifty; a semi-join planned on an empty table scans
/// the whole table).
const APPEND_BATCH: &str = "
WITH appends AS MATERIALIZED (
    SELECT a.append_no, a.stream_id, a.expected,
           (SELECT coalesce(max(s.stream_version), 0) FROM es_events s WHERE s.stream_id = a.stream_id) AS version
    FROM unnest($1::int[], $2::text[], $3::bigint[]) AS a (append_no, stream_id, expected)
), events AS MATERIALIZED (
    SELECT e.*, (SELECT true FROM es_events s WHERE s.event_id = e.event_id) AS stored
    FROM unnest($4::int[], $5::int[], $6::uuid[], $7::text[], $8::int[], $9::jsonb[], $10::jsonb[])
        AS e (append_no, ord, event_id, event_type, schema_version, payload, metadata)
), accepted AS MATERIALIZED (
    SELECT a.* FROM appends a
    WHERE (a.expected IS NULL OR a.version = a.expected)
      AND a.append_no NOT IN (SELECT e.append_no FROM events e WHERE e.stored)
), inserted AS (
    INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, a.stream_id, a.version + e.ord, e.event_type, e.schema_version, e.payload, e.metadata
    FROM accepted a JOIN events e ON e.append_no = a.append_no
    ORDER BY e.append_no, e.ord
    RETURNING stream_id, stream_version, position, transaction_id
)
SELECT stream_id, max(stream_version), max(position), max(transaction_id::text::bigint)
FROM inserted
GROUP BY stream_id
UNION ALL
SELECT a.stream_id, a.version, NULL, NULL
FROM appends a
WHERE a.append_no NOT IN (SELECT append_no FROM accepted)
  AND a.append_no NOT IN (SELECT e.append_no FROM events e WHERE e.stored)";

/// Writes a batch ([`APPEND_BATCH`]): each append's outcome in the batch's
/// order, or `None` when a racing transaction made the statement fail on a
/// unique index, or in a deadlock (then nothing was written). An append left
/// out because its stream had moved on comes back with the stream's
/// version, so its caller need not ask (under contention, as with several
/// saga instances on the same items, about one append an order).
pub(super) async fn append_batch(
    executor: impl sqlx::PgExecutor<'_>,
    appends: &[BatchAppend<'_>],
) -> Result<Option<Vec<Appended>>, StoreError> {
    // Written in the order of their streams' ids, every process's batches alike.
    let mut sorted: Vec<&BatchAppend<'_>> = appends.iter().collect();
    sorted.sort_unstable_by_key(|a| a.stream_id);
    let numbers: Vec<i32> = (0..sorted.len() as i32).collect();
    let streams: Vec<&str> = sorted.iter().map(|a| a.stream_id).collect();
    let expected: Vec<Option<i64>> = sorted.iter().map(|a| a.expected.required().map(to_i64)).collect();
    let events =
        || sorted.iter().enumerate().flat_map(|(n, a)| a.events.iter().enumerate().map(move |(i, e)| (n, i, e)));
    let event_appends: Vec<i32> = events().map(|(n, _, _)| n as i32).collect();
    let ordinals: Vec<i32> = events().map(|(_, i, _)| i as i32 + 1).collect();
    let ids: Vec<Uuid> = events().map(|(_, _, e)| e.event_id).collect();
    let types: Vec<&str> = events().map(|(_, _, e)| e.event_type.as_str()).collect();
    let versions: Vec<i32> = events().map(|(_, _, e)| i32::from(e.schema_version)).collect();
    let payloads: Vec<_> = events().map(|(_, _, e)| Json(&e.payload)).collect();
    let metadata: Vec<_> = events().map(|(_, _, e)| Json(&e.metadata)).collect();
    // Per stream: its version, and the position and commit of what was written (none: left out).
    type Row = (String, i64, Option<i64>, Option<i64>);
    let rows: Result<Vec<Row>, _> = sqlx::query_as(APPEND_BATCH)
        .bind(&numbers)
        .bind(&streams)
        .bind(&expected)
        .bind(&event_appends)
        .bind(&ordinals)
        .bind(&ids)
        .bind(&types)
        .bind(&versions)
        .bind(&payloads)
        .bind(&metadata)
        .fetch_all(executor)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) if is_append_race(&error) || is_deadlock(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    // A batch holds one append per stream: the stream tells which.
    let mut outcomes: Vec<Appended> = appends.iter().map(|_| Appended::Rejected).collect();
    let by_stream: std::collections::HashMap<&str, usize> =
        appends.iter().enumerate().map(|(n, a)| (a.stream_id, n)).collect();
    for (stream_id, version, position, commit) in rows {
        let Some(&number) = by_stream.get(stream_id.as_str()) else { continue };
        outcomes[number] = match (position, commit) {
            (Some(position), Some(commit)) => Appended::Done(AppendResult {
                stream_version: version as u64,
                log_position: LogPosition { commit: commit as u64, position: position as u64 },
            }),
            _ => Appended::Stale(version as u64),
        };
    }
    Ok(Some(outcomes))
}

/// A unique index refused the write: a racing append took the version, or the event id is stored.
fn is_append_race(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if matches!(db.constraint(), Some("es_events_event_id_key" | "es_events_stream_version_key")))
}

/// PostgreSQL aborted the statement to break a deadlock (with a transaction
/// that inserts the same streams in another order than a batch does): nothing
/// was written.
fn is_deadlock(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}

/// Why an append wrote nothing.
pub(super) enum Rejection {
    /// Some of its event ids are stored: these are the stored events.
    Stored(Vec<RecordedEvent>),
    /// The stream is at this version now.
    Version(u64),
}

pub(super) async fn explain_rejection(
    conn: &mut sqlx::PgConnection,
    stream_id: &str,
    events: &[NewEvent],
) -> Result<Rejection, StoreError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let stored = events_by_id(&mut *conn, &ids).await?;
    if !stored.is_empty() {
        return Ok(Rejection::Stored(stored));
    }
    let version: i64 =
        sqlx::query_scalar("SELECT coalesce(max(stream_version), 0) FROM es_events WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Rejection::Version(version as u64))
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
    // Not a prepared statement: a generic plan of `= ANY($1)` made while the
    // table was small would scan the whole table once it is large.
    let rows: Vec<EventRow> = sqlx::query_as(&sql).bind(ids).persistent(false).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub(super) async fn read_stream(
    executor: impl sqlx::PgExecutor<'_>,
    stream_id: &str,
    from_version: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
    );
    let rows: Vec<EventRow> =
        sqlx::query_as(&sql).bind(stream_id).bind(to_i64(from_version)).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub(super) async fn read_stream_page(
    executor: impl sqlx::PgExecutor<'_>,
    stream_id: &str,
    from_version: u64,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM es_events WHERE stream_id = $1 AND stream_version >= $2
         ORDER BY stream_version LIMIT $3"
    );
    let rows: Vec<EventRow> = sqlx::query_as(&sql)
        .bind(stream_id)
        .bind(to_i64(from_version))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

// The queries that follow the log run thousands of times a second, as
// prepared statements: PostgreSQL soon plans them once for any parameters
// (a generic plan). Each is written so that even that plan walks the
// `(transaction_id, position)` index from the reader's position, never the
// whole table; `the_log_queries_never_scan_the_whole_table` holds them to it.

/// A page of the log up to `es_read_horizon()`: exactly the oldest
/// transaction open in this database (for `read_all`: what was committed is
/// there to read).
static READ_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {EVENT_COLUMNS} FROM es_events \
         WHERE (transaction_id, position) > ($1::text::xid8, $2) \
           AND transaction_id < (SELECT es_read_horizon()) \
         ORDER BY transaction_id, position \
         LIMIT $3"
    )
});

/// A subscriber's page, one statement: up to `$3` events after its position
/// and below `es_follow_horizon()` (the same as `es_read_horizon()` for
/// transactions of this database, but one of another database that holds
/// events back is only looked up once it has done so for 50 ms: the lookup is
/// dear under load, see its migration), and beside them the first committed
/// event at or above that horizon, if any, marked `held_back`: it tells the
/// subscriber to poll soon rather than wait for a wake-up, without a second
/// statement. That probe starts its index walk at the later of the position
/// and the horizon, so it never walks the readable events again (`ORDER BY
/// ... LIMIT 1`, not `EXISTS`: PostgreSQL drops the order and limit inside
/// an `EXISTS`, and its generic plan is then a sequential scan).
static FOLLOW_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH horizon AS MATERIALIZED (SELECT es_follow_horizon() AS xmin) \
         (SELECT {EVENT_COLUMNS}, false AS held_back FROM es_events \
          WHERE (transaction_id, position) > ($1::text::xid8, $2) \
            AND transaction_id < (SELECT xmin FROM horizon) \
          ORDER BY transaction_id, position \
          LIMIT $3) \
         UNION ALL \
         (SELECT {EVENT_COLUMNS}, true FROM es_events \
          WHERE (transaction_id, position) > ( \
              (SELECT greatest($1::text::xid8, xmin) FROM horizon), \
              (SELECT CASE WHEN $1::text::xid8 >= xmin THEN $2 ELSE 0 END FROM horizon)) \
          ORDER BY transaction_id, position \
          LIMIT 1)"
    )
});

const LOCATE: &str = "SELECT transaction_id::text::bigint FROM es_events \
     WHERE position = $1 AND transaction_id < (SELECT es_read_horizon())";

const COUNT_AFTER: &str = "SELECT count(*) FROM ( \
       SELECT 1 FROM es_events \
       WHERE (transaction_id, position) > ($1::text::xid8, $2) \
         AND transaction_id < (SELECT es_read_horizon()) \
       ORDER BY transaction_id, position \
       LIMIT $3) AS counted";

pub(super) async fn read_all(
    executor: impl sqlx::PgExecutor<'_>,
    after: Option<LogPosition>,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let after = after.unwrap_or(LogPosition::START);
    let rows: Vec<EventRow> = sqlx::query_as(&READ_ALL)
        .bind(after.commit.to_string())
        .bind(to_i64(after.position))
        .bind(to_i64(limit as u64))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

#[derive(sqlx::FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    event: EventRow,
    held_back: bool,
}

/// A subscriber's page ([`FOLLOW_PAGE`]).
pub(super) async fn follow_page(
    executor: impl sqlx::PgExecutor<'_>,
    after: Option<LogPosition>,
    limit: usize,
) -> Result<Page, StoreError> {
    let after = after.unwrap_or(LogPosition::START);
    let rows: Vec<PageRow> = sqlx::query_as(&FOLLOW_PAGE)
        .bind(after.commit.to_string())
        .bind(to_i64(after.position))
        .bind(to_i64(limit as u64))
        .fetch_all(executor)
        .await?;
    let held_back = rows.iter().any(|row| row.held_back);
    let events = rows.into_iter().filter(|row| !row.held_back).map(|row| row.event.into()).collect();
    Ok(Page { events, held_back })
}

/// The log position of the event at global `position`, if it is readable.
pub(super) async fn locate(pool: &PgPool, position: u64) -> Result<Option<LogPosition>, StoreError> {
    let commit: Option<i64> = sqlx::query_scalar(LOCATE).bind(to_i64(position)).fetch_optional(pool).await?;
    Ok(commit.map(|commit| LogPosition { commit: commit as u64, position }))
}

/// How many readable events follow `after`, at most `at_most`.
pub(super) async fn count_after(pool: &PgPool, after: Option<LogPosition>, at_most: u64) -> Result<u64, StoreError> {
    let after = after.unwrap_or(LogPosition::START);
    let count: i64 = sqlx::query_scalar(COUNT_AFTER)
        .bind(after.commit.to_string())
        .bind(to_i64(after.position))
        .bind(to_i64(at_most))
        .fetch_one(pool)
        .await?;
    Ok(count as u64)
}

/// The readable head, the events held back behind the horizon (how many,
/// since when), and the transaction that holds it: an open transaction of
/// this database whose xid is the horizon, or a prepared one (the functions
/// behind `pg_stat_activity` and `pg_prepared_xacts`, without the views'
/// joins on the catalogs).
const STATS: &str = "WITH horizon AS MATERIALIZED (SELECT es_read_horizon() AS xmin), \
     held AS MATERIALIZED ( \
       SELECT count(*) AS events, \
              coalesce(extract(epoch FROM clock_timestamp() - min(recorded_at)) * 1000, 0)::bigint AS waited_ms \
       FROM es_events, horizon WHERE transaction_id >= horizon.xmin) \
     SELECT held.events, held.waited_ms, head.commit_id, head.position, \
            blocker.pid, blocker.open_ms, blocker.prepared \
     FROM horizon CROSS JOIN held LEFT JOIN LATERAL ( \
       SELECT transaction_id::text::bigint AS commit_id, position FROM es_events \
       WHERE transaction_id < horizon.xmin ORDER BY transaction_id DESC, position DESC LIMIT 1 \
     ) head ON true LEFT JOIN LATERAL ( \
       SELECT a.pid, (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::bigint AS open_ms, \
              false AS prepared \
       FROM pg_stat_get_activity(NULL) a \
       WHERE held.events > 0 AND a.backend_xid::text::bigint = horizon.xmin::text::bigint % 4294967296 \
       UNION ALL \
       SELECT 0, (extract(epoch FROM clock_timestamp() - p.prepared) * 1000)::bigint, true \
       FROM pg_prepared_xact() p \
       WHERE held.events > 0 AND p.transaction::text::bigint = horizon.xmin::text::bigint % 4294967296 \
       LIMIT 1 \
     ) blocker ON true";

pub(super) async fn stats(pool: &PgPool) -> Result<LogStats, StoreError> {
    type Row = (i64, i64, Option<i64>, Option<i64>, Option<i32>, Option<i64>, Option<bool>);
    let (held_back, waited_ms, commit, position, pid, open_ms, prepared): Row =
        sqlx::query_as(STATS).fetch_one(pool).await?;
    let readable_head = commit.zip(position).map(|(c, p)| LogPosition { commit: c as u64, position: p as u64 });
    let blocker = pid.zip(open_ms).map(|(pid, open_ms)| HorizonBlocker {
        pid: pid.max(0) as u32,
        open_ms: open_ms.max(0) as u64,
        prepared: prepared.unwrap_or(false),
    });
    Ok(LogStats { readable_head, held_back_events: held_back as u64, held_back_ms: waited_ms.max(0) as u64, blocker })
}

pub(super) async fn read_snapshot(
    executor: impl sqlx::PgExecutor<'_>,
    stream_id: &str,
) -> Result<Option<Snapshot>, StoreError> {
    let row: Option<(i64, i64, i32, serde_json::Value)> =
        sqlx::query_as("SELECT stream_version, position, schema_version, state FROM es_snapshots WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(|(stream_version, position, schema_version, state)| Snapshot {
        stream_id: stream_id.to_owned(),
        stream_version: stream_version as u64,
        position: position as u64,
        schema_version: schema_version as u32,
        state,
    }))
}

/// Keeps the snapshot unless a later one of the same schema is kept (see
/// `snapshot::replaces`): one row per stream.
pub(super) async fn write_snapshot(pool: &PgPool, snapshot: &Snapshot) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO es_snapshots (stream_id, stream_version, position, schema_version, state) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (stream_id) DO UPDATE SET stream_version = EXCLUDED.stream_version, \
             position = EXCLUDED.position, schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, \
             taken_at = now() \
         WHERE es_snapshots.stream_version < EXCLUDED.stream_version \
            OR es_snapshots.schema_version <> EXCLUDED.schema_version",
    )
    .bind(&snapshot.stream_id)
    .bind(snapshot.stream_version as i64)
    .bind(snapshot.position as i64)
    .bind(snapshot.schema_version as i32)
    .bind(&snapshot.state)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    /// Runs a batch of fifty two-event appends under its generic plan and
    /// counts the index probes: one per stream, one per event, whatever the
    /// batch's size (not one per event per append).
    #[tokio::test]
    async fn the_batch_append_probes_each_stream_and_event_once() {
        crate::testing::with_database(2, |pool| async move {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
            sqlx::raw_sql(&format!("PREPARE batch AS {APPEND_BATCH}")).execute(&mut *conn).await.unwrap();
            let list = |n: usize, item: &dyn Fn(usize) -> String| (0..n).map(item).collect::<Vec<_>>().join(", ");
            let arguments = format!(
                "(ARRAY[{}], ARRAY[{}], ARRAY[{}]::bigint[], ARRAY[{}], ARRAY[{}], ARRAY[{}], ARRAY[{}], ARRAY[{}], \
                 ARRAY[{}]::jsonb[], ARRAY[{}]::jsonb[])",
                list(50, &|n| n.to_string()),
                list(50, &|n| format!("'order-{n}'")),
                list(50, &|_| "0".into()),
                list(100, &|e| (e / 2).to_string()),
                list(100, &|e| (e % 2 + 1).to_string()),
                list(100, &|_| format!("'{}'::uuid", Uuid::new_v4())),
                list(100, &|_| "'Happened'".into()),
                list(100, &|_| "1".into()),
                list(100, &|_| "'{}'".into()),
                list(100, &|_| "'{}'".into()),
            );
            let plan: serde_json::Value =
                sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE batch{arguments}"))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            fn probes(node: &serde_json::Value, index: &str) -> u64 {
                let own = if node["Index Name"] == index { node["Actual Loops"].as_u64().unwrap_or(0) } else { 0 };
                let below = node["Plans"].as_array().map_or(0, |plans| plans.iter().map(|p| probes(p, index)).sum());
                own + below
            }
            let root = &plan[0]["Plan"];
            assert_eq!(probes(root, "es_events_event_id_key"), 100, "{plan}");
            assert_eq!(probes(root, "es_events_stream_version_key"), 50, "{plan}");
            let written: i64 =
                sqlx::query_scalar("SELECT count(*) FROM es_events").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(written, 100);
        })
        .await;
    }

    /// A batch answers each append: written, left out because its stream
    /// had moved on (with the stream's version: the caller need not ask), or
    /// left out for a stored event id (the caller asks which events, a replay
    /// or a duplicate), whatever its version.
    #[tokio::test]
    async fn a_batch_tells_each_left_out_append_whether_its_stream_moved_on() {
        crate::testing::with_database(2, |pool| async move {
            use crate::conformance::event;
            let stored = event("Stored", serde_json::json!({}));
            for (stream, events) in [
                ("order-moved", vec![event("A", serde_json::json!({})), event("B", serde_json::json!({}))]),
                ("order-replayed", vec![stored.clone()]),
            ] {
                let written = append(&pool, stream, ExpectedVersion::NoStream, &events).await.unwrap();
                assert!(matches!(written, Appended::Done(_)));
            }
            let (fresh, moved, again) = (
                [event("C", serde_json::json!({}))],
                [event("D", serde_json::json!({}))],
                [stored, event("E", serde_json::json!({}))],
            );
            let batch = [
                BatchAppend { stream_id: "order-new", expected: ExpectedVersion::NoStream, events: &fresh },
                BatchAppend { stream_id: "order-moved", expected: ExpectedVersion::Exact(1), events: &moved },
                BatchAppend { stream_id: "order-replayed", expected: ExpectedVersion::Exact(0), events: &again },
            ];
            let outcomes = append_batch(&pool, &batch).await.unwrap().expect("no race");
            assert!(matches!(outcomes[0], Appended::Done(AppendResult { stream_version: 1, .. })));
            assert!(matches!(outcomes[1], Appended::Stale(2)));
            assert!(matches!(outcomes[2], Appended::Rejected));
        })
        .await;
    }

    /// A lone append (one event or several) answers as a batch does:
    /// written, left out because its stream had moved on (with the stream's
    /// version), or left out for a stored event id (the caller asks which
    /// events), whatever its version.
    #[tokio::test]
    async fn a_lone_append_tells_whether_its_stream_moved_on() {
        crate::testing::with_database(2, |pool| async move {
            use crate::conformance::event;
            let stored = event("Stored", serde_json::json!({}));
            let first = [event("A", serde_json::json!({})), stored.clone()];
            assert!(matches!(
                append(&pool, "order-1", ExpectedVersion::NoStream, &first).await.unwrap(),
                Appended::Done(_)
            ));
            let one = [event("B", serde_json::json!({}))];
            let many = [event("C", serde_json::json!({})), event("D", serde_json::json!({}))];
            for events in [&one[..], &many[..]] {
                let outcome = append(&pool, "order-1", ExpectedVersion::Exact(1), events).await.unwrap();
                assert!(matches!(outcome, Appended::Stale(2)), "{} events", events.len());
            }
            let again_one = [stored.clone()];
            let again_many = [event("E", serde_json::json!({})), stored];
            for events in [&again_one[..], &again_many[..]] {
                let outcome = append(&pool, "order-1", ExpectedVersion::Exact(1), events).await.unwrap();
                assert!(matches!(outcome, Appended::Rejected), "{} events", events.len());
            }
            let next = append(&pool, "order-1", ExpectedVersion::Exact(2), &one).await.unwrap();
            assert!(matches!(next, Appended::Done(AppendResult { stream_version: 3, .. })));
        })
        .await;
    }

    /// A page stops at an open transaction and says that a committed event
    /// waits behind it; once that transaction has ended, the page reads the
    /// event and nothing is held back. (Transactions of other tests' databases
    /// hold a follower back too, for up to 50 ms each, see
    /// `es_follow_horizon()`: the pages before and after are read until
    /// nothing is held back, as a subscriber would.)
    #[tokio::test]
    async fn a_page_tells_when_committed_events_are_held_back() {
        crate::testing::with_database(2, |pool| async move {
            let settled = |after: Option<LogPosition>| {
                let pool = pool.clone();
                async move {
                    let started = std::time::Instant::now();
                    loop {
                        let page = follow_page(&pool, after, 10).await.unwrap();
                        if !page.held_back {
                            return page;
                        }
                        assert!(started.elapsed() < std::time::Duration::from_secs(10), "held back for 10 s");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
            };
            let insert = "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, \
                 payload, metadata) VALUES (gen_random_uuid(), $1, 1, 'Happened', 1, '{}', \
                 '{\"correlation_id\": \"\", \"causation_id\": \"\", \"actor\": \"test\"}')";
            sqlx::query(insert).bind("order-first").execute(&pool).await.unwrap();
            let first = settled(None).await;
            assert_eq!(first.events.len(), 1);
            let after = Some(first.events[0].log_position);

            let mut open = pool.begin().await.unwrap();
            sqlx::query(insert).bind("order-open").execute(&mut *open).await.unwrap();
            sqlx::query(insert).bind("order-later").execute(&pool).await.unwrap();
            let held = follow_page(&pool, after, 10).await.unwrap();
            assert!(held.events.is_empty(), "an event behind an open transaction was handed out");
            assert!(held.held_back, "the committed event behind the open transaction went unmentioned");

            open.rollback().await.unwrap();
            let released = settled(after).await;
            let streams: Vec<&str> = released.events.iter().map(|e| e.stream_id.as_str()).collect();
            assert_eq!(streams, ["order-later"]);
        })
        .await;
    }

    /// Plans each log query as PostgreSQL does once it has run a few times
    /// (one generic plan for any parameters), over a log of 20,000 events in
    /// 2,000 transactions, and refuses a sequential scan of the table.
    #[tokio::test]
    async fn the_log_queries_never_scan_the_whole_table() {
        crate::testing::with_database(2, |pool| async move {
            sqlx::raw_sql(
                "DO $$ BEGIN FOR i IN 1..2000 LOOP \
                   INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata) \
                   SELECT gen_random_uuid(), 'order-' || i || '-' || g, 1, 'Happened', 1, '{}', '{}' FROM generate_series(1, 10) g; \
                   COMMIT; \
                 END LOOP; END $$",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("ANALYZE es_events").execute(&pool).await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
            let queries = [
                ("read_all", READ_ALL.to_owned(), "('0', 0, 500)"),
                ("follow", FOLLOW_PAGE.to_owned(), "('0', 0, 500)"),
                // The probe inside es_follow_horizon() (its migration), as PL/pgSQL runs it.
                (
                    "follow_probe",
                    "SELECT 1 FROM es_events WHERE transaction_id >= $1::text::xid8 ORDER BY transaction_id LIMIT 1"
                        .to_owned(),
                    "('0')",
                ),
                ("count_after", COUNT_AFTER.to_owned(), "('0', 0, 100000)"),
                ("locate", LOCATE.to_owned(), "(1)"),
                ("stats", STATS.to_owned(), ""),
                (
                    "append_batch",
                    APPEND_BATCH.to_owned(),
                    "(ARRAY[0, 1], ARRAY['order-a', 'order-b'], ARRAY[0, NULL]::bigint[], ARRAY[0, 1], ARRAY[1, 1], \
                      ARRAY[gen_random_uuid(), gen_random_uuid()], ARRAY['A', 'B'], ARRAY[1, 1], \
                      ARRAY['{}', '{}']::jsonb[], ARRAY['{}', '{}']::jsonb[])",
                ),
            ];
            for (name, sql, arguments) in queries {
                sqlx::raw_sql(&format!("PREPARE {name} AS {sql}")).execute(&mut *conn).await.unwrap();
                let plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{arguments}"))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert!(!plan.to_string().contains("Seq Scan"), "{name} scans the whole table: {plan}");
            }
        })
        .await;
    }
}
