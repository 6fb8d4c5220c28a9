//! Rebuilding a read model by replaying the whole log into shadow tables and
//! swapping them in, while queries go on reading the live tables.
//!
//! 1. One rebuild of a projection at a time: an advisory lock keyed by its name.
//! 2. The shadow tables live in schema `rebuild_<name>`: copies of the tables
//!    the projection writes, with the same names, columns, constraints and
//!    indexes (made while the tables are empty: building them after the
//!    replay would be faster, but one long transaction, ADR 0013). The
//!    projection's own code writes them, with `search_path` pointed there.
//! 3. The replay reads the log in pages, the next page while the last one is
//!    applied; each page is one short transaction that also moves the rebuild's
//!    checkpoint in `projection_rebuilds`. Interrupted, a rebuild resumes
//!    from there; a finished or failed one starts again from empty copies.
//! 4. Once the replay has reached the readable head, one transaction swaps:
//!    it locks the live tables (queries wait for it, briefly), applies to the
//!    shadow tables the events the live projection had applied beyond the
//!    replay, replaces the live tables by the shadow ones and hands the
//!    rebuild's checkpoint to the live projection, whose runner notices and
//!    follows on from it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, LogPosition, RecordedEvent, StoreError};
use read_models::{checkpoints, rebuilds, BatchError, Projection};
use serde::Serialize;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, watch, Barrier};

use crate::runtime::{apply_batch, Target};
use crate::RunError;

/// Advisory lock class of rebuilds (the key is `hashtext(name)`).
const LOCK_CLASS: i32 = 0x5242_4c44; // "RBLD"

/// How often the estimate of the events left is refreshed.
const TOTAL_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events read and applied per transaction.
    pub page_size: usize,
    /// How long the swap may wait for the live tables before it gives up
    /// and tries again later (queries wait behind it meanwhile).
    pub swap_lock_timeout: Duration,
    /// For tests: before the swap, the rebuild waits twice at this barrier,
    /// so that a test can change the world between the waits.
    #[doc(hidden)]
    pub pause_before_swap: Option<Arc<Barrier>>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self { page_size: 1_000, swap_lock_timeout: Duration::from_secs(5), pause_before_swap: None }
    }
}

/// How far a rebuild is: events replayed, of about how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub events_done: u64,
    /// `events_done` plus the readable events not replayed yet (an estimate
    /// while appends go on).
    pub events_total: u64,
    pub swapped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(&'static str),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("reading the log failed: {0}")]
    Store(#[from] StoreError),
    #[error("rebuild database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the rebuild was cancelled")]
    Cancelled,
    #[error("the swap could not apply the live projection's last events: {0}")]
    Swap(BatchError),
}

/// Rebuilds `projection`, reporting progress on `progress`, and returns once
/// the rebuilt tables are live.
pub async fn rebuild(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    options: RebuildOptions,
    progress: &watch::Sender<Progress>,
) -> Result<Progress, RebuildError> {
    let name = projection.name();
    let mut lock = pool.connect_options().connect().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
        .bind(LOCK_CLASS)
        .bind(name)
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        return Err(RebuildError::AlreadyRunning(name));
    }
    let outcome = Rebuild { projection, store, pool: pool.clone(), options, progress }.run().await;
    if let Err(error) = &outcome {
        if !error.is_transient() {
            record_failure(&pool, name, error).await;
        }
    }
    let _ = lock.close().await; // releases the lock
    outcome
}

impl RebuildError {
    /// Whether running the rebuild again later may succeed: it resumes.
    pub fn is_transient(&self) -> bool {
        match self {
            RebuildError::AlreadyRunning(_) | RebuildError::Cancelled | RebuildError::Store(_) => true,
            RebuildError::Run(RunError::Interrupted { .. }) => true,
            RebuildError::Database(error) => event_store::is_transient(error),
            RebuildError::Run(_) | RebuildError::Swap(_) => false,
        }
    }
}

/// A rebuild that cannot go on is `failed` (one that stopped at an event is
/// recorded with it already); the next one starts from empty tables.
async fn record_failure(pool: &PgPool, name: &str, error: &RebuildError) {
    if let Err(db) = rebuilds::failed(pool, name, &error.to_string()).await {
        tracing::warn!(projection = name, error = %db, "cannot record the rebuild's failure");
    }
}

struct Rebuild<'a> {
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    options: RebuildOptions,
    progress: &'a watch::Sender<Progress>,
}

