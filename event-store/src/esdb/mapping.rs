//! How the trait's values map onto EventStoreDB's, without any IO: stream
//! names, expected versions, positions, events and their metadata, errors.
//! Everything here is unit-tested; the store around it only moves bytes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent, Snapshot, StoreError};

/// Which of EventStoreDB's streams belong to this store: those of the
/// system's categories (`order-…`, `payment-…`, `inventory-…`), under an
/// optional prefix that keeps several stores apart on one server (each test
/// uses its own). Everything else in `$all` (system streams, `$`-events,
/// other applications' streams) is not this store's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    prefix: String,
    categories: Vec<String>,
}

impl Streams {
    pub fn new(prefix: &str, categories: &[&str]) -> Self {
        Self { prefix: prefix.to_owned(), categories: categories.iter().map(|&c| c.to_owned()).collect() }
    }

    /// Whether the store may hold this stream (its category is one of the system's).
    pub fn owns(&self, stream_id: &str) -> bool {
        stream_id.split_once('-').is_some_and(|(category, _)| self.categories.iter().any(|c| c == category))
    }

    /// The EventStoreDB stream name of a stream id.
    pub fn name(&self, stream_id: &str) -> String {
        format!("{}{stream_id}", self.prefix)
    }

    /// The stream id of an EventStoreDB stream, if the stream is this store's.
    pub fn stream_id<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(&self.prefix).filter(|id| self.owns(id))
    }

    /// The stream-name prefixes a server-side `$all` filter lets through.
    pub fn filter_prefixes(&self) -> Vec<String> {
        self.categories.iter().map(|category| format!("{}{category}-", self.prefix)).collect()
    }
}

/// The trait's expected version (a count of events) as EventStoreDB's
/// expected revision (the 0-based number of the last event).
pub fn expected_revision(expected: ExpectedVersion) -> eventstore::ExpectedRevision {
    match expected {
        ExpectedVersion::Any => eventstore::ExpectedRevision::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => eventstore::ExpectedRevision::NoStream,
        ExpectedVersion::Exact(version) => eventstore::ExpectedRevision::Exact(version - 1),
    }
}

/// EventStoreDB's current revision as the trait's version (events in the stream).
pub fn version(current: eventstore::CurrentRevision) -> u64 {
    match current {
        eventstore::CurrentRevision::NoStream => 0,
        eventstore::CurrentRevision::Current(revision) => revision + 1,
    }
}

/// `$all` positions are `(commit, prepare)` byte offsets in the transaction
/// file, ordered the same way as [`LogPosition`]: commit -> `commit`,
/// prepare -> `position` (what the API reports as `position`). They are
/// increasing but not dense: a count of events is never a difference of them.
pub fn log_position(position: eventstore::Position) -> LogPosition {
    // Servers before 21.10 send -1 for the `$all` position of a stream
    // read's events, which the client turns into u64::MAX: unknown, so the
    // caller falls back (an append to its write result's position).
    if position.commit == u64::MAX || position.prepare == u64::MAX {
        return LogPosition::START;
    }
    LogPosition { commit: position.commit, position: position.prepare }
}

pub fn esdb_position(position: LogPosition) -> eventstore::Position {
    eventstore::Position { commit: position.commit, prepare: position.position }
}

/// Where to read `$all` from to see what follows `after`. EventStoreDB
/// reads from a position inclusively, so the caller skips `after` itself.
pub fn start_at(after: Option<LogPosition>) -> eventstore::StreamPosition<eventstore::Position> {
    after.map_or(eventstore::StreamPosition::Start, |after| eventstore::StreamPosition::Position(esdb_position(after)))
}

