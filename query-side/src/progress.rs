//! Read-your-writes: a command answers with the global `position` of its last
//! event; a query with `?min_position=N` waits until the read model's
//! projection has applied that event. Projections NOTIFY `projection_progress`
//! when they commit a batch; one LISTEN connection per process wakes every
//! waiter, and a slow poll covers a lost notification.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

pub const CHANNEL: &str = "projection_progress";
const FALLBACK_POLL: Duration = Duration::from_millis(250);

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

    /// Whether `projection` has applied the event at global `position`.
    pub async fn reached(&self, projection: &str, position: u64) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM es_events e JOIN projection_checkpoints c ON c.name = $2 \
             WHERE e.position = $1 AND (c.commit_id, c.position) >= (e.transaction_id::text::bigint, e.position))",
        )
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(projection)
        .fetch_one(&self.pool)
        .await
    }

    /// Waits, at most `limit`, until `projection` has applied `position`.
    pub async fn wait_for(&self, projection: &str, position: u64, limit: Duration) -> Result<bool, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut wake = self.wake.subscribe();
        loop {
            wake.borrow_and_update();
            if self.reached(projection, position).await? {
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