impl Rebuild<'_> {
    async fn run(self) -> Result<Progress, RebuildError> {
        let name = self.projection.name();
        let (mut checkpoint, mut done) = self.prepare().await?;
        loop {
            let before = done;
            (checkpoint, done) = self.replay(checkpoint, done).await?;
            // Swap once the replay is within a page of the head (where the
            // live projection is), so that the tables stay locked for a few
            // events at most. A replay that found nothing new swaps whatever
            // the count says.
            let live = checkpoints::load(&self.pool, name).await?;
            let far_behind =
                live > checkpoint && self.store.count_after(checkpoint, self.page_size() + 1).await? > self.page_size();
            if far_behind && done > before {
                continue;
            }
            if let Some(pause) = &self.options.pause_before_swap {
                pause.wait().await;
                pause.wait().await;
            }
            match self.swap(checkpoint, done).await? {
                Some(progress) => {
                    self.progress.send_replace(progress);
                    tracing::info!(projection = name, events = progress.events_done, "rebuild swapped in");
                    return Ok(progress);
                }
                None => tracing::info!(projection = name, "the live tables are busy; trying the swap again"),
            }
        }
    }

    fn page_size(&self) -> u64 {
        self.options.page_size.max(1) as u64
    }

    /// Resumes the rebuild that was interrupted, or starts one from empty
    /// shadow tables. Returns the shadow tables' checkpoint and events done.
    async fn prepare(&self) -> Result<(Option<LogPosition>, u64), RebuildError> {
        let name = self.projection.name();
        let schema = shadow_schema(name);
        let mut tx = self.pool.begin().await?;
        let found = rebuilds::lock(&mut tx, name).await?;
        let shadow_tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)")
                .bind(&schema)
                .bind(self.projection.tables())
                .fetch_one(&mut *tx)
                .await?;
        if found.state == "running" && shadow_tables == self.projection.tables().len() as i64 {
            // A rebuild started by a version that built its indexes last has none yet.
            for table in self.projection.tables() {
                copy_indexes(&mut tx, table, &schema).await?;
            }
            rebuilds::resume(&mut tx, name).await?;
            tx.commit().await?;
            tracing::info!(projection = name, events_done = found.events_done, "resuming the rebuild");
            return Ok((found.checkpoint, found.events_done));
        }
        let schema_ident = quote_ident(&schema);
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema_ident} CASCADE")).execute(&mut *tx).await?;
        sqlx::query(&format!("CREATE SCHEMA {schema_ident}")).execute(&mut *tx).await?;
        for table in self.projection.tables() {
            copy_table(&mut tx, table, &schema).await?;
            copy_indexes(&mut tx, table, &schema).await?;
        }
        rebuilds::start(&mut tx, name).await?;
        tx.commit().await?;
        tracing::info!(projection = name, "rebuild started");
        Ok((None, 0))
    }

    /// Replays from `checkpoint` until a page comes back short of full: the
    /// readable head. Pages are read ahead while the last one is applied.
    async fn replay(
        &self,
        mut checkpoint: Option<LogPosition>,
        mut done: u64,
    ) -> Result<(Option<LogPosition>, u64), RebuildError> {
        let page_size = self.options.page_size.max(1);
        let (pages, mut incoming) = mpsc::channel::<Result<Vec<RecordedEvent>, StoreError>>(2);
        let reader = {
            let store = self.store.clone();
            tokio::spawn(async move {
                let mut after = checkpoint;
                loop {
                    let page = store.read_all(after, page_size).await;
                    let last = match &page {
                        Ok(events) if events.len() == page_size => events.last().map(|e| e.log_position),
                        _ => None,
                    };
                    if pages.send(page).await.is_err() || last.is_none() {
                        return;
                    }
                    after = last;
                }
            })
        };
        let _stop_reading = AbortOnDrop(reader);
        let mut total_refreshed = Instant::now() - TOTAL_REFRESH;
        let mut total = self.progress.borrow().events_total;
        let mut remaining = None;
        while let Some(page) = incoming.recv().await {
            let page = page?;
            if page.is_empty() {
                break;
            }
            if total_refreshed.elapsed() >= TOTAL_REFRESH {
                total = done + self.events_left(checkpoint, done, &mut remaining).await?;
                total_refreshed = Instant::now();
            }
            // In a task of its own, as in the runtime: cancelling the rebuild
            // never leaves a page's transaction open.
            let count = page.len() as u64;
            let applied = {
                let (projection, pool) = (self.projection.clone(), self.pool.clone());
                tokio::spawn(
                    async move { apply_batch(&*projection, &pool, Target::Shadow, (checkpoint, 0), &page).await },
                )
            };
            checkpoint = Some(match applied.await {
                Ok(result) => result?,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => return Err(RebuildError::Cancelled),
            });
            done += count;
            self.progress.send_replace(Progress { events_done: done, events_total: total.max(done), swapped: false });
        }
        Ok((checkpoint, done))
    }

    /// The readable events after `checkpoint`: counted once, then kept up
    /// to date by counting only those that arrived since (positions are not
    /// dense on every backend: a distance in events is counted).
    async fn events_left(
        &self,
        checkpoint: Option<LogPosition>,
        done: u64,
        remaining: &mut Option<Remaining>,
    ) -> Result<u64, RebuildError> {
        let head = self.store.stats().await?.readable_head;
        let left = match remaining.take() {
            None => self.store.count_after(checkpoint, u64::MAX).await?,
            Some(before) => {
                let arrived = if head > before.head { self.store.count_after(before.head, u64::MAX).await? } else { 0 };
                before.left.saturating_sub(done - before.done) + arrived
            }
        };
        *remaining = Some(Remaining { head, left, done });
        rebuilds::set_left(&self.pool, self.projection.name(), left).await?;
        Ok(left)
    }

    /// Swaps the shadow tables in. `None` if the live tables stayed locked
    /// longer than the lock timeout.
    async fn swap(&self, shadow: Option<LogPosition>, done: u64) -> Result<Option<Progress>, RebuildError> {
        let name = self.projection.name();
        let schema = quote_ident(&shadow_schema(name));
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = {}", self.options.swap_lock_timeout.as_millis()))
            .execute(&mut *tx)
            .await?;
        let live_tables: Vec<String> =
            self.projection.tables().iter().map(|table| format!("public.{}", quote_ident(table))).collect();
        let locked = sqlx::query(&format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live_tables.join(", ")))
            .execute(&mut *tx)
            .await;
        match locked {
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => return Ok(None),
            other => other?,
        };
        // The live projection's runner cannot write while the tables are locked.
        let live = checkpoints::lock(&mut tx, name).await?;

        // Bring the shadow tables to where the live ones are, so that no
        // query sees the read model go back in time.
        let (mut checkpoint, shadow_done) = (shadow, done);
        let mut done = shadow_done;
        use_shadow_tables(&mut tx, name).await?;
        while checkpoint < live {
            let page: Vec<RecordedEvent> = self
                .store
                .read_all(checkpoint, self.options.page_size.max(1))
                .await?
                .into_iter()
                .take_while(|event| Some(event.log_position) <= live)
                .collect();
            let Some(last) = page.last() else { break };
            checkpoint = Some(last.log_position);
            done += page.len() as u64;
            self.projection.apply(&mut tx, &page).await.map_err(RebuildError::Swap)?;
        }
        if done > shadow_done {
            tracing::info!(
                projection = name,
                events = done - shadow_done,
                "the swap caught up with the live projection"
            );
        }
        sqlx::query("SET LOCAL search_path TO DEFAULT").execute(&mut *tx).await?;

        for (table, live_table) in self.projection.tables().iter().zip(&live_tables) {
            sqlx::query(&format!("DROP TABLE {live_table}")).execute(&mut *tx).await?;
            sqlx::query(&format!("ALTER TABLE {schema}.{} SET SCHEMA public", quote_ident(table)))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!("DROP SCHEMA {schema}")).execute(&mut *tx).await?;
        let to = checkpoint.unwrap_or(LogPosition::START);
        // The live checkpoint is the rebuild's now, the rebuild is done, and
        // the queries waiting for a position hear of it.
        checkpoints::take_over(&mut tx, name, to, done).await?;
        rebuilds::done(&mut tx, name, to, done).await?;
        tx.commit().await?;
        Ok(Some(Progress { events_done: done, events_total: done, swapped: true }))
    }
}