/// What an event carries in EventStoreDB's custom metadata: the trait's
/// metadata and the schema version (EventStoreDB has no field for it), and
/// the correlation and causation ids again under the names EventStoreDB's
/// own tools read (`$correlationId`, `$causationId`: the `$by_correlation_id`
/// projection, the UI). Reading takes the trait's fields and ignores those.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMetadata {
    schema_version: u16,
    #[serde(flatten)]
    metadata: Metadata,
    #[serde(rename = "$correlationId", default, skip_serializing_if = "String::is_empty", skip_deserializing)]
    esdb_correlation_id: String,
    #[serde(rename = "$causationId", default, skip_serializing_if = "String::is_empty", skip_deserializing)]
    esdb_causation_id: String,
}

impl StoredMetadata {
    fn new(event: &NewEvent) -> Self {
        Self {
            schema_version: event.schema_version,
            metadata: event.metadata.clone(),
            esdb_correlation_id: event.metadata.correlation_id.clone(),
            esdb_causation_id: event.metadata.causation_id.clone(),
        }
    }
}

pub fn event_data(event: &NewEvent) -> Result<eventstore::EventData, StoreError> {
    let encoding = |e: serde_json::Error| StoreError::InvalidAppend(format!("event {}: {e}", event.event_id));
    eventstore::EventData::json(&event.event_type, &event.payload)
        .map_err(encoding)?
        .id(event.event_id)
        .metadata_as_json(&StoredMetadata::new(event))
        .map_err(encoding)
}

/// What one of EventStoreDB's events is to this store.
#[derive(Debug)]
pub enum Found {
    /// One of the store's events.
    Event(RecordedEvent),
    /// Not in the store's streams (another prefix or category, a system
    /// stream) or a `$`-event: not the store's business.
    Elsewhere,
    /// In one of the store's streams, but not written by this system: its
    /// metadata is not the store's (no schema version). Another program, a
    /// script or the UI put it there.
    Foreign { event_id: uuid::Uuid, stream: String, why: String },
}

impl Found {
    /// As the log sees it (subscriptions, `$all` reads): a foreign event is
    /// skipped, counted (`event_store_foreign_events_total`) and logged, so
    /// one stray write cannot stop the relay and every projection. Its
    /// meaning to this system is nothing: no handler knows it.
    pub fn in_the_log(self) -> Option<RecordedEvent> {
        match self {
            Self::Event(event) => Some(event),
            Self::Elsewhere => None,
            Self::Foreign { event_id, stream, why } => {
                metrics::counter!("event_store_foreign_events_total").increment(1);
                tracing::warn!(%event_id, stream, why, "skipped an event this system did not write (see ADR 0007)");
                None
            }
        }
    }

    /// As an aggregate's history sees it: a foreign event in the stream is
    /// an error (a decision cannot be taken on a history that cannot be
    /// read), which names the event; the rest of the system goes on.
    pub fn in_a_stream(self) -> Result<Option<RecordedEvent>, StoreError> {
        match self {
            Self::Event(event) => Ok(Some(event)),
            Self::Elsewhere => Ok(None),
            Self::Foreign { event_id, stream, why } => Err(StoreError::Backend(
                format!(
                    "event {event_id} in {stream} was not written by this system ({why}): the stream's history \
                     cannot be read until it is removed (docs/adr/0007-eventstoredb-backend.md, foreign events)"
                )
                .into(),
            )),
        }
    }
}

/// What one of EventStoreDB's events is to the store. An event of the
/// store that cannot be read (its metadata is the store's but its payload is
/// not JSON) is an error everywhere: the log is damaged, and never skipped.
pub fn recorded_event(streams: &Streams, event: &eventstore::RecordedEvent) -> Result<Found, StoreError> {
    let Some(stream_id) = streams.stream_id(&event.stream_id) else { return Ok(Found::Elsewhere) };
    if event.event_type.starts_with('$') {
        return Ok(Found::Elsewhere);
    }
    let stored: StoredMetadata = match serde_json::from_slice(&event.custom_metadata) {
        Ok(stored) => stored,
        Err(error) => {
            let why = format!("its metadata is not this store's: {error}");
            return Ok(Found::Foreign { event_id: event.id, stream: event.stream_id.clone(), why });
        }
    };
    let payload = serde_json::from_slice(&event.data).map_err(|e| {
        StoreError::Backend(format!("event {} in {}: the payload is not JSON: {e}", event.id, event.stream_id).into())
    })?;
    Ok(Found::Event(RecordedEvent {
        log_position: log_position(event.position),
        event_id: event.id,
        stream_id: stream_id.to_owned(),
        stream_version: event.revision + 1,
        event_type: event.event_type.clone(),
        schema_version: stored.schema_version,
        payload,
        metadata: stored.metadata,
        recorded_at: created(event),
    }))
}

