//! A few connections kept out of the pool for the store's statements that
//! run all the time (appends, the log's pages, stream reads), and the pool
//! settings every service runs with ([`pool_options`]).
//!
//! sqlx 0.8 sends a `Sync` to every connection given back to its pool and
//! waits for PostgreSQL's answer (its check that the connection is fit for
//! the next user), in a task spawned for it: a round trip, two process
//! wake-ups on each side and a task, for every statement run through the
//! pool. An append runs one statement; through the pool it costs two round
//! trips. A connection kept here between statements pays for neither.
//!
//! Kept connections also plan the store's statements once (their session
//! has [`KEPT_SESSION`]), so they never go back to the pool: a kept
//! connection leaves it for good (`PoolConnection::detach`, the pool may open
//! another in its stead) and is closed when it is done with. A connection is
//! kept again only after a statement that ended normally (answered, or
//! refused by the database, which leaves the connection ready); one whose
//! statement failed otherwise or was cut short is closed (after a database
//! restart, the next statement on each kept connection fails once, as
//! unavailable, which callers retry). A kept connection is closed after
//! [`MAX_KEPT`]; no more than a quarter of the pool's size is kept (when all
//! are busy, a statement takes a connection from the pool as before); and
//! when the pool is closed, the idle kept connections are closed with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};

use super::notify::TaskGuard;
use crate::StoreError;

/// A pooled connection idle longer than this is checked (a round trip)
/// before it is used; one used more recently is not.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The pool settings of every service (and of the tests and benchmarks, so
/// they measure what runs): sqlx checks each connection taken from the pool
/// by default, a round trip before every query; here only one idle for more
/// than a second is checked (HikariCP skips its check within 500 ms of the
/// last use). After a database restart, a connection used within that second
/// fails its next query once, a transient error its caller retries, and is
/// then replaced. (The check of a connection given back cannot be turned off
/// in sqlx 0.8: the store's own statements avoid it on connections it keeps.)
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().test_before_acquire(false).before_acquire(|connection, meta| {
        Box::pin(async move {
            if meta.idle_for > CHECK_IDLE_AFTER {
                sqlx::Connection::ping(connection).await?;
            }
            Ok(true)
        })
    })
}

/// How long a connection is kept before it is closed (and the pool opens
/// another in its stead when it needs one).
const MAX_KEPT: Duration = Duration::from_secs(600);

/// What a kept connection is set to, once, when it starts being kept.
///
/// PostgreSQL plans a prepared statement anew at each execution while it
/// judges a plan for the parameters' values cheaper than the generic one;
/// it did so for every group append (a statement of CTEs over arrays) and
/// the planning cost as much as the execution. The store's statements are
/// written to be index walks and probes under any parameters
/// (`the_log_queries_never_scan_the_whole_table`,
/// `the_batch_append_probes_each_stream_and_event_once`), so their generic
/// plans are the plans. The setting stays on these connections: one never
/// goes back to the pool, where other queries could meet it; it is closed
/// instead.
const KEPT_SESSION: &str = "SET plan_cache_mode = force_generic_plan";

/// `$query` (a future given `$connection`, a `&mut PgConnection`) on a
/// connection of `$kept` (a [`Kept`]), within the store's operation
/// timeout: kept for the next statement if it ended normally; else, or if
/// the timeout cut it short mid-statement, closed.
macro_rules! on_kept {
    ($kept:expr, |$connection:ident| $query:expr) => {
        $crate::StoreError::within($kept.timeout, async {
            let mut held = $kept.take().await?;
            let $connection = held.connection();
            let outcome = $query.await;
            if outcome.is_ok() {
                held.keep();
            }
            outcome
        })
    };
}
pub(super) use on_kept;

pub(super) struct Kept {
    pool: PgPool,
    idle: Arc<Mutex<Vec<Keeping>>>,
    /// Kept connections open, idle or in use: never more than `capacity`.
    open: Arc<AtomicUsize>,
    capacity: usize,
    /// The store's operation timeout: how long a statement on a kept connection may take.
    pub timeout: Duration,
    /// Closes the idle kept connections when the pool closes (started with the first one taken).
    on_close: OnceLock<TaskGuard>,
}

/// A kept connection. Dropped, it is detached from the pool and closed,
/// never given back (its session has [`KEPT_SESSION`]).
struct Keeping {
    connection: Option<PoolConnection<Postgres>>,
    since: Instant,
    open: Arc<AtomicUsize>,
}

impl Drop for Keeping {
    fn drop(&mut self) {
        let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("event_store_kept_connections").set(open as f64);
        let Some(connection) = self.connection.take() else { return };
        // A statement failed or was cut short on it, it served its time, or the pool closed.
        metrics::counter!("event_store_kept_connections_closed_total").increment(1);
        let connection = connection.detach();
        // A polite goodbye when a runtime is there to send it; else the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sqlx::Connection::close(connection));
        }
    }
}

enum Taken {
    Kept(Keeping),
    /// From the pool, when every kept connection is in use: given back after the statement.
    Pooled(PoolConnection<Postgres>),
}

