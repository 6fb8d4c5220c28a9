//! Read-your-writes: a command answers with the global `position` of its last
//! event; a query with `?min_position=N` waits until the read model's
//! projection has applied that event.
//!
//! Waiting costs almost nothing per waiter. Projections NOTIFY
//! `projection_progress` with their new checkpoint when they commit a batch;
//! one LISTEN connection per process keeps where each projection stands, and
//! every waiter compares against that, without a query of its own. While
//! anyone waits, one poll of all checkpoints (every 250 ms) covers a lost
//! notification. A query first asks the database once (its position in the
//! log, and whether the read model has applied it): most need no wait. A
//! waiter then queries only to find a position the log lacks yet (after
//! 250 ms, then less and less often, at least every second).
//!
//! The waiters are bounded, per client and in all ([`WaiterLimits`]): beyond
//! them a query is refused at once (429 or 503, `Retry-After`) instead of
//! holding a connection and a task for the whole wait. A query that needs no
//! wait never counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use event_store::{EventStore, LogPosition, StoreError};
use read_models::checkpoints;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How often the checkpoints are read while anyone waits, and how soon a
/// waiter looks again for a position the log does not have yet.
const POLL: Duration = Duration::from_millis(250);
/// The longest a waiter goes between two looks for its position.
const LOOKUP_GAP_MAX: Duration = Duration::from_secs(1);

/// Why a wait for a position could not tell.
#[derive(Debug)]
pub enum ProgressError {
    /// The read models' database.
    Database(sqlx::Error),
    /// The event store, where the position is looked up.
    Store(StoreError),
    /// This client waits for positions too often at once already.
    TooManyForClient { limit: usize },
    /// The process holds as many waiters as it allows.
    TooMany { limit: usize },
}

/// How many queries may wait for a position at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaiterLimits {
    /// `MIN_POSITION_WAITERS`: in all.
    pub total: usize,
    /// `MIN_POSITION_WAITERS_PER_CLIENT`: per client (the token's subject,
    /// or the peer address without auth: the rate limiter's key).
    pub per_client: usize,
}

impl Default for WaiterLimits {
    fn default() -> Self {
        Self { total: 1_000, per_client: 20 }
    }
}

/// Where each projection stands, as last heard.
type Standing = HashMap<String, Option<LogPosition>>;

#[derive(Clone)]
pub struct Progress {
    pool: PgPool,
    standing: Arc<watch::Sender<Standing>>,
    waiters: Arc<Waiters>,
}

impl Progress {
    /// Starts listening (and polling while anyone waits); the tasks end with the runtime.
    pub fn start(pool: PgPool, limits: WaiterLimits) -> Self {
        let standing = Arc::new(watch::Sender::new(Standing::new()));
        let waiters = Arc::new(Waiters::new(limits));
        tokio::spawn(listen(pool.clone(), standing.clone()));
        tokio::spawn(poll_while_waited_for(pool.clone(), standing.clone(), waiters.clone()));
        Self { pool, standing, waiters }
    }

    /// Waits, at most `limit`, until `projection` has applied the event at
    /// global `position` (found in `store`'s log; one not there yet, or
    /// never, is not reached). `client` keys the per-client bound.
    pub async fn wait_for(
        &self,
        store: &Arc<dyn EventStore>,
        projection: &str,
        position: u64,
        limit: Duration,
        client: &str,
    ) -> Result<bool, ProgressError> {
        let deadline = Instant::now() + limit;
        // Subscribed first, so that no progress between the check below and
        // the wait goes unheard.
        let mut heard = self.standing.subscribe();
        // Most queries need no wait: their event is applied already. They are
        // answered without taking a waiter's place.
        let mut located = store.locate(position).await.map_err(ProgressError::Store)?;
        if let Some(at) = located {
            if checkpoints::reached(&self.pool, projection, at).await.map_err(ProgressError::Database)? {
                return Ok(true);
            }
        }
        let _admitted = self.waiters.admit(client)?;
        let (mut next_lookup, mut lookup_gap) = (Instant::now() + POLL, POLL * 2);
        loop {
            if located.is_none() && Instant::now() >= next_lookup {
                located = store.locate(position).await.map_err(ProgressError::Store)?;
                // A position the log lacks is looked for less and less often.
                next_lookup = Instant::now() + lookup_gap;
                lookup_gap = (lookup_gap * 2).min(LOOKUP_GAP_MAX);
            }
            if let Some(at) = located {
                if heard.borrow_and_update().get(projection).copied().flatten() >= Some(at) {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            let nap = if located.is_none() { next_lookup.min(deadline) } else { deadline };
            tokio::select! {
                changed = heard.changed() => if changed.is_err() { return Ok(false) },
                () = tokio::time::sleep_until(nap) => {}
            }
        }
    }

    /// Waits, at most `limit`, until `follower` has applied every event that
    /// `leader` has applied now: what one read model shows of an event, the
    /// other shows too.
    pub async fn wait_caught_up(
        &self,
        follower: &str,
        leader: &str,
        limit: Duration,
        client: &str,
    ) -> Result<bool, ProgressError> {
        let leader_at = checkpoints::position(&self.pool, leader).await.map_err(ProgressError::Database)?;
        let Some(at) = leader_at else { return Ok(true) };
        let deadline = Instant::now() + limit;
        let mut heard = self.standing.subscribe();
        if checkpoints::reached(&self.pool, follower, at).await.map_err(ProgressError::Database)? {
            return Ok(true);
        }
        let _admitted = self.waiters.admit(client)?;
        loop {
            if heard.borrow_and_update().get(follower).copied().flatten() >= Some(at) {
                return Ok(true);
            }
            tokio::select! {
                changed = heard.changed() => if changed.is_err() { return Ok(false) },
                () = tokio::time::sleep_until(deadline) => return Ok(false),
            }
        }
    }

    /// How many queries wait now (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.waiters.limits.total - self.waiters.total.available_permits()
    }
}

/// The waiters admitted: a permit each of `total`, and a count per client.
struct Waiters {
    limits: WaiterLimits,
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<String, usize>>,
}

/// One admitted waiter; dropping it lets another in.
struct Admitted<'a> {
    waiters: &'a Waiters,
    client: String,
    _permit: OwnedSemaphorePermit,
}

