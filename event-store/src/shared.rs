//! One follower of the global log for every subscriber in a process.
//!
//! [`SharedTail`] wraps a store: appends and reads go straight through, but
//! subscriptions share one live follower of the log and a window of its most
//! recent events. A subscriber whose position lies in the window reads from
//! memory; one further behind (catching up, or too slow to stay in the
//! window) reads pages from the store until it reaches the window. So a
//! process that runs several projections reads each new event from the
//! database once, not once per projection.
//!
//! The window holds every readable event after its start, in log order: it
//! starts at the readable head when the first subscriber arrives and grows
//! by following the log from there, so for any position at or after its
//! start, the events after that position are the window's events after it.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::{
    AppendResult, EventStore, EventStream, ExpectedVersion, LogPosition, LogStats, NewEvent, RecordedEvent, Snapshot,
    StoreError,
};

/// Events a subscriber takes from the window, or reads from the store, at a time.
const PAGE: usize = 500;

pub struct SharedTail {
    inner: Arc<dyn EventStore>,
    window: Arc<Window>,
    follower: OnceLock<tokio::task::JoinHandle<()>>,
}

struct Window {
    /// `None` until the follower knows where it starts.
    events: RwLock<Option<Recent>>,
    /// Bumped when events arrive.
    grown: watch::Sender<u64>,
    capacity: usize,
}

struct Recent {
    /// The window holds every readable event after this position (`None`: from the start of the log).
    after: Option<LogPosition>,
    events: VecDeque<RecordedEvent>,
}

impl SharedTail {
    /// Shares `inner`'s log among this process's subscribers, keeping the
    /// last `capacity` events in memory.
    pub fn new(inner: Arc<dyn EventStore>, capacity: usize) -> Self {
        let window = Window { events: RwLock::new(None), grown: watch::Sender::new(0), capacity: capacity.max(1) };
        Self { inner, window: Arc::new(window), follower: OnceLock::new() }
    }

    fn start_following(&self) {
        self.follower.get_or_init(|| tokio::spawn(follow(self.inner.clone(), self.window.clone())));
    }
}

impl Drop for SharedTail {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.get() {
            follower.abort();
        }
    }
}

/// Fills the window: from the readable head on, every event in log order.
async fn follow(inner: Arc<dyn EventStore>, window: Arc<Window>) {
    let mut backoff = std::time::Duration::from_millis(100);
    let head = loop {
        match inner.stats().await {
            Ok(stats) => break stats.readable_head,
            Err(error) => {
                tracing::warn!(%error, "the shared log follower cannot find the head; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    *window.events.write().expect("window lock") = Some(Recent { after: head, events: VecDeque::new() });
    window.grown.send_modify(|n| *n += 1);
    // Errors are retried by the subscription, from its last event.
    let mut events = inner.subscribe(head).ready_chunks(PAGE);
    while let Some(chunk) = events.next().await {
        let arrived: Vec<RecordedEvent> = chunk
            .into_iter()
            .filter_map(|item| item.map_err(|error| tracing::warn!(%error, "the shared log follower cannot read")).ok())
            .collect();
        if arrived.is_empty() {
            continue;
        }
        {
            let mut guard = window.events.write().expect("window lock");
            let recent = guard.as_mut().expect("set above");
            recent.events.extend(arrived);
            while recent.events.len() > window.capacity {
                let dropped = recent.events.pop_front().expect("longer than the capacity");
                recent.after = Some(dropped.log_position);
            }
        }
        window.grown.send_modify(|n| *n += 1);
    }
}

impl Window {
    /// Up to `PAGE` events after `after`, if the window covers that position.
    fn after(&self, after: Option<LogPosition>) -> Option<Vec<RecordedEvent>> {
        let guard = self.events.read().expect("window lock");
        let recent = guard.as_ref()?;
        if after < recent.after {
            return None;
        }
        let first = recent.events.partition_point(|event| Some(event.log_position) <= after);
        Some(recent.events.range(first..).take(PAGE).cloned().collect())
    }
}

/// A subscriber: takes from the window, or reads from the store until it
/// reaches the window.
struct Subscriber {
    inner: Arc<dyn EventStore>,
    window: Arc<Window>,
    grown: watch::Receiver<u64>,
    after: Option<LogPosition>,
    buffer: VecDeque<RecordedEvent>,
}

impl Subscriber {
    async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = Some(event.log_position);
                return Ok(event);
            }
            self.grown.borrow_and_update();
            match self.window.after(self.after) {
                Some(events) if events.is_empty() => {
                    // Caught up: wait for the follower. (This subscriber
                    // holds the window, so the sender outlives the wait.)
                    let _ = self.grown.changed().await;
                }
                Some(events) => self.buffer.extend(events),
                None => {
                    let page = self.inner.read_all(self.after, PAGE).await?;
                    if page.is_empty() {
                        // Behind the window's start, yet nothing readable: the
                        // follower has not started yet. Wait for it.
                        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), self.grown.changed()).await;
                    }
                    self.buffer.extend(page);
                }
            }
        }
    }
}

#[async_trait]
impl EventStore for SharedTail {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream_id, expected, events).await
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream_id, from_version).await
    }

    async fn read_stream_page(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream_page(stream_id, from_version, limit).await
    }

    async fn read_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.read_snapshot(stream_id).await
    }

    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.write_snapshot(snapshot).await
    }

    fn offer_snapshot(&self, snapshot: Snapshot) {
        self.inner.offer_snapshot(snapshot);
    }

    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    fn subscribe(&self, after: Option<LogPosition>) -> EventStream {
        self.start_following();
        let subscriber = Subscriber {
            inner: self.inner.clone(),
            window: self.window.clone(),
            grown: self.window.grown.subscribe(),
            after,
            buffer: VecDeque::new(),
        };
        Box::pin(futures_util::stream::unfold(subscriber, |mut subscriber| async move {
            let item = subscriber.next().await;
            if item.is_err() {
                // As the backends' subscriptions do: pause, then go on from the last event.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Some((item, subscriber))
        }))
    }

    async fn stats(&self) -> Result<LogStats, StoreError> {
        self.inner.stats().await
    }

    async fn locate(&self, position: u64) -> Result<Option<LogPosition>, StoreError> {
        self.inner.locate(position).await
    }

    async fn count_after(&self, after: Option<LogPosition>, at_most: u64) -> Result<u64, StoreError> {
        self.inner.count_after(after, at_most).await
    }

    fn guarantees(&self) -> crate::Guarantees {
        self.inner.guarantees()
    }
}