/// A connection taken for one statement: [`Held::keep`] keeps it for the
/// next; dropped (the statement failed or was cut short), a kept connection
/// is closed and a pooled one goes back to the pool, whose check closes it
/// if it is broken.
pub(super) struct Held<'a> {
    taken: Taken,
    home: &'a Kept,
}

impl Kept {
    /// Keeps up to `wanted` connections, at most a quarter of the pool's;
    /// a statement on one may take `timeout`.
    pub fn new(pool: PgPool, wanted: usize, timeout: Duration) -> Self {
        let capacity = wanted.min(pool.options().get_max_connections() as usize / 4);
        let open = Arc::new(AtomicUsize::new(0));
        Self { pool, idle: Arc::default(), open, capacity, timeout, on_close: OnceLock::new() }
    }

    /// An idle kept connection; else a new one, if fewer than the capacity
    /// are open; else one from the pool.
    pub async fn take(&self) -> Result<Held<'_>, StoreError> {
        self.on_close.get_or_init(|| {
            let (closed, idle) = (self.pool.close_event(), Arc::downgrade(&self.idle));
            TaskGuard(tokio::spawn(async move {
                closed.await;
                if let Some(idle) = idle.upgrade() {
                    idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
                }
            }))
        });
        loop {
            let Some(kept) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() else { break };
            if kept.since.elapsed() < MAX_KEPT {
                return Ok(Held { taken: Taken::Kept(kept), home: self });
            }
        }
        let room = |open: usize| (open < self.capacity).then_some(open + 1);
        if !self.pool.is_closed() && self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, room).is_ok() {
            // Counted from here: a failure below drops it, which counts it out.
            let mut kept = Keeping { connection: None, since: Instant::now(), open: self.open.clone() };
            metrics::gauge!("event_store_kept_connections").set(self.open.load(Ordering::Acquire) as f64);
            let connection = kept.connection.insert(self.pool.acquire().await?);
            sqlx::query(KEPT_SESSION).execute(&mut **connection).await?;
            return Ok(Held { taken: Taken::Kept(kept), home: self });
        }
        Ok(Held { taken: Taken::Pooled(self.pool.acquire().await?), home: self })
    }
}

impl Held<'_> {
    pub fn connection(&mut self) -> &mut PgConnection {
        match &mut self.taken {
            Taken::Kept(kept) => kept.connection.as_mut().expect("a kept connection until dropped"),
            Taken::Pooled(pooled) => pooled,
        }
    }

    /// After a statement that ended normally: a kept connection waits for
    /// the next statement (unless the pool is closing); a pooled one goes back.
    pub fn keep(self) {
        if let Taken::Kept(kept) = self.taken {
            if !self.home.pool.is_closed() {
                self.home.idle.lock().unwrap_or_else(PoisonError::into_inner).push(kept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    #[cfg(feature = "testing")]
    async fn plan_cache_mode(connection: &mut PgConnection) -> String {
        sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(connection).await.unwrap()
    }

    #[cfg(feature = "testing")]
    async fn backend(connection: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(connection).await.unwrap()
    }

    /// Kept connections plan once; the pool's connections never see that
    /// setting, whether a kept one was dropped, or all were busy and one
    /// came from the pool.
    #[cfg(feature = "testing")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_connections_plan_once_and_never_go_back_to_the_pool() {
        crate::testing::with_database(8, |pool| async move {
            let kept = Kept::new(pool.clone(), 2, Duration::from_secs(10));
            let (mut first, mut second) = (kept.take().await.unwrap(), kept.take().await.unwrap());
            let mut third = kept.take().await.unwrap();
            assert!(matches!(third.taken, Taken::Pooled(_)), "two are kept; the third is pooled");
            assert_eq!(plan_cache_mode(first.connection()).await, "force_generic_plan");
            assert_eq!(plan_cache_mode(second.connection()).await, "force_generic_plan");
            assert_eq!(plan_cache_mode(third.connection()).await, "auto");
            let first_pid = backend(first.connection()).await;
            first.keep();
            third.keep();
            drop(second); // as after a failed statement: closed, not pooled
            let mut again = kept.take().await.unwrap();
            assert_eq!(backend(again.connection()).await, first_pid, "the kept connection is reused");
            let mut everything_pooled = Vec::new();
            for _ in 0..(8 - 1) {
                let mut connection = pool.acquire().await.unwrap();
                assert_eq!(plan_cache_mode(&mut connection).await, "auto");
                everything_pooled.push(connection);
            }
        })
        .await;
    }

    #[tokio::test]
    async fn never_more_than_a_quarter_of_the_pool_is_kept() {
        let pool = |max| PgPoolOptions::new().max_connections(max).connect_lazy("postgres://nowhere/none").unwrap();
        assert_eq!(Kept::new(pool(40), 3, Duration::from_secs(10)).capacity, 3);
        assert_eq!(Kept::new(pool(10), 3, Duration::from_secs(10)).capacity, 2);
        assert_eq!(Kept::new(pool(3), 3, Duration::from_secs(10)).capacity, 0);
    }
}