impl Waiters {
    fn new(limits: WaiterLimits) -> Self {
        Self { limits, total: Arc::new(Semaphore::new(limits.total)), per_client: Mutex::default() }
    }

    fn admit(&self, client: &str) -> Result<Admitted<'_>, ProgressError> {
        let mut per_client = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_client.get(client).copied().unwrap_or(0);
        if count >= self.limits.per_client {
            return Err(ProgressError::TooManyForClient { limit: self.limits.per_client });
        }
        let permit =
            self.total.clone().try_acquire_owned().map_err(|_| ProgressError::TooMany { limit: self.limits.total })?;
        per_client.insert(client.to_owned(), count + 1);
        Ok(Admitted { waiters: self, client: client.to_owned(), _permit: permit })
    }

    fn anyone(&self) -> bool {
        self.total.available_permits() < self.limits.total
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut per_client = self.waiters.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

/// Keeps `standing` up to date from the projections' notifications.
async fn listen(pool: PgPool, standing: Arc<watch::Sender<Standing>>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen(checkpoints::PROGRESS_CHANNEL).await {
                    tracing::warn!(%error, "cannot LISTEN for projection progress");
                } else {
                    while let Ok(notification) = listener.recv().await {
                        match parse_progress(notification.payload()) {
                            Some((name, at)) => {
                                standing.send_modify(|standing| {
                                    standing.insert(name.to_owned(), Some(at));
                                });
                            }
                            None => tracing::warn!(payload = notification.payload(), "unreadable projection progress"),
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot connect to LISTEN for projection progress"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `<name> <commit> <position>`, as `checkpoints` notifies it.
fn parse_progress(payload: &str) -> Option<(&str, LogPosition)> {
    let mut parts = payload.split(' ');
    let (name, commit, position) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let at = checkpoints::position_of(commit.parse().ok()?, position.parse().ok()?)?;
    Some((name, at))
}

/// While anyone waits, reads every checkpoint every [`POLL`]: one query for
/// all waiters, in case a notification was lost (a LISTEN connection lost).
async fn poll_while_waited_for(pool: PgPool, standing: Arc<watch::Sender<Standing>>, waiters: Arc<Waiters>) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !waiters.anyone() {
            continue;
        }
        match checkpoints::all_positions(&pool).await {
            Ok(read) => {
                standing.send_if_modified(|standing| {
                    let changed = read.iter().any(|(name, at)| standing.get(name) != Some(at));
                    standing.extend(read);
                    changed
                });
            }
            Err(error) => tracing::warn!(%error, "cannot read the projections' checkpoints"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_payloads_are_read_as_the_checkpoints_notify_them() {
        let at = LogPosition { commit: 7, position: 42 };
        assert_eq!(parse_progress("orders 7 42"), Some(("orders", at)));
        for bad in ["", "orders", "orders 7", "orders x 42", "orders 7 42 1", "orders 7 0"] {
            assert_eq!(parse_progress(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn waiters_are_bounded_per_client_and_in_all() {
        let waiters = Waiters::new(WaiterLimits { total: 3, per_client: 2 });
        let first = waiters.admit("a").unwrap();
        let _second = waiters.admit("a").unwrap();
        assert!(matches!(waiters.admit("a"), Err(ProgressError::TooManyForClient { limit: 2 })));
        let _third = waiters.admit("b").unwrap();
        assert!(matches!(waiters.admit("c"), Err(ProgressError::TooMany { limit: 3 })));
        drop(first);
        let _again = waiters.admit("a").unwrap();
        assert!(waiters.anyone());
    }

    #[test]
    fn a_client_that_stopped_waiting_is_forgotten() {
        let waiters = Waiters::new(WaiterLimits::default());
        drop(waiters.admit("a").unwrap());
        assert!(waiters.per_client.lock().unwrap().is_empty() && !waiters.anyone());
    }
}
