//! Catch-up-then-live subscriptions, shared by the backends: read pages of
//! the log after the last position seen; when none is left, wait for a
//! wake-up (an append, a NOTIFY) or a poll interval, whichever comes first.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::{EventStream, LogPosition, RecordedEvent, StoreError};

/// How a subscription reads and waits.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    /// Events read per query.
    pub batch_size: usize,
    /// Poll interval when nothing is known to be waiting (the fallback for a lost wake-up).
    pub idle_poll: Duration,
    /// Poll interval while committed events are held back behind an open
    /// transaction: under load, what a live subscriber waits most often.
    pub held_back_poll: Duration,
    /// Longest wait between retries after a failed read.
    pub max_error_backoff: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            held_back_poll: Duration::from_millis(2),
            max_error_backoff: Duration::from_secs(5),
        }
    }
}

/// What a backend provides to be followed.
pub(crate) trait Tail: Clone + Send + Sync + 'static {
    /// At most `limit` readable events after `after`.
    fn fetch(
        &self,
        after: Option<LogPosition>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Whether committed events after `after` cannot be read yet (held back
    /// behind an older transaction still open).
    fn held_back(&self, after: Option<LogPosition>) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A counter bumped whenever new events may be readable.
    fn wakeups(&self) -> watch::Receiver<u64>;
}

struct Follower<T> {
    tail: T,
    config: SubscriptionConfig,
    after: Option<LogPosition>,
    buffer: VecDeque<RecordedEvent>,
    wake: Option<watch::Receiver<u64>>,
    /// The last page came back short: it reached the horizon.
    at_horizon: bool,
    backoff: Option<Duration>,
}

pub(crate) fn follow<T: Tail>(tail: T, after: Option<LogPosition>, config: SubscriptionConfig) -> EventStream {
    let follower =
        Follower { tail, config, after, buffer: VecDeque::new(), wake: None, at_horizon: false, backoff: None };
    Box::pin(futures_util::stream::unfold(follower, |mut f| async move {
        let item = f.next().await;
        Some((item, f))
    }))
}

/// Runs a read in a task of its own, so that it completes (or times out) on
/// its own clock even while the consumer pauses between polls of the stream.
async fn spawned<R: Send + 'static>(
    read: impl Future<Output = Result<R, StoreError>> + Send + 'static,
) -> Result<R, StoreError> {
    match tokio::spawn(read).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(StoreError::Unavailable("the runtime is shutting down".into())),
    }
}

impl<T: Tail> Follower<T> {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = Some(event.log_position);
                return Ok(event);
            }
            if let Some(backoff) = self.backoff {
                tokio::time::sleep(backoff).await;
            }
            let wake = self.wake.get_or_insert_with(|| self.tail.wakeups());
            if self.at_horizon {
                // The events read were handed out first; now, before waiting,
                // is something committed held back (poll soon) or not (wait
                // for a wake-up: an append, a NOTIFY)?
                let (tail, after) = (self.tail.clone(), self.after);
                let held_back = match spawned(async move { tail.held_back(after).await }).await {
                    Ok(held_back) => held_back,
                    Err(error) => return Err(self.failed(error)),
                };
                let poll = if held_back { self.config.held_back_poll } else { self.config.idle_poll };
                tokio::select! {
                    // An error means the sender is gone: fall back to polling.
                    changed = wake.changed() => if changed.is_err() { tokio::time::sleep(poll).await },
                    () = tokio::time::sleep(poll) => {}
                }
                self.at_horizon = false;
            }
            // Wake-ups from here on are for events this read may not see.
            wake.borrow_and_update();
            let (tail, after, limit) = (self.tail.clone(), self.after, self.config.batch_size);
            match spawned(async move { tail.fetch(after, limit).await }).await {
                Ok(events) => {
                    self.backoff = None;
                    self.at_horizon = events.len() < limit;
                    self.buffer.extend(events);
                }
                Err(error) => return Err(self.failed(error)),
            }
        }
    }

    /// Backs off before the next read, and hands the error on.
    fn failed(&mut self, error: StoreError) -> StoreError {
        let next = self.backoff.map_or(Duration::from_millis(100), |b| b * 2);
        self.backoff = Some(next.min(self.config.max_error_backoff));
        error
    }
}
