//! The event store: one [`EventStore`] trait and its backends.
//!
//! - [`MemoryEventStore`]: in process, for unit tests of handlers.
//! - [`PgEventStore`]: PostgreSQL, the default. Its global log never skips an
//!   event, even when transactions commit out of sequence order (see `postgres`).
//! - `esdb::EsdbEventStore` (feature `eventstoredb`): EventStoreDB / KurrentDB.
//! - [`SharedTail`]: wraps a store so that the subscribers of one process
//!   share one follower of the log.
//!
//! [`Backend`] picks one from configuration (`EVENT_STORE_URL`). Every
//! backend passes the same suite, `conformance` (feature `testing`), within
//! the [`Guarantees`] it declares.

mod append;
mod backend;
mod error;
mod memory;
pub mod postgres;
mod shared;
mod snapshot;
mod subscription;
mod types;
pub mod watch;

#[cfg(feature = "testing")]
pub mod bench;
#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "eventstoredb")]
pub mod esdb;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use append::{MAX_EVENTS_PER_APPEND, MAX_STREAM_ID_LEN};
pub use backend::{Backend, EVENT_STORE_URL};
pub use error::{is_transient, StoreError};
pub use memory::MemoryEventStore;
pub use postgres::{PgEventStore, PgStoreConfig};
pub use shared::SharedTail;
pub use subscription::SubscriptionConfig;
pub use types::{
    AppendResult, ExpectedVersion, HorizonBlocker, LogPosition, LogStats, Metadata, NewEvent, RecordedEvent, Snapshot,
};

/// A live view of the global log: every event after a position, catch-up
/// first, then new events as they commit. It never ends by itself; a failure
/// is yielded as an `Err` item and the subscription retries after a backoff.
pub type EventStream = BoxStream<'static, Result<RecordedEvent, StoreError>>;

/// What a backend guarantees where backends differ (see
/// `docs/adr/0007-eventstoredb-backend.md`). The conformance suite checks
/// each backend against what it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guarantees {
    /// An event id is unique in the whole store: appending a stored id to
    /// another stream is refused (`DuplicateEventId`). Without it, ids are
    /// unique within a stream only.
    pub store_wide_event_ids: bool,
    /// A repeated append with [`ExpectedVersion::Any`] is recognised however
    /// old the original is. Without it, only within the backend's
    /// idempotence window; with an exact expected version (what the command
    /// handlers use) a repeat is recognised on every backend.
    ///
    /// On EventStoreDB that window is an in-memory cache on the leader,
    /// keyed from the append's first event id: a restart or a leader change
    /// empties it, and a repeat after that is stored again. A batch that
    /// mixes new ids with stored ones (`[new, stored]`) is not a repeat
    /// there: it is written, storing the old id a second time.
    pub any_version_repeats_always_recognised: bool,
}

impl Guarantees {
    /// PostgreSQL and memory: every guarantee.
    pub const FULL: Guarantees = Guarantees { store_wide_event_ids: true, any_version_repeats_always_recognised: true };
}

/// An append-only store of event streams with a global log.
///
/// Appends go to one stream at a time, atomically; there is no append across
/// streams (EventStoreDB has none), so a process that must change two
/// aggregates does it in two appends, each idempotent (the sagas).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one stream, atomically, if the stream is at the
    /// expected version. Appending events whose ids are all stored already,
    /// in this stream and with the same content, writes nothing and returns
    /// the original result (with `Any`, see [`Guarantees`]).
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// The events of one stream from `from_version` (1 is the first event)
    /// on, in order. An unknown stream reads empty.
    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// At most `limit` events of one stream from `from_version` on, in order:
    /// a page of a stream however long it has grown.
    async fn read_stream_page(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.read_stream(stream_id, from_version).await?;
        events.truncate(limit);
        Ok(events)
    }

    /// At most `limit` events of the global log after `after` (from the start
    /// with `None`), in log order. Only events that no still-open transaction
    /// can precede are returned, so a reader that resumes from the last
    /// position it saw never skips one.
    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Follows the global log after `after`: see [`EventStream`].
    fn subscribe(&self, after: Option<LogPosition>) -> EventStream;

    /// Where the readable log ends, and how far it lags what is committed.
    async fn stats(&self) -> Result<LogStats, StoreError>;

    /// The log position of the event whose global number is `position` (the
    /// `position` the command API answers with), if it is stored and readable.
    async fn locate(&self, position: u64) -> Result<Option<LogPosition>, StoreError>;

    /// How many readable events follow `after`, counting no further than
    /// `at_most` (positions are not dense on every backend, so a lag in
    /// events is counted, not subtracted). This default reads the log.
    async fn count_after(&self, after: Option<LogPosition>, at_most: u64) -> Result<u64, StoreError> {
        const PAGE: usize = 1_000;
        let (mut after, mut counted) = (after, 0u64);
        while counted < at_most {
            let page = self.read_all(after, PAGE).await?;
            counted += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.log_position),
                _ => break,
            }
        }
        Ok(counted.min(at_most))
    }

    /// The latest snapshot of a stream's aggregate, if one was kept.
    async fn read_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps a snapshot, unless one of a later version (of the same state
    /// schema) is kept already: it replaces the older one, or one of another
    /// schema. Callers on a command's path use [`EventStore::offer_snapshot`].
    async fn write_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError>;

    /// Writes a snapshot in the background, never waiting: a command that
    /// makes one is not slowed by it. Dropped when too many writes are in
    /// flight already, or when the write fails (logged): a lost snapshot
    /// only makes the next load fold more events.
    fn offer_snapshot(&self, snapshot: Snapshot);

    /// What this backend guarantees where backends differ.
    fn guarantees(&self) -> Guarantees {
        Guarantees::FULL
    }
}
