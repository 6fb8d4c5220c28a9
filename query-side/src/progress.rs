//! Read-your-writes: a command answers with the global `position` of its last
//! event; a query with `?min_position=N` waits until the read model's
//! projection has applied that event. Projections NOTIFY `projection_progress`
//! when they commit a batch; one LISTEN connection per process wakes every
//! waiter, and a slow poll covers a lost notification.

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, LogPosition, StoreError};
use read_models::checkpoints;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

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
        checkpoints::reached(&self.pool, projection, at).await
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
        // Looked up until the log has it, then kept.
        let located = &std::sync::Mutex::new(None);
        let known = move || *located.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.wait_until(limit, move || async move {
            if known().is_none() {
                let found = store.locate(position).await.map_err(ProgressError::Store)?;
                *located.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = found;
            }
            match known() {
                Some(at) => self.reached(projection, at).await.map_err(ProgressError::Database),
                None => Ok(false),
            }
        })
        .await
    }

    /// Waits, at most `limit`, until `follower` has applied every event that
    /// `leader` has applied now: what one read model shows of an event, the
    /// other shows too.
    pub async fn wait_caught_up(&self, follower: &str, leader: &str, limit: Duration) -> Result<bool, ProgressError> {
        let leader_at = checkpoints::position(&self.pool, leader).await.map_err(ProgressError::Database)?;
        let Some(at) = leader_at else { return Ok(true) };
        self.wait_until(limit, move || async move { self.reached(follower, at).await.map_err(ProgressError::Database) })
            .await
    }

    /// Asks `reached` at every projection progress (or poll) until it says
    /// yes, at most `limit`.
    async fn wait_until<F, Fut>(&self, limit: Duration, mut reached: F) -> Result<bool, ProgressError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, ProgressError>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        let mut wake = self.wake.subscribe();
        loop {
            wake.borrow_and_update();
            if reached().await? {
                return Ok(true);
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
                if let Err(error) = listener.listen(checkpoints::PROGRESS_CHANNEL).await {
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
