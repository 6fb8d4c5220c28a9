//! The PostgreSQL event store.
//!
//! An append is one SQL statement (one round trip, one transaction, see
//! `queries.rs`); the unique index on `(stream_id, stream_version)` is the
//! optimistic concurrency check. Appends that arrive together share that
//! statement and its commit (group commit, `group.rs`), each still checked
//! on its own. The global log is ordered by
//! `(transaction_id, position)` and read only below the oldest transaction
//! still open in this database (`es_read_horizon()`, after
//! `pg_snapshot_xmin`): a transaction that took a position earlier but
//! commits later cannot slip behind a reader, so a subscriber never skips an
//! event and writers never wait for each other. The price: a transaction held
//! open in this database holds the log back until it ends
//! ([`LogStats::held_back_events`] shows by how much). Transactions in other
//! databases of the cluster do not; subscriptions, which read page after
//! page, stop at `es_follow_horizon()`, which looks such a transaction up
//! only once it has held events back for 50 ms (the lookup is dear under
//! load; see its migration).
//!
//! Live tailing wakes on LISTEN/NOTIFY. NOTIFY takes a cluster-wide lock at
//! commit, so appends never send it themselves: after a commit they signal a
//! background task that sends one coalesced `pg_notify` for all the appends
//! since its last one. Subscribers in this process are woken directly, and
//! every subscriber also polls as a fallback.

mod group;
mod kept;

use kept::on_kept;
mod notify;
mod queries;

pub use group::GroupCommitConfig;
pub use kept::pool_options;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::subscription::{self, Page, SubscriptionConfig, Tail};
use crate::{
    append, snapshot, AppendResult, EventStore, EventStream, ExpectedVersion, LogPosition, LogStats, NewEvent,
    RecordedEvent, Snapshot, StoreError,
};

/// The event store's own schema (`migrations/event-store/`): `es_events`,
/// the log's read horizon, and the record of which backend the database's
/// derived state comes from (`event_store_backend`, see `Backend::open`);
/// nothing else of the system. It shares the
/// database's migration history with the rest of the system's migrations
/// (the `migrations` crate applies both), so it ignores versions it does not
/// know.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    let mut own = sqlx::migrate!("../migrations/event-store");
    own.ignore_missing = true;
    own
});

/// The NOTIFY channel that announces appends.
pub const CHANNEL: &str = "es_events";

/// How often an append with `ExpectedVersion::Any` retries after losing a
/// race for the same version before it gives up with a conflict.
const MAX_APPEND_ATTEMPTS: usize = 20;

/// Tuning of the PostgreSQL backend; the defaults suit most deployments.
#[derive(Debug, Clone)]
pub struct PgStoreConfig {
    /// Longest time one store operation may take before it fails as unavailable.
    pub operation_timeout: Duration,
    /// Shortest time between two NOTIFYs: appends in between share one.
    /// An append after a quiet spell is announced at once; one during the
    /// pause after a NOTIFY by the first append after the pause, and at
    /// most twice this late (subscribers in other processes learn of it
    /// then; a lost NOTIFY is covered by their polling).
    pub notify_interval: Duration,
    pub subscription: SubscriptionConfig,
    pub group_commit: GroupCommitConfig,
}

impl Default for PgStoreConfig {
    fn default() -> Self {
        Self {
            operation_timeout: Duration::from_secs(10),
            notify_interval: Duration::from_millis(2),
            subscription: SubscriptionConfig::default(),
            group_commit: GroupCommitConfig::default(),
        }
    }
}

#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// Connections kept out of the pool for the appends and the reads the
    /// store runs all the time (`kept.rs`).
    kept: Arc<kept::Kept>,
    config: PgStoreConfig,
    /// Bumped when new events may be readable; subscriptions wait on it.
    wake: Arc<watch::Sender<u64>>,
    notifier: OnceLock<notify::Notifier>,
    listener: OnceLock<notify::Listener>,
    /// Started with the first append (it needs the runtime).
    writers: OnceLock<group::GroupCommit>,
}

