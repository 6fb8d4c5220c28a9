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
    /// How long a subscriber lets events gather after a wake-up before it
    /// reads (and the least it waits between polls while events are held
    /// back): a read, and whatever the subscriber does per read, then covers
    /// every commit of that time instead of one. Zero: read at once (the
    /// relay, on the sagas' path); the projections gather (see their config).
    pub gather: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            idle_poll: Duration::from_millis(500),
            held_back_poll: Duration::from_millis(2),
            max_error_backoff: Duration::from_secs(5),
            gather: Duration::ZERO,
        }
    }
}

/// One read of the log.
pub(crate) struct Page {
    /// At most the limit asked for, readable, in log order.
    pub events: Vec<RecordedEvent>,
    /// Committed events after these cannot be read yet (held back behind an
    /// older transaction still open): poll again soon rather than wait for a
    /// wake-up. Told only when the page came back short.
    pub held_back: bool,
}

/// What a backend provides to be followed.
pub(crate) trait Tail: Clone + Send + Sync + 'static {
    /// At most `limit` readable events after `after`, and whether more are
    /// held back, in one read.
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
    /// The last page came back short: it reached the horizon; and whether
    /// committed events were held back behind it then.
    at_horizon: Option<Horizon>,
    backoff: Option<Duration>,
}

pub(crate) fn follow<T: Tail>(tail: T, after: Option<LogPosition>, config: SubscriptionConfig) -> EventStream {
    let follower =
        Follower { tail, config, after, buffer: VecDeque::new(), wake: None, at_horizon: None, backoff: None };
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

/// What a short page found behind the horizon.
#[derive(Debug, Clone, Copy)]
enum Horizon {
    Clear,
    HeldBack,
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
            if let Some(horizon) = self.at_horizon.take() {
                // The events read were handed out first; now wait: briefly if
                // something committed was held back, else for a wake-up (an
                // append, a NOTIFY).
                let poll = match horizon {
                    Horizon::HeldBack => self.config.held_back_poll.max(self.config.gather),
                    Horizon::Clear => self.config.idle_poll,
                };
                tokio::select! {
                    // An error means the sender is gone: fall back to polling.
                    changed = wake.changed() => match changed {
                        Ok(()) => tokio::time::sleep(self.config.gather).await,
                        Err(_) => tokio::time::sleep(poll).await,
                    },
                    () = tokio::time::sleep(poll) => {}
                }
            }
            // Wake-ups from here on are for events this read may not see.
            wake.borrow_and_update();
            let (tail, after, limit) = (self.tail.clone(), self.after, self.config.batch_size);
            match spawned(async move { tail.fetch(after, limit).await }).await {
                Ok(Page { events, held_back }) => {
                    self.backoff = None;
                    self.at_horizon =
                        (events.len() < limit).then_some(if held_back { Horizon::HeldBack } else { Horizon::Clear });
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;

    use super::*;
    use crate::Metadata;

    /// A log in memory that counts its reads.
    #[derive(Clone)]
    struct CountingTail {
        events: Arc<Mutex<Vec<RecordedEvent>>>,
        reads: Arc<AtomicUsize>,
        wake: Arc<watch::Sender<u64>>,
    }

    impl CountingTail {
        fn new() -> Self {
            Self { events: Arc::default(), reads: Arc::default(), wake: Arc::new(watch::Sender::new(0)) }
        }

        fn append(&self) {
            let mut events = self.events.lock().unwrap();
            let n = events.len() as u64 + 1;
            events.push(RecordedEvent {
                event_id: uuid::Uuid::new_v4(),
                stream_id: "inventory-SKU-1".into(),
                stream_version: n,
                log_position: LogPosition { commit: n, position: n },
                event_type: "StockReceived".into(),
                schema_version: 1,
                payload: serde_json::json!({}),
                metadata: Metadata::default(),
                recorded_at: chrono::Utc::now(),
            });
            drop(events);
            self.wake.send_modify(|n| *n += 1);
        }
    }

    impl Tail for CountingTail {
        async fn fetch(&self, after: Option<LogPosition>, limit: usize) -> Result<Page, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let events = self.events.lock().unwrap();
            let events = events.iter().filter(|e| Some(e.log_position) > after).take(limit).cloned().collect();
            Ok(Page { events, held_back: false })
        }

        fn wakeups(&self) -> watch::Receiver<u64> {
            self.wake.subscribe()
        }
    }

    /// Ten commits 5 ms apart, read by a subscriber that reads at once and by
    /// one that gathers for 100 ms after a wake-up: the first reads about
    /// once per commit, the second a few times for all of them.
    #[tokio::test]
    async fn a_gathering_subscriber_reads_many_commits_at_once() {
        let mut reads = Vec::new();
        for gather in [Duration::ZERO, Duration::from_millis(100)] {
            let tail = CountingTail::new();
            let config = SubscriptionConfig { gather, idle_poll: Duration::from_secs(5), ..Default::default() };
            let mut events = follow(tail.clone(), None, config);
            let reading = tokio::spawn(async move {
                for _ in 0..10 {
                    events.next().await.unwrap().unwrap();
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            for _ in 0..10 {
                tail.append();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reading.await.unwrap();
            reads.push(tail.reads.load(Ordering::SeqCst));
        }
        assert!(reads[0] >= 6, "reading at once: {reads:?}");
        assert!(reads[1] <= 3, "gathering: {reads:?}");
    }
}
