//! Read-your-writes: a command answers with the global `position` of its last
//! event; a query with `?min_position=N` waits until the read model's
//! projection has applied that event. Projections NOTIFY `projection_progress`
//! when they commit a batch; one LISTEN connection per process wakes every
//! waiter, and a slow poll covers a lost notification.

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, LogPosition, StoreError};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

pub const CHANNEL: &str = "projection_progress";
const FALLBACK_POLL: Duration = Duration::from_millis(250);

/// Why a wait for a position could not tell.
#[derive(Debug)]
pub enum ProgressError {
    /// The read models' database.
    Database(sqlx::Error),
    /// The event store, where the position is looked up.
    Store(StoreError),
}

#[derive(Clone)]
pub struct Progress {
    pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
}

impl Progress {
    /// Starts listening; the task ends with the runtime.
    pub fn start(pool: PgPool) -> Self {
        let wake = Arc::new(watch::Sender::new(0));
        tokio::spawn(listen(pool.clone(), wake.clone()));
        Self { pool, wake }
    }

    /// Whether `projection` has applied the event at log position `at`.
    pub async fn reached(&self, projection: &str, at: LogPosition) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM projection_checkpoints WHERE name = $1 AND (commit_id, position) >= ($2, $3))",
        )
        .bind(projection)
        .bind(i64::try_from(at.commit).unwrap_or(i64::MAX))
        .bind(i64::try_from(at.position).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
    }

    /// Waits, at most `limit`, until `projection` has applied the event at
    /// global `position` (found in `store`'s log; one not there yet, or
    /// never, is not reached).
    pub async fn wait_for(
        &self,
        store: &Arc<dyn EventStore>,
        projection: &str,
        position: u64,
        limit: Duration,
    ) -> Result<bool, ProgressError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut wake = self.wake.subscribe();
        let mut located = None;
        loop {
            wake.borrow_and_update();
            if located.is_none() {
                located = store.locate(position).await.map_err(ProgressError::Store)?;
            }
            if let Some(at) = located {
                if self.reached(projection, at).await.map_err(ProgressError::Database)? {
                    return Ok(true);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let nap = (deadline - now).min(FALLBACK_POLL);
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

async fn listen(pool: PgPool, wake: Arc<watch::Sender<u64>>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(CHANNEL).await {
                    tracing::warn!(%error, "cannot LISTEN for projection progress");
                } else {
                    while listener.recv().await.is_ok() {
                        wake.send_modify(|n| *n += 1);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot connect to LISTEN for projection progress"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