/// When the server stored the event. The client's `created` is cut to whole
/// seconds; the system metadata has it in .NET ticks (100 ns) since the epoch.
fn created(event: &eventstore::RecordedEvent) -> DateTime<Utc> {
    event
        .metadata
        .get("created")
        .and_then(|ticks| ticks.parse::<i64>().ok())
        .and_then(|ticks| DateTime::from_timestamp(ticks / 10_000_000, (ticks % 10_000_000) as u32 * 100))
        .unwrap_or(event.created)
}

/// An EventStoreDB error as the trait's, deliberately. Version conflicts
/// are handled by the caller, which knows the stream.
///
/// Unavailable (the caller retries; an append's outcome is unknown and a
/// retry with the same ids is safe): the server not reached or gone
/// (`ConnectionClosed`, a connection error, gRPC Unavailable), no answer in
/// time (DeadlineExceeded), a leader change (NotLeader), a call the
/// transport broke off (Unknown and Internal: hyper and h2 errors surface
/// so), one the server cancelled (Cancelled: shutting down), a repeat the
/// server dropped while the original was not yet indexed (Aborted), an
/// overloaded server (ResourceExhausted).
///
/// A backend failure (no retry helps; an operator must act): DataLoss
/// (unrecoverable corruption on the server), access denied (credentials),
/// a deleted stream, an unsupported server, the client's own parsing or
/// state errors, and every other gRPC code (InvalidArgument,
/// FailedPrecondition, OutOfRange, ...).
pub fn store_error(error: eventstore::Error) -> StoreError {
    use eventstore::Error as E;
    let retry = match &error {
        E::ConnectionClosed | E::GrpcConnectionError(_) | E::DeadlineExceeded | E::NotLeaderException(_) => true,
        // The client folds Unavailable, Unknown, Internal and DataLoss into
        // this, keeping only the status's text.
        E::ServerError(status) => server_error_code(status) != Some(tonic::Code::DataLoss),
        E::Grpc { code, .. } => passing(*code),
        _ => false,
    };
    match error {
        _ if retry => StoreError::Unavailable(error.into()),
        E::AccessDenied => StoreError::Backend(
            "EventStoreDB denied access: check the user (or certificate) of the connection string".into(),
        ),
        other => StoreError::Backend(other.into()),
    }
}

/// The gRPC codes of trouble that passes.
fn passing(code: tonic::Code) -> bool {
    use tonic::Code as C;
    matches!(
        code,
        C::Unavailable
            | C::DeadlineExceeded
            | C::Aborted
            | C::Cancelled
            | C::ResourceExhausted
            | C::Unknown
            | C::Internal
    )
}

/// The code of a `ServerError`, from the status's text (`status: DataLoss, message: ...`).
fn server_error_code(status: &str) -> Option<tonic::Code> {
    use tonic::Code as C;
    let name = status.strip_prefix("status: ")?.split(',').next()?;
    [C::Unavailable, C::Unknown, C::Internal, C::DataLoss].into_iter().find(|code| format!("{code:?}") == name)
}

