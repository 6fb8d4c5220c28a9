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
    /// Poll interval while committed events are held back behind an open transaction.
    pub held_back_poll: Duration,
    /// Longest wait between retries after a failed read.
    pub max_error_backoff: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            held_back_poll: Duration::from_millis(5),
            max_error_backoff: Duration::from_secs(5),
        }
    }
}

/// One page of the log.
pub(crate) struct Page {
    pub events: Vec<RecordedEvent>,
    /// The page is short, and committed events after it cannot be read yet.
    pub held_back: bool,
}

/// What a backend provides to be followed.
pub(crate) trait Tail: Clone + Send + Sync + 'static {
    fn fetch(&self, after: Option<LogPosition>, limit: usize) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// A counter bumped whenever new events may be readable.
    fn wakeups(&self) -> watch::Receiver<u64>;
}

struct Follower<T> {
    tail: T,
    config: SubscriptionConfig,
    after: Option<LogPosition>,
    buffer: VecDeque<RecordedEvent>,
    wake: Option<watch::Receiver<u64>>,
    /// Set by a page that came back short: wait for a wake-up, or this long, before reading again.
    wait: Option<Duration>,
    backoff: Option<Duration>,
}

pub(crate) fn follow<T: Tail>(tail: T, after: Option<LogPosition>, config: SubscriptionConfig) -> EventStream {
    let follower = Follower { tail, config, after, buffer: VecDeque::new(), wake: None, wait: None, backoff: None };
    Box::pin(futures_util::stream::unfold(follower, |mut f| async move {
        let item = f.next().await;
        Some((item, f))
    }))
}

impl<T: Tail> Follower<T> {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = Some(event.log_position);
                return Ok(event);
            }
            let wake = self.wake.get_or_insert_with(|| self.tail.wakeups());
            if let Some(poll) = self.wait.take() {
                // The last page reached the horizon: nothing to read before a
                // wake-up (an append, a NOTIFY) or the poll interval.
                tokio::select! {
                    // An error means the sender is gone: fall back to polling.
                    changed = wake.changed() => if changed.is_err() { tokio::time::sleep(poll).await },
                    () = tokio::time::sleep(poll) => {}
                }
            }
            if let Some(backoff) = self.backoff {
                tokio::time::sleep(backoff).await;
            }
            // Wake-ups from here on are for events this read may not see.
            wake.borrow_and_update();
            // The read runs in a task of its own, so that it completes (or
            // times out) on its own clock even while the consumer pauses
            // between polls of this stream.
            let fetch = {
                let (tail, after, limit) = (self.tail.clone(), self.after, self.config.batch_size);
                tokio::spawn(async move { tail.fetch(after, limit).await })
            };
            let fetched = match fetch.await {
                Ok(fetched) => fetched,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(_) => Err(StoreError::Unavailable("the runtime is shutting down".into())),
            };
            match fetched {
                Ok(page) => {
                    self.backoff = None;
                    if page.events.len() < self.config.batch_size {
                        self.wait =
                            Some(if page.held_back { self.config.held_back_poll } else { self.config.idle_poll });
                    }
                    self.buffer.extend(page.events);
                }
                Err(error) => {
                    let next = self.backoff.map_or(Duration::from_millis(100), |b| b * 2);
                    self.backoff = Some(next.min(self.config.max_error_backoff));
                    return Err(error);
                }
            }
        }
    }
}