impl PgEventStore {
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, PgStoreConfig::default())
    }

    pub fn with_config(pool: PgPool, config: PgStoreConfig) -> Self {
        // One connection for each append writer, one for an append written by its caller, two for reads.
        let kept =
            Arc::new(kept::Kept::new(pool.clone(), config.group_commit.writers.max(1) + 3, config.operation_timeout));
        let inner = Inner {
            pool,
            kept,
            config,
            wake: Arc::new(watch::Sender::new(0)),
            notifier: OnceLock::new(),
            listener: OnceLock::new(),
            writers: OnceLock::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Appends of this store queued or being written now: how a test knows
    /// that the appends it started have reached the group commit's queue.
    #[cfg(feature = "testing")]
    pub fn appends_in_flight(&self) -> usize {
        self.inner.writers.get().map_or(0, group::GroupCommit::in_flight)
    }

    /// Applies the event store's pending migrations (its own schema only).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.inner.pool).await
    }

    async fn timed<T>(&self, work: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        StoreError::within(self.inner.config.operation_timeout, work).await
    }

    /// One append (in a batch, see `group.rs`); when it writes nothing,
    /// finds out why: a replay of stored events (the original result), a
    /// version conflict, or, for `Any`, a racing append that took the version
    /// first (try again).
    async fn append_resolving_races(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Arc<[NewEvent]>,
    ) -> Result<AppendResult, StoreError> {
        let inner = &self.inner;
        let writers = inner.writers.get_or_init(|| {
            let config = inner.config.group_commit.clone();
            group::GroupCommit::start(inner.kept.clone(), config)
        });
        let mut actual = 0;
        for _ in 0..MAX_APPEND_ATTEMPTS {
            match writers.append(stream_id, expected, events.clone()).await? {
                queries::Appended::Done(result) => {
                    self.announce_append();
                    return Ok(result);
                }
                queries::Appended::Stale(version) => actual = version,
                queries::Appended::Rejected => {
                    let why =
                        on_kept!(inner.kept, |connection| queries::explain_rejection(connection, stream_id, &events));
                    match why.await? {
                        queries::Rejection::Stored(stored) => {
                            return append::replayed_result(stream_id, &events, stored)
                        }
                        queries::Rejection::Version(version) => actual = version,
                    }
                }
            }
            if expected.required().is_some_and(|required| required != actual) {
                break;
            }
        }
        Err(StoreError::WrongExpectedVersion { stream_id: stream_id.to_owned(), expected, actual })
    }

    fn announce_append(&self) {
        self.inner.wake.send_modify(|n| *n += 1);
        let inner = &self.inner;
        inner
            .notifier
            .get_or_init(|| notify::Notifier::start(inner.pool.clone(), inner.config.notify_interval))
            .signal();
    }
}

/// Appends inside the caller's transaction (the events become readable when
/// it commits); `None` when the append was refused, which aborts the
/// transaction. The conformance suite uses it to hold appends open and roll
/// them back.
#[cfg(feature = "testing")]
pub(crate) async fn append_within(
    conn: &mut sqlx::PgConnection,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Option<AppendResult>, StoreError> {
    append::validate(stream_id, events)?;
    Ok(match queries::append(&mut *conn, stream_id, expected, events).await? {
        queries::Appended::Done(result) => Some(result),
        queries::Appended::Rejected | queries::Appended::Stale(_) => None,
    })
}

#[async_trait]
impl EventStore for PgEventStore {
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id, events = events.len()))]
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append::validate(stream_id, &events)?;
        let started = std::time::Instant::now();
        let count = events.len();
        let appended = self.timed(self.append_resolving_races(stream_id, expected, events.into())).await;
        append::observe(&appended, count, started);
        appended
    }

    #[tracing::instrument(skip_all, fields(stream_id = %stream_id), err)]
    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        on_kept!(self.inner.kept, |connection| queries::read_stream(connection, stream_id, from_version)).await
    }

    async fn read_stream_page(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        on_kept!(self.inner.kept, |connection| queries::read_stream_page(connection, stream_id, from_version, limit))
            .await
    }

    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        on_kept!(self.inner.kept, |connection| queries::read_all(connection, after, limit)).await
    }

    fn subscribe(&self, after: Option<LogPosition>) -> EventStream {
        subscription::follow(self.clone(), after, self.inner.config.subscription.clone())
    }

    async fn stats(&self) -> Result<LogStats, StoreError> {
        self.timed(queries::stats(&self.inner.pool)).await
    }

    async fn read_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        on_kept!(self.inner.kept, |connection| queries::read_snapshot(connection, stream_id)).await
    }

    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.timed(queries::write_snapshot(&self.inner.pool, &snapshot)).await
    }

    fn offer_snapshot(&self, snapshot: Snapshot) {
        snapshot::offer(self, snapshot);
    }

    async fn locate(&self, position: u64) -> Result<Option<LogPosition>, StoreError> {
        self.timed(queries::locate(&self.inner.pool, position)).await
    }

    async fn count_after(&self, after: Option<LogPosition>, at_most: u64) -> Result<u64, StoreError> {
        self.timed(queries::count_after(&self.inner.pool, after, at_most)).await
    }
}

impl Tail for PgEventStore {
    async fn fetch(&self, after: Option<LogPosition>, limit: usize) -> Result<Page, StoreError> {
        on_kept!(self.inner.kept, |connection| queries::follow_page(connection, after, limit)).await
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.listener.get_or_init(|| notify::Listener::start(self.inner.pool.clone(), self.inner.wake.clone()));
        self.inner.wake.subscribe()
    }
}