/// Whether a failed append may have been a repeat the server dropped while
/// the original was not yet indexed ("idempotent, not ready": the call ends
/// Aborted or past its deadline): the stream is worth reading before failing.
pub fn maybe_a_dropped_repeat(error: &eventstore::Error) -> bool {
    matches!(error, eventstore::Error::DeadlineExceeded)
        || matches!(error, eventstore::Error::Grpc { code: tonic::Code::Aborted, .. })
}

/// Where an `Any` append of `count` events starting with `first_id` was
/// stored, from the stream's last events (newest first): from that event
/// on, oldest first, at most `count` (the caller compares them with the
/// append).
pub fn slot_in_tail(mut tail: Vec<RecordedEvent>, first_id: uuid::Uuid, count: usize) -> Option<Vec<RecordedEvent>> {
    let first = tail.iter().position(|e| e.event_id == first_id)?;
    tail.truncate(first + 1);
    tail.reverse();
    tail.truncate(count);
    Some(tail)
}

/// The stream id of a stream's snapshots.
pub fn snapshot_stream(stream_id: &str) -> String {
    format!("snapshot-{stream_id}")
}

/// A snapshot as EventStoreDB keeps it: one JSON event of type `Snapshot`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    stream_version: u64,
    position: u64,
    schema_version: u32,
    state: serde_json::Value,
}

pub fn snapshot_data(snapshot: &Snapshot) -> Result<eventstore::EventData, StoreError> {
    let stored = StoredSnapshot {
        stream_version: snapshot.stream_version,
        position: snapshot.position,
        schema_version: snapshot.schema_version,
        state: snapshot.state.clone(),
    };
    eventstore::EventData::json("Snapshot", &stored)
        .map_err(|e| StoreError::InvalidAppend(format!("the snapshot of {}: {e}", snapshot.stream_id)))
}

