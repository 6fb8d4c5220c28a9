//! The event store: one [`EventStore`] trait and its backends.
//!
//! - [`MemoryEventStore`]: in process, for unit tests of handlers.
//! - [`PgEventStore`]: PostgreSQL, the default. Its global log never skips an
//!   event, even when transactions commit out of sequence order (see `postgres`).
//! - [`SharedTail`]: wraps a store so that the subscribers of one process
//!   share one follower of the log.
//!
//! Every backend passes the same suite, `conformance` (feature `testing`).

mod append;
mod error;
mod memory;
pub mod postgres;
mod shared;
mod subscription;
mod types;

#[cfg(feature = "testing")]
pub mod bench;
#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use append::{MAX_EVENTS_PER_APPEND, MAX_STREAM_ID_LEN};
pub use error::StoreError;
pub use memory::MemoryEventStore;
pub use postgres::{PgEventStore, PgStoreConfig};
pub use shared::SharedTail;
pub use subscription::SubscriptionConfig;
pub use types::{AppendResult, ExpectedVersion, LogPosition, LogStats, Metadata, NewEvent, RecordedEvent};

/// A live view of the global log: every event after a position, catch-up
/// first, then new events as they commit. It never ends by itself; a failure
/// is yielded as an `Err` item and the subscription retries after a backoff.
pub type EventStream = BoxStream<'static, Result<RecordedEvent, StoreError>>;

/// An append-only store of event streams with a global log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one stream, atomically, if the stream is at the
    /// expected version. Appending events whose ids are all stored already,
    /// in this stream and with the same content, writes nothing and returns
    /// the original result.
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// The events of one stream from `from_version` (1 is the first event)
    /// on, in order. An unknown stream reads empty.
    async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// At most `limit` events of the global log after `after` (from the start
    /// with `None`), in log order. Only events that no still-open transaction
    /// can precede are returned, so a reader that resumes from the last
    /// position it saw never skips one.
    async fn read_all(&self, after: Option<LogPosition>, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Follows the global log after `after`: see [`EventStream`].
    fn subscribe(&self, after: Option<LogPosition>) -> EventStream;

    /// Where the readable log ends, and how far it lags what is committed.
    async fn stats(&self) -> Result<LogStats, StoreError>;
}
