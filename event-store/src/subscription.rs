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
            held_back_poll: Duration::from_millis(50),
            max_error_backoff: Duration::from_secs(5),
        }
    }
}

/// One page of the log.
pub(crate) struct Page {
    pub events: Vec<RecordedEvent>,
    /// Committed events exist after the page that may not be read yet.
    pub held_back: bool,
}

/// What a backend provides to be followed.
pub(crate) trait Tail: Send + Sync + 'static {
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
    backoff: Option<Duration>,
}

pub(crate) fn follow<T: Tail>(tail: T, after: Option<LogPosition>, config: SubscriptionConfig) -> EventStream {
    let follower = Follower { tail, config, after, buffer: VecDeque::new(), wake: None, backoff: None };
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
            if let Some(backoff) = self.backoff {
                tokio::time::sleep(backoff).await;
            }
            let wake = self.wake.get_or_insert_with(|| self.tail.wakeups());
            wake.borrow_and_update();
            match self.tail.fetch(self.after, self.config.batch_size).await {
                Ok(page) if !page.events.is_empty() => {
                    self.backoff = None;
                    self.buffer.extend(page.events);
                }
                Ok(page) => {
                    self.backoff = None;
                    let poll = if page.held_back { self.config.held_back_poll } else { self.config.idle_poll };
                    tokio::select! {
                        // An error means the sender is gone: fall back to polling.
                        changed = wake.changed() => if changed.is_err() { tokio::time::sleep(poll).await },
                        () = tokio::time::sleep(poll) => {}
                    }
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