/// Points the transaction's unqualified table names at `name`'s shadow tables.
pub(crate) async fn use_shadow_tables(tx: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let schema = quote_ident(&shadow_schema(name));
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public")).execute(tx).await?;
    Ok(())
}

fn shadow_schema(name: &str) -> String {
    format!("rebuild_{name}")
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates `schema.table` like `public.table`: columns, defaults, checks, and
/// the primary key and unique constraints under their own names. Other
/// indexes: see [`copy_indexes`].
async fn copy_table(tx: &mut PgConnection, table: &str, schema: &str) -> Result<(), sqlx::Error> {
    let (live, shadow) =
        (format!("public.{}", quote_ident(table)), format!("{}.{}", quote_ident(schema), quote_ident(table)));
    sqlx::query(&format!("CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL EXCLUDING INDEXES)"))
        .execute(&mut *tx)
        .await?;
    let constraints: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1::text::regclass AND contype IN ('p', 'u', 'x')",
    )
    .bind(&live)
    .fetch_all(&mut *tx)
    .await?;
    for (constraint, definition) in constraints {
        sqlx::query(&format!("ALTER TABLE {shadow} ADD CONSTRAINT {} {definition}", quote_ident(&constraint)))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The indexes of `public.table` that do not back a constraint, on
/// `schema.table` while it is empty: built after the replay they would be
/// one long transaction, and every transaction of this database holds the
/// log back while it runs (ADR 0013). Each page keeps them up to date instead.
async fn copy_indexes(tx: &mut PgConnection, table: &str, schema: &str) -> Result<(), sqlx::Error> {
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
         WHERE i.indrelid = format('public.%I', $1::text)::regclass \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    for definition in definitions {
        let on_shadow = definition
            .replacen(" ON public.", &format!(" ON {}.", quote_ident(schema)), 1)
            .replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
            .replacen("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1);
        sqlx::query(&on_shadow).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What `events_left` counted last time.
struct Remaining {
    /// The readable head then.
    head: Option<LogPosition>,
    /// Events left after the checkpoint then.
    left: u64,
    /// Events done then.
    done: u64,
}
