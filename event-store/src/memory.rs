//! An in-process event store for unit tests of handlers. Same contract as
//! PostgreSQL; every append commits at once, so the log is simply the order
//! of appends (`commit == position`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;

use crate::subscription::{self, Page, SubscriptionConfig, Tail};
use crate::{
    append, snapshot, AppendResult, EventStore, EventStream, ExpectedVersion, LogPosition, LogStats, NewEvent,
    RecordedEvent, Snapshot, StoreError,
};

#[derive(Clone, Default)]
pub struct MemoryEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    log: Mutex<Log>,
    snapshots: Mutex<HashMap<String, Snapshot>>,
    wake: watch::Sender<u64>,
    subscription: SubscriptionConfig,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            log: Mutex::default(),
            snapshots: Mutex::default(),
            wake: watch::Sender::new(0),
            subscription: SubscriptionConfig::default(),
        }
    }
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    /// Stream id -> indexes into `events`, in stream order.
    streams: HashMap<String, Vec<usize>>,
    /// Event id -> index into `events`.
    ids: HashMap<uuid::Uuid, usize>,
}

impl MemoryEventStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written:
        // appends check everything before they change anything.
        self.inner.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_after(&self, after: Option<LogPosition>, limit: usize) -> Vec<RecordedEvent> {
        let log = self.log();
        let start = after.map_or(0, |p| p.position as usize);
        log.events.iter().skip(start).take(limit).cloned().collect()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append::validate(stream_id, &events)?;
        let result = {
            let mut log = self.log();
            let stored: Vec<RecordedEvent> =
                events.iter().filter_map(|e| log.ids.get(&e.event_id)).map(|&i| log.events[i].clone()).collect();
            if !stored.is_empty() {
                return append::replayed_result(stream_id, &events, stored);
            }
            let version = log.streams.get(stream_id).map_or(0, |s| s.len() as u64);
            if expected.required().is_some_and(|required| required != version) {
                return Err(StoreError::WrongExpectedVersion {
                    stream_id: stream_id.to_owned(),
                    expected,
                    actual: version,
                });
            }
            let recorded_at = Utc::now();
            let mut last = None;
            for (n, event) in events.into_iter().enumerate() {
                let index = log.events.len();
                let position = index as u64 + 1;
                let recorded = RecordedEvent {
                    log_position: LogPosition { commit: position, position },
                    event_id: event.event_id,
                    stream_id: stream_id.to_owned(),
                    stream_version: version + n as u64 + 1,
                    event_type: event.event_type,
                    schema_version: event.schema_version,
                    payload: event.payload,
                    metadata: event.metadata,
                    recorded_at,
                };
                last =
                    Some(AppendResult { stream_version: recorded.stream_version, log_position: recorded.log_position });
                log.ids.insert(recorded.event_id, index);
                log.streams.entry(stream_id.to_owned()).or_default().push(index);
                log.events.push(recorded);
            }
            last.expect("validated: at least one event")
        };
        self.inner.wake.send_modify(|n| *n += 1);
        Ok(result)
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
        let log = self.log();
        let skip = from_version.saturating_sub(1) as usize;
        let indexes = log.streams.get(stream_id).map_or(&[][..], Vec::as_slice);
        Ok(indexes.iter().skip(skip).map(|&i| log.events[i].clone()).collect())
    }

    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.read_after(after, limit))
    }

    fn subscribe(&self, after: Option<LogPosition>) -> EventStream {
        subscription::follow(self.clone(), after, self.inner.subscription.clone())
    }

    async fn stats(&self) -> Result<LogStats, StoreError> {
        let log = self.log();
        Ok(LogStats { readable_head: log.events.last().map(|e| e.log_position), ..LogStats::default() })
    }

    async fn read_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.inner.snapshots.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(stream_id).cloned())
    }

    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut snapshots = self.inner.snapshots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let kept = snapshots.get(&snapshot.stream_id);
        if kept.is_none_or(|kept| snapshot::replaces(&snapshot, kept)) {
            snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }

    fn offer_snapshot(&self, snapshot: Snapshot) {
        snapshot::offer(self, snapshot);
    }

    async fn locate(&self, position: u64) -> Result<Option<LogPosition>, StoreError> {
        let index = usize::try_from(position).ok().and_then(|p| p.checked_sub(1));
        Ok(index.and_then(|i| self.log().events.get(i).map(|e| e.log_position)))
    }
}

impl Tail for MemoryEventStore {
    async fn fetch(&self, after: Option<LogPosition>, limit: usize) -> Result<Page, StoreError> {
        // Appends are visible when they return: nothing is ever held back.
        Ok(Page { events: self.read_after(after, limit), held_back: false })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }
}
