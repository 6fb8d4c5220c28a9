//! The values that cross the [`EventStore`](crate::EventStore) trait.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the writer expects the stream's version to be (the number of events in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet (the same as `Exact(0)`).
    NoStream,
    /// The stream must hold exactly this many events.
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the stream must be at, if any (`NoStream` is 0).
    pub fn required(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(v) => Some(v),
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Where an event stands in the global log. The log is ordered by
/// `(commit, position)`; a reader resumes after the last one it processed.
///
/// - `position` is the event's unique global number, increasing with insert
///   order (what the HTTP API reports as `position`).
/// - `commit` groups the events of one atomic append and orders groups in a
///   way no later commit can precede: the PostgreSQL transaction id
///   (`pg_current_xact_id()`), EventStoreDB's commit position, or `position`
///   itself in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    pub commit: u64,
    pub position: u64,
}

impl LogPosition {
    pub const START: LogPosition = LogPosition { commit: 0, position: 0 };
}

/// Who and what caused an event; stored with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Shared by all the work one request caused, across services.
    pub correlation_id: String,
    /// The id of the request, command or event that directly caused this one.
    pub causation_id: String,
    /// The principal on whose behalf the event was written (`customer:c-42`, `saga:inventory`).
    pub actor: String,
    /// W3C `traceparent` of the work that wrote it (empty when not traced):
    /// the relay sends it on, so a trace spans the log and NATS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_context: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique across the store; appending the same id again is idempotent.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
}

/// An event as stored.
/// Serialised as is on the wire (the relay's JetStream messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub log_position: LogPosition,
    pub event_id: Uuid,
    pub stream_id: String,
    /// 1 for the first event of a stream.
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: serde_json::Value,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The stream's category: `order` for `order-<uuid>`.
    pub fn category(&self) -> &str {
        self.stream_id.split_once('-').map_or(self.stream_id.as_str(), |(category, _)| category)
    }
}

/// The outcome of an append: the stream's new version and the log position
/// of the last event appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    pub stream_version: u64,
    pub log_position: LogPosition,
}

/// The state of the global log, for metrics and lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    /// The last event a reader can see now (`None` while nothing is readable).
    pub readable_head: Option<LogPosition>,
    /// Events committed but not readable yet because an older transaction is
    /// still open: how far the safe read horizon lags the head.
    pub held_back_events: u64,
    /// How long the oldest of those has waited, in milliseconds (0 when none).
    pub held_back_ms: u64,
    /// The transaction holding the horizon back, while events wait behind it.
    pub blocker: Option<HorizonBlocker>,
}

/// A transaction that holds the log's read horizon back: every subscriber
/// (relay, projections) waits until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HorizonBlocker {
    /// Its backend's process id (`pg_stat_activity.pid`); 0 for a prepared transaction.
    pub pid: u32,
    /// How long it has been open, in milliseconds.
    pub open_ms: u64,
    /// A prepared (two-phase) transaction, which only `COMMIT PREPARED` or
    /// `ROLLBACK PREPARED` ends.
    pub prepared: bool,
}

/// An aggregate's state as of one version of its stream, so that loading it
/// reads only the events after it. Written off the hot path; losing one only
/// costs a longer fold. The state's shape is the aggregate's business: a
/// loader that finds another `schema_version` than its own ignores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The version of the last event folded into `state`.
    pub stream_version: u64,
    /// That event's global position (what a command answers with).
    pub position: u64,
    /// The version of the state's shape.
    pub schema_version: u32,
    pub state: serde_json::Value,
}