pub fn snapshot(stream_id: &str, event: &eventstore::RecordedEvent) -> Result<Snapshot, StoreError> {
    let stored: StoredSnapshot = event
        .as_json()
        .map_err(|e| StoreError::Backend(format!("the snapshot of {stream_id} cannot be read: {e}").into()))?;
    Ok(Snapshot {
        stream_id: stream_id.to_owned(),
        stream_version: stored.stream_version,
        position: stored.position,
        schema_version: stored.schema_version,
        state: stored.state,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use eventstore::{CurrentRevision, ExpectedRevision, Position};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn streams() -> Streams {
        Streams::new("t1.", &["order", "payment", "inventory"])
    }

    fn stored(
        stream: &str,
        event_type: &str,
        data: serde_json::Value,
        custom: serde_json::Value,
    ) -> eventstore::RecordedEvent {
        eventstore::RecordedEvent {
            stream_id: stream.to_owned(),
            id: Uuid::new_v4(),
            revision: 4,
            event_type: event_type.to_owned(),
            data: serde_json::to_vec(&data).unwrap().into(),
            metadata: HashMap::from([("created".to_owned(), "17642304001234567".to_owned())]),
            custom_metadata: serde_json::to_vec(&custom).unwrap().into(),
            is_json: true,
            position: Position { commit: 9_000, prepare: 8_900 },
            created: DateTime::from_timestamp(1_764_230_400, 0).unwrap(),
        }
    }

    #[test]
    fn streams_of_the_system_s_categories_under_the_prefix_are_the_store_s() {
        let s = streams();
        assert_eq!(s.name("order-42"), "t1.order-42");
        assert_eq!(s.stream_id("t1.order-42"), Some("order-42"));
        assert_eq!(s.stream_id("t1.inventory-SKU-1"), Some("inventory-SKU-1"));
        for foreign in ["order-42", "t2.order-42", "t1.basket-1", "t1.order", "$ce-order", "t1.$$order-1", "$stats-1"] {
            assert_eq!(s.stream_id(foreign), None, "{foreign}");
        }
        assert!(s.owns("payment-1") && !s.owns("orders-1") && !s.owns("order"));
        assert_eq!(s.filter_prefixes(), ["t1.order-", "t1.payment-", "t1.inventory-"]);
        assert_eq!(Streams::new("", &["order"]).stream_id("order-1"), Some("order-1"));
    }

    #[test]
    fn expected_versions_count_events_and_revisions_number_them_from_zero() {
        assert_eq!(expected_revision(ExpectedVersion::Any), ExpectedRevision::Any);
        assert_eq!(expected_revision(ExpectedVersion::NoStream), ExpectedRevision::NoStream);
        assert_eq!(expected_revision(ExpectedVersion::Exact(0)), ExpectedRevision::NoStream);
        assert_eq!(expected_revision(ExpectedVersion::Exact(1)), ExpectedRevision::Exact(0));
        assert_eq!(expected_revision(ExpectedVersion::Exact(7)), ExpectedRevision::Exact(6));
        assert_eq!(version(CurrentRevision::NoStream), 0);
        assert_eq!(version(CurrentRevision::Current(0)), 1);
        assert_eq!(version(CurrentRevision::Current(6)), 7);
    }

    #[test]
    fn positions_map_both_ways_and_keep_their_order() {
        let p = Position { commit: 9_000, prepare: 8_900 };
        assert_eq!(log_position(p), LogPosition { commit: 9_000, position: 8_900 });
        // A pre-21.10 server's "no position" (-1) reads as unknown, never as the end of the log.
        assert_eq!(log_position(Position { commit: u64::MAX, prepare: u64::MAX }), LogPosition::START);
        assert_eq!(esdb_position(log_position(p)), p);
        let positions = [
            Position { commit: 10, prepare: 10 },
            Position { commit: 10, prepare: 12 },
            Position { commit: 20, prepare: 5 },
            Position { commit: 20, prepare: 20 },
        ];
        for pair in positions.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(log_position(pair[0]) < log_position(pair[1]), "{pair:?}");
        }
        assert_eq!(start_at(None), eventstore::StreamPosition::Start);
        assert_eq!(start_at(Some(log_position(p))), eventstore::StreamPosition::Position(p));
    }

    #[test]
    fn an_event_keeps_everything_through_a_round_trip() {
        let metadata = Metadata {
            correlation_id: "corr".into(),
            causation_id: "cause".into(),
            actor: "customer:c-1".into(),
            trace_context: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let new = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "OrderPlaced".into(),
            schema_version: 3,
            payload: json!({ "lines": [{ "sku": "SKU-1", "quantity": 2 }] }),
            metadata: metadata.clone(),
        };
        // What the client sends is what the server stores: rebuild it as read back.
        let data = event_data(&new).unwrap();
        let sent = format!("{data:?}");
        assert!(sent.contains(&new.event_id.to_string()) && sent.contains("application/json"), "{sent}");
        let custom = json!({ "schema_version": 3, "correlation_id": "corr", "causation_id": "cause",
                             "actor": "customer:c-1", "trace_context": metadata.trace_context });
        let mut back = stored("t1.order-7", "OrderPlaced", new.payload.clone(), custom);
        back.id = new.event_id;
        let Found::Event(event) = recorded_event(&streams(), &back).unwrap() else { panic!("not the store's") };
        assert_eq!(event.event_id, new.event_id);
        assert_eq!(event.stream_id, "order-7");
        assert_eq!(event.stream_version, 5, "revision 4 is the fifth event");
        assert_eq!(event.event_type, "OrderPlaced");
        assert_eq!(event.schema_version, 3);
        assert_eq!(event.payload, new.payload);
        assert_eq!(event.metadata, metadata);
        assert_eq!(event.log_position, LogPosition { commit: 9_000, position: 8_900 });
        assert_eq!(event.recorded_at.timestamp(), 1_764_230_400);
        assert_eq!(event.recorded_at.timestamp_subsec_nanos(), 123_456_700, "ticks keep sub-second precision");
    }

    #[test]
    fn the_stored_metadata_is_the_trait_s_plus_the_schema_version_and_eventstoredb_s_ids() {
        let new = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "StockReserved".into(),
            schema_version: 2,
            payload: json!({}),
            metadata: Metadata {
                correlation_id: "corr".into(),
                causation_id: "cause".into(),
                actor: "saga:inventory".into(),
                trace_context: String::new(),
            },
        };
        let json = serde_json::to_value(StoredMetadata::new(&new)).unwrap();
        assert_eq!(
            json,
            json!({ "schema_version": 2, "correlation_id": "corr", "causation_id": "cause", "actor": "saga:inventory",
                    "$correlationId": "corr", "$causationId": "cause" })
        );
        let back: StoredMetadata = serde_json::from_value(json).unwrap();
        assert_eq!((back.schema_version, back.metadata), (2, new.metadata));
    }

    #[test]
    fn other_streams_and_system_events_are_elsewhere_and_damaged_ones_are_errors() {
        let meta = json!({ "schema_version": 1, "correlation_id": "", "causation_id": "", "actor": "" });
        for (stream, event_type) in [("t2.order-1", "X"), ("$stats-1", "X"), ("t1.order-1", "$metadata")] {
            let found = recorded_event(&streams(), &stored(stream, event_type, json!({}), meta.clone())).unwrap();
            assert!(matches!(found, Found::Elsewhere), "{stream} {event_type}: {found:?}");
        }
        let mut not_json = stored("t1.order-1", "X", json!({}), meta);
        not_json.data = b"\x00\x01".to_vec().into();
        assert!(matches!(recorded_event(&streams(), &not_json), Err(StoreError::Backend(_))));
    }

    #[test]
    fn an_event_another_program_wrote_into_the_store_s_streams_is_skipped_by_the_log_and_refused_in_its_stream() {
        for custom in [json!({ "$correlationId": "x" }), json!(null), json!({ "schema_version": "one" })] {
            let event = stored("t1.order-1", "OrderPlaced", json!({}), custom.clone());
            let found = recorded_event(&streams(), &event).unwrap();
            assert!(
                matches!(found, Found::Foreign { ref stream, .. } if stream == "t1.order-1"),
                "{custom}: {found:?}"
            );
            assert!(found.in_the_log().is_none());
            let found = recorded_event(&streams(), &event).unwrap();
            let refused = found.in_a_stream().unwrap_err().to_string();
            assert!(
                refused.contains(&event.id.to_string()) && refused.contains("not written by this system"),
                "{refused}"
            );
        }
        let mut no_metadata = stored("t1.order-1", "OrderPlaced", json!({}), json!({}));
        no_metadata.custom_metadata = Vec::new().into();
        assert!(matches!(recorded_event(&streams(), &no_metadata), Ok(Found::Foreign { .. })));
        // The store's own events pass both ways.
        let ours = json!({ "schema_version": 1, "correlation_id": "", "causation_id": "", "actor": "" });
        let event = stored("t1.order-1", "OrderPlaced", json!({}), ours);
        assert!(recorded_event(&streams(), &event).unwrap().in_a_stream().unwrap().is_some());
        assert!(recorded_event(&streams(), &event).unwrap().in_the_log().is_some());
    }

    #[test]
    fn the_created_ticks_fall_back_to_the_client_s_time() {
        let mut event = stored("t1.order-1", "X", json!({}), json!({}));
        event.metadata.clear();
        assert_eq!(created(&event), event.created);
        event.metadata.insert("created".into(), "soon".into());
        assert_eq!(created(&event), event.created);
    }

    #[test]
    fn every_error_class_is_mapped_on_purpose() {
        use eventstore::Error as E;
        use tonic::{Code, Status};
        let unavailable = |e: E| matches!(store_error(e), StoreError::Unavailable(_));
        // What the client makes of each gRPC status the server (or the transport) can end a call with.
        let retried = [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
            Code::ResourceExhausted,
        ];
        for code in retried {
            assert!(unavailable(E::from_grpc(Status::new(code, "x"))), "{code:?} is passing trouble");
        }
        assert!(unavailable(E::from_grpc(Status::new(Code::Cancelled, "Timeout expired"))));
        let failed = [
            Code::DataLoss,
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::AlreadyExists,
        ];
        for code in failed {
            assert!(!unavailable(E::from_grpc(Status::new(code, "x"))), "{code:?} needs an operator");
        }
        for error in [
            E::ConnectionClosed,
            E::DeadlineExceeded,
            E::NotLeaderException(eventstore::Endpoint { host: "b".into(), port: 2113 }),
        ] {
            assert!(unavailable(error));
        }
        for error in [
            E::AccessDenied,
            E::ResourceDeleted,
            E::UnsupportedFeature,
            E::InternalParsingError("x".into()),
            E::InternalClientError,
            E::IllegalStateError("x".into()),
            E::InitializationError("x".into()),
        ] {
            assert!(!unavailable(error));
        }
        assert!(store_error(E::AccessDenied).to_string().contains("connection string"));
        // Only these two may hide a repeat dropped before the original was indexed.
        assert!(maybe_a_dropped_repeat(&E::from_grpc(Status::new(Code::Aborted, "x"))));
        assert!(maybe_a_dropped_repeat(&E::from_grpc(Status::new(Code::DeadlineExceeded, "x"))));
        assert!(!maybe_a_dropped_repeat(&E::from_grpc(Status::new(Code::Unavailable, "x"))));
    }

    #[test]
    fn an_any_append_is_looked_for_among_the_stream_s_last_events() {
        let event = |version: u64| RecordedEvent {
            log_position: LogPosition { commit: version, position: version },
            event_id: Uuid::from_u128(version as u128),
            stream_id: "order-1".into(),
            stream_version: version,
            event_type: "X".into(),
            schema_version: 1,
            payload: json!({}),
            metadata: Metadata::default(),
            recorded_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let tail: Vec<_> = (1..=6).rev().map(event).collect(); // 6, 5, ..., 1
        let versions = |slot: Vec<RecordedEvent>| slot.iter().map(|e| e.stream_version).collect::<Vec<_>>();
        assert_eq!(versions(slot_in_tail(tail.clone(), Uuid::from_u128(3), 2).unwrap()), [3, 4]);
        assert_eq!(versions(slot_in_tail(tail.clone(), Uuid::from_u128(5), 3).unwrap()), [5, 6], "cut at the end");
        assert_eq!(versions(slot_in_tail(tail.clone(), Uuid::from_u128(1), 1).unwrap()), [1]);
        assert!(slot_in_tail(tail, Uuid::from_u128(9), 1).is_none());
    }

    #[test]
    fn a_snapshot_lives_in_a_stream_of_no_category_of_the_store() {
        let name = streams().name(&snapshot_stream("inventory-SKU-1"));
        assert_eq!(name, "t1.snapshot-inventory-SKU-1");
        assert_eq!(streams().stream_id(&name), None, "not in the log nor in a subscription");
        let state = json!({"on_hand": 5, "reserved": 1, "holds": {}, "awaiting": {}});
        let data = json!({"stream_version": 300, "position": 9_000, "schema_version": 1, "state": state});
        let kept = snapshot("inventory-SKU-1", &stored(&name, "Snapshot", data, json!({}))).unwrap();
        assert_eq!(
            kept,
            Snapshot {
                stream_id: "inventory-SKU-1".into(),
                stream_version: 300,
                position: 9_000,
                schema_version: 1,
                state
            }
        );
        assert!(snapshot("inventory-SKU-1", &stored(&name, "Snapshot", json!({"state": 1}), json!({}))).is_err());
        assert!(snapshot_data(&kept).is_ok());
    }
}
