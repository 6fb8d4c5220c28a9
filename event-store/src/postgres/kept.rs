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
//! A connection is kept again only after a statement that ended normally
//! (answered, or refused by the database, which leaves the connection ready).
//! One whose statement failed otherwise or was cut short by a timeout goes
//! back to the pool, whose check closes it if it is broken (after a database
//! restart, the next append on each kept connection fails once, as any
//! pooled connection's would without a check before use). Kept connections
//! are given back after [`MAX_KEPT`], so the pool's own renewal still turns
//! them over, and never more than a quarter of the pool is kept, so the
//! process's other queries always find connections. When the pool is closed
//! (`PgPool::close` waits for every connection to come back), the kept ones
//! go back at once.

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
/// in sqlx 0.8: the appends avoid it by keeping their connections, [`Kept`].)
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

/// How long a connection is kept before it goes back to the pool.
const MAX_KEPT: Duration = Duration::from_secs(600);

type Idle = Mutex<Vec<(PoolConnection<Postgres>, Instant)>>;

pub(super) struct Kept {
    pool: PgPool,
    idle: Arc<Idle>,
    capacity: usize,
    /// Gives the kept connections back when the pool closes (started with the first one taken).
    on_close: OnceLock<TaskGuard>,
}

/// A connection taken for one statement: [`Held::keep`] puts it back among
/// the kept ones; dropped, it goes back to the pool.
pub(super) struct Held<'a> {
    connection: PoolConnection<Postgres>,
    since: Instant,
    home: &'a Kept,
}

impl Kept {
    /// Keeps up to `wanted` connections, at most a quarter of the pool's.
    pub fn new(pool: PgPool, wanted: usize) -> Self {
        let capacity = wanted.min(pool.options().get_max_connections() as usize / 4);
        Self { pool, idle: Arc::default(), capacity, on_close: OnceLock::new() }
    }

    /// A kept connection, or one from the pool.
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
        let kept = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let (connection, since) = match kept {
            Some((connection, since)) if since.elapsed() < MAX_KEPT => (connection, since),
            _ => (self.pool.acquire().await?, Instant::now()),
        };
        Ok(Held { connection, since, home: self })
    }
}

impl Held<'_> {
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.connection
    }

    /// After a statement that ended normally: kept for the next append, if there is room.
    pub fn keep(self) {
        let mut idle = self.home.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.home.capacity && !self.home.pool.is_closed() {
            idle.push((self.connection, self.since));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgPoolOptions;

    #[tokio::test]
    async fn never_more_than_a_quarter_of_the_pool_is_kept() {
        let pool = |max| PgPoolOptions::new().max_connections(max).connect_lazy("postgres://nowhere/none").unwrap();
        assert_eq!(Kept::new(pool(40), 3).capacity, 3);
        assert_eq!(Kept::new(pool(10), 3).capacity, 2);
        assert_eq!(Kept::new(pool(3), 3).capacity, 0);
    }
}
