//! Live tailing across processes: the NOTIFYs that announce appends (carried
//! by append statements, or sent by a background task), and the task that
//! LISTENs and wakes this process's subscriptions.
//! Both stop when the store is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Tells other processes of this process's appends (their subscriptions
/// LISTEN), with at most one NOTIFY per interval for all of them.
///
/// The first append statement after an interval without one carries the
/// NOTIFY itself: it commits with the events, so it costs no transaction and
/// no round trip of its own. An append statement that does not carry one
/// signals a background task, which sends a NOTIFY on a connection of its own
/// (`synchronous_commit` off) once the interval is over, unless a carried
/// NOTIFY committed meanwhile that covers the append. It waits half an
/// interval more than the appends do, so under steady load the appends carry
/// every NOTIFY; after the last append of a burst, other processes hear of it
/// within one and a half intervals.
///
/// A carried NOTIFY holds PostgreSQL's NOTIFY lock (one for the cluster)
/// through its statement's commit, so carrying statements of different
/// processes commit one after the other; one per interval per process keeps
/// that rare.
pub(super) struct Announcer {
    state: Arc<State>,
    pending: Arc<Notify>,
    _task: TaskGuard,
}

/// What the appends and the task share. Times are microseconds since `epoch`.
struct State {
    epoch: Instant,
    interval: u64,
    /// When the next NOTIFY may be sent.
    next_at: AtomicU64,
    /// Append statements that wrote something without carrying a NOTIFY, counted.
    announced: AtomicU64,
    /// How many of those a committed NOTIFY was sent after.
    covered: AtomicU64,
}

impl State {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Takes the next NOTIFY if it is due (`next_at` as read before), making
    /// the one after it due an interval from now.
    fn take_turn(&self, next_at: u64, now: u64) -> bool {
        now >= next_at
            && self.next_at.compare_exchange(next_at, now + self.interval, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// An append statement's turn to carry the NOTIFY: it covers the statements
/// announced before it was sent.
pub(super) struct Carry {
    seen: u64,
}

impl Announcer {
    pub fn start(pool: PgPool, interval: Duration) -> Self {
        let state = Arc::new(State {
            epoch: Instant::now(),
            interval: interval.as_micros() as u64,
            next_at: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            covered: AtomicU64::new(0),
        });
        let pending = Arc::new(Notify::new());
        let task = tokio::spawn(notify_loop(pool, state.clone(), pending.clone()));
        Self { state, pending, _task: TaskGuard(task) }
    }

    /// Called before an append statement is sent: `Some` if it is to carry the NOTIFY.
    pub fn claim(&self) -> Option<Carry> {
        let state = &self.state;
        let next_at = state.next_at.load(Ordering::Acquire);
        state.take_turn(next_at, state.now()).then(|| Carry { seen: state.announced.load(Ordering::Acquire) })
    }

    /// Called after an append statement committed, if it wrote anything.
    pub fn written(&self, carry: Option<Carry>) {
        match carry {
            Some(Carry { seen }) => {
                self.state.covered.fetch_max(seen, Ordering::AcqRel);
            }
            None => {
                self.state.announced.fetch_add(1, Ordering::AcqRel);
                self.pending.notify_one();
            }
        }
    }
}

/// Sends the NOTIFYs the appends did not carry: after an announcement, waits
/// until the appends have had their turn, then sends one unless a carried
/// NOTIFY covered it meanwhile.
async fn notify_loop(pool: PgPool, state: Arc<State>, pending: Arc<Notify>) {
    let mut connection: Option<PgConnection> = None;
    loop {
        pending.notified().await;
        loop {
            let next_at = state.next_at.load(Ordering::Acquire);
            let ours = next_at + state.interval / 2;
            tokio::time::sleep_until((state.epoch + Duration::from_micros(ours)).into()).await;
            let target = state.announced.load(Ordering::Acquire);
            if state.covered.load(Ordering::Acquire) >= target {
                break;
            }
            if !state.take_turn(next_at, state.now()) {
                continue; // an append statement carries one: wait for it, then look again
            }
            if connection.is_none() {
                connection = connect_for_notify(&pool).await;
            }
            let Some(conn) = connection.as_mut() else { break };
            match sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await {
                Ok(_) => {
                    state.covered.fetch_max(target, Ordering::AcqRel);
                }
                Err(error) => {
                    // Subscribers elsewhere fall back to polling; nothing is lost.
                    tracing::debug!(%error, "could not send the append notification");
                    connection = None;
                }
            }
            break;
        }
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
