//! The background tasks behind live tailing: one sends coalesced NOTIFYs
//! after appends, one LISTENs and wakes this process's subscriptions.
//! Both stop when the store is dropped.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::CHANNEL;

/// Aborts its task when dropped.
pub(super) struct TaskGuard(pub(super) JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct Notifier {
    pending: Arc<Notify>,
    _task: TaskGuard,
}

impl Notifier {
    pub fn start(pool: PgPool, min_interval: Duration) -> Self {
        let pending = Arc::new(Notify::new());
        let task = tokio::spawn(notify_loop(pool, pending.clone(), min_interval));
        Self { pending, _task: TaskGuard(task) }
    }

    /// Asks for a NOTIFY; signals that arrive while one is being sent share the next one.
    pub fn signal(&self) {
        self.pending.notify_one();
    }
}

/// Sends the NOTIFYs, at most one per `min_interval`, on a connection of its
/// own with `synchronous_commit` off: a NOTIFY transaction takes a
/// transaction id, and its commit need not wait for a disk flush (a lost
/// notification is covered by polling).
async fn notify_loop(pool: PgPool, pending: Arc<Notify>, min_interval: Duration) {
    let mut connection: Option<PgConnection> = None;
    loop {
        pending.notified().await;
        if connection.is_none() {
            connection = connect_for_notify(&pool).await;
        }
        let Some(conn) = connection.as_mut() else { continue };
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await {
            // Subscribers elsewhere fall back to polling; nothing is lost.
            tracing::debug!(%error, "could not send the append notification");
            connection = None;
        }
        // Appends during the pause share the next notification.
        tokio::time::sleep(min_interval).await;
    }
}

async fn connect_for_notify(pool: &PgPool) -> Option<PgConnection> {
    let connect = async {
        let mut conn = pool.connect_options().connect().await?;
        sqlx::query("SET synchronous_commit TO off").execute(&mut conn).await?;
        Ok::<_, sqlx::Error>(conn)
    };
    match connect.await {
        Ok(conn) => Some(conn),
        Err(error) => {
            tracing::debug!(%error, "could not connect to send append notifications");
            None
        }
    }
}

pub(super) struct Listener {
    _task: TaskGuard,
}

impl Listener {
    pub fn start(pool: PgPool, wake: Arc<watch::Sender<u64>>) -> Self {
        Self { _task: TaskGuard(tokio::spawn(listen_loop(pool, wake))) }
    }
}

async fn listen_loop(pool: PgPool, wake: Arc<watch::Sender<u64>>) {
    let bump = |n: &mut u64| *n += 1;
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    // Anything may have been appended while we were not listening.
                    wake.send_modify(bump);
                    loop {
                        match listener.recv().await {
                            Ok(_) => wake.send_modify(bump),
                            Err(error) => {
                                tracing::warn!(%error, "lost the LISTEN connection; subscribers poll until it is back");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not LISTEN for appends"),
            },
            Err(error) => tracing::warn!(%error, "could not connect to LISTEN for appends"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
