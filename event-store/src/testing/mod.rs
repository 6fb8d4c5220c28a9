//! Test support: a fresh, migrated PostgreSQL database per test, a
//! PostgreSQL server of a test's own (`server`) on a port held for it
//! (`Ports`, for any server a test starts), and the harnesses through
//! which the conformance suite drives each backend.

mod ports;
mod server;

pub use ports::Ports;
pub use server::{PgServer, Stop};

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::FutureExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::{AppendResult, EventStore, ExpectedVersion, NewEvent, PgEventStore, StoreError};

/// Test databases are named `estest_<unix seconds>_<random>`.
const PREFIX: &str = "estest_";
/// Test databases (and the shared NATS server's test streams, see
/// `service_kit::testing::drop_stale_streams`) older than this are left over
/// from a killed run and are dropped.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * 3600);

fn server_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a PostgreSQL server for the tests (see .cargo/config.toml)");
    url.parse::<PgConnectOptions>().expect("DATABASE_URL is not a valid PostgreSQL URL")
}

async fn admin() -> PgConnection {
    server_options().connect().await.expect("cannot connect to DATABASE_URL")
}

async fn drop_database(admin: &mut PgConnection, name: &str) {
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    if let Err(error) = sqlx::query(&sql).execute(&mut *admin).await {
        tracing::warn!(%error, name, "could not drop a test database");
    }
}

async fn drop_stale_databases(admin: &mut PgConnection) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(PREFIX)
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
    for name in names {
        let created = name[PREFIX.len()..].split('_').next().and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| now.saturating_sub(t) > STALE_AFTER.as_secs()) {
            drop_database(admin, &name).await;
        }
    }
}

/// Runs `test` against a new database of its own with the event store's
/// schema (and nothing else of the system), then drops the database, also
/// when the test panics. The pool has `max_connections`.
pub async fn with_database<F, Fut>(max_connections: u32, test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    with_migrated_database(&crate::postgres::MIGRATOR, max_connections, test).await;
}

/// [`with_database`], migrated by `migrator` (the whole system's, say).
pub async fn with_migrated_database<F, Fut>(migrator: &Migrator, max_connections: u32, test: F)
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut admin = admin().await;
    drop_stale_databases(&mut admin).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let name = format!("{PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("cannot create a test database");

    let pool = crate::postgres::pool_options()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(server_options().database(&name))
        .await
        .expect("cannot connect to the test database");
    migrator.run(&pool).await.expect("migrations failed");

    let outcome = AssertUnwindSafe(test(pool.clone())).catch_unwind().await;
    pool.close().await;
    drop_database(&mut admin, &name).await;
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Polls `check` until it answers `Some`, for at most `within`; panics
/// naming `what` otherwise. The one way the system's tests wait for
/// something that happens in the background.
pub async fn eventually<T, Fut>(within: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How the conformance suite drives a backend.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    fn store(&self) -> Arc<dyn EventStore>;

    /// Appends, then waits `hold` before it commits (or rolls back, when
    /// `commit` is false) — inside one transaction where the backend has them.
    async fn append_held_open(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        hold: Duration,
        commit: bool,
    ) -> Result<Option<AppendResult>, StoreError>;
}

/// A backend without transactions to hold open (memory, EventStoreDB): a
/// held-open append waits, then appends or not.
pub struct PlainHarness<S>(pub S);

#[async_trait]
impl<S: EventStore + Clone> Harness for PlainHarness<S> {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::new(self.0.clone())
    }

    async fn append_held_open(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        hold: Duration,
        commit: bool,
    ) -> Result<Option<AppendResult>, StoreError> {
        tokio::time::sleep(hold).await;
        if commit {
            self.0.append(stream_id, expected, events).await.map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The EventStoreDB server the conformance suite runs against, if any.
#[cfg(feature = "eventstoredb")]
pub const EVENTSTOREDB_URL: &str = "EVENTSTOREDB_URL";

/// An EventStoreDB store of its own for one test, on the server named by
/// `EVENTSTOREDB_URL` (`None` when unset): its streams carry a prefix no
/// other test uses, so tests share the server and see only their own log.
#[cfg(feature = "eventstoredb")]
pub fn esdb_store() -> Option<crate::esdb::EsdbEventStore> {
    let url = std::env::var(EVENTSTOREDB_URL).ok().filter(|url| !url.trim().is_empty())?;
    let prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
    let config = crate::esdb::EsdbConfig {
        streams: crate::esdb::Streams::new(&prefix, &["order", "payment", "inventory", "stress"]),
        ..crate::esdb::EsdbConfig::new(&url, &[])
    };
    Some(crate::esdb::EsdbEventStore::connect(config).expect("EVENTSTOREDB_URL is not a usable connection string"))
}

/// Another harness's store behind a [`SharedTail`](crate::SharedTail).
pub struct SharedHarness<H>(pub H);

#[async_trait]
impl<H: Harness> Harness for SharedHarness<H> {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::new(crate::SharedTail::new(self.0.store(), 64))
    }

    async fn append_held_open(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        hold: Duration,
        commit: bool,
    ) -> Result<Option<AppendResult>, StoreError> {
        self.0.append_held_open(stream_id, expected, events, hold, commit).await
    }
}

pub struct PgHarness(pub PgEventStore);

/// An append written inside a transaction that stays open until the test
/// commits it or lets it go (dropped, it rolls back): until then its rows
/// hold up any other append to its stream, and its position holds the log
/// back.
pub struct HeldAppend {
    transaction: sqlx::Transaction<'static, sqlx::Postgres>,
    result: AppendResult,
}

impl HeldAppend {
    pub async fn commit(self) -> Result<AppendResult, StoreError> {
        self.transaction.commit().await?;
        Ok(self.result)
    }

    pub async fn roll_back(self) -> Result<(), StoreError> {
        Ok(self.transaction.rollback().await?)
    }
}

impl PgHarness {
    /// Writes the append in a transaction of its own and returns with it
    /// open: the test decides when it ends, so it can hold other appends up
    /// for exactly as long as it needs, however slow the machine.
    pub async fn hold_open(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<HeldAppend, StoreError> {
        // A racing append that takes the same version aborts this
        // transaction: start it again, as a writer would.
        loop {
            let mut transaction = self.0.pool().begin().await?;
            match crate::postgres::append_within(&mut transaction, stream_id, expected, events).await? {
                Some(result) => return Ok(HeldAppend { transaction, result }),
                None => {
                    transaction.rollback().await?;
                    if expected != ExpectedVersion::Any {
                        return Err(StoreError::InvalidAppend("the held-open append was refused".into()));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Harness for PgHarness {
    fn store(&self) -> Arc<dyn EventStore> {
        Arc::new(self.0.clone())
    }

    async fn append_held_open(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        hold: Duration,
        commit: bool,
    ) -> Result<Option<AppendResult>, StoreError> {
        let held = self.hold_open(stream_id, expected, &events).await?;
        tokio::time::sleep(hold).await;
        if commit {
            held.commit().await.map(Some)
        } else {
            held.roll_back().await.map(|()| None)
        }
    }
}
