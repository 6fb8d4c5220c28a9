//! The background tasks behind live tailing: one sends coalesced NOTIFYs
//! after appends, one LISTENs and wakes this process's subscriptions.
//! Both stop when the store is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    shared: Arc<Shared>,
    _task: TaskGuard,
}

/// What the appends tell the NOTIFY task.
struct Shared {
    /// Wakes the task for an append after the pause.
    wake: Notify,
    /// Appends came during the pause and wait for a NOTIFY.
    deferred: AtomicBool,
    /// When the pause after the last NOTIFY ends, in nanoseconds after `epoch`.
    pause_ends: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn pause_over(&self, now: Instant) -> bool {
        self.nanos(now) >= self.pause_ends.load(Ordering::Acquire)
    }
}

impl Notifier {
    pub fn start(pool: PgPool, pause: Duration) -> Self {
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            deferred: AtomicBool::new(false),
            pause_ends: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let task = tokio::spawn(notify_loop(pool, shared.clone(), pause));
        Self { shared, _task: TaskGuard(task) }
    }

    /// Asks for a NOTIFY: at once after the pause, else noted for the next.
    pub fn signal(&self) {
        let shared = &*self.shared;
        if shared.pause_over(Instant::now()) {
            shared.wake.notify_one();
        } else {
            shared.deferred.store(true, Ordering::Release);
        }
    }
}

/// Sends the NOTIFYs, on a connection of its own with `synchronous_commit`
/// off: a NOTIFY transaction takes a transaction id, and its commit need not
/// wait for a disk flush (a lost notification is covered by polling).
///
/// After a NOTIFY comes a pause of `pause`: an append during it is announced
/// by the NOTIFY of the first append after it, or, if none comes, at the end
/// of a second pause; an append after it, at once. So there is at most one
/// NOTIFY a pause, an append is announced at most two pauses late, and under
/// steady load the task never waits on a timer: the append that ends the
/// pause wakes it (from the appending task, so on the same thread), where a
/// timer at the end of each pause would wake the process once more, and
/// often a second thread with it, for every NOTIFY.
async fn notify_loop(pool: PgPool, shared: Arc<Shared>, pause: Duration) {
    let mut connection: Option<PgConnection> = None;
    // The end of the second pause after the last NOTIFY, while it may be needed.
    let mut last_call: Option<Instant> = None;
    loop {
        match last_call {
            Some(at) => tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep_until(at.into()) => {
                    last_call = None;
                    if !shared.deferred.load(Ordering::Acquire) {
                        continue;
                    }
                }
            },
            None => shared.wake.notified().await,
        }
        if !shared.pause_over(Instant::now()) {
            // Asked while the last NOTIFY was going out: it may not cover that append.
            shared.deferred.store(true, Ordering::Release);
            continue;
        }
        // Before the NOTIFY: an append noted after this is announced by the next.
        shared.deferred.store(false, Ordering::Release);
        if connection.is_none() {
            connection = connect_for_notify(&pool).await;
        }
        if let Some(conn) = connection.as_mut() {
            if let Err(error) = sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await {
                // Subscribers elsewhere fall back to polling; nothing is lost.
                tracing::debug!(%error, "could not send the append notification");
                connection = None;
            }
        }
        let now = Instant::now();
        shared.pause_ends.store(shared.nanos(now + pause), Ordering::Release);
        last_call = Some(now + 2 * pause);
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
