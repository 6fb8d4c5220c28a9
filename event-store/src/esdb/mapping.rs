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

/// The trait's event for one of EventStoreDB's, or `None` if it is not this
/// store's (another stream, a system event). An event of this store that
/// cannot be read (not JSON, no metadata) is an error: the log is damaged.
pub fn recorded_event(
    streams: &Streams,
    event: &eventstore::RecordedEvent,
) -> Result<Option<RecordedEvent>, StoreError> {
    let Some(stream_id) = streams.stream_id(&event.stream_id) else { return Ok(None) };
    if event.event_type.starts_with('$') {
        return Ok(None);
    }
    let damaged =
        |what: String| StoreError::Backend(format!("event {} in {}: {what}", event.id, event.stream_id).into());
    let payload = serde_json::from_slice(&event.data).map_err(|e| damaged(format!("the payload is not JSON: {e}")))?;
    let stored: StoredMetadata = serde_json::from_slice(&event.custom_metadata)
        .map_err(|e| damaged(format!("the metadata is not this store's: {e}")))?;
    Ok(Some(RecordedEvent {
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

/// An EventStoreDB error as the trait's. Version conflicts are handled by
/// the caller, which knows the stream.
pub fn store_error(error: eventstore::Error) -> StoreError {
    use eventstore::Error as E;
    match error {
        E::ConnectionClosed
        | E::GrpcConnectionError(_)
        | E::DeadlineExceeded
        | E::NotLeaderException(_)
        | E::ServerError(_)
        | E::InitializationError(_) => StoreError::Unavailable(error.into()),
        E::Grpc { code, .. }
            if matches!(code as i32, tonic_code::UNAVAILABLE | tonic_code::DEADLINE_EXCEEDED | tonic_code::ABORTED) =>
        {
            StoreError::Unavailable(error.into())
        }
        other => StoreError::Backend(other.into()),
    }
}

/// The gRPC status codes that mean "try again" (without a direct dependency on tonic).
mod tonic_code {
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
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
        let event = recorded_event(&streams(), &back).unwrap().unwrap();
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
    fn foreign_and_system_events_are_not_the_store_s_and_damaged_ones_are_errors() {
        let meta = json!({ "schema_version": 1, "correlation_id": "", "causation_id": "", "actor": "" });
        assert!(recorded_event(&streams(), &stored("t2.order-1", "X", json!({}), meta.clone())).unwrap().is_none());
        assert!(recorded_event(&streams(), &stored("$stats-1", "X", json!({}), meta.clone())).unwrap().is_none());
        assert!(recorded_event(&streams(), &stored("t1.order-1", "$metadata", json!({}), meta.clone()))
            .unwrap()
            .is_none());

        let mut not_json = stored("t1.order-1", "X", json!({}), meta);
        not_json.data = b"\x00\x01".to_vec().into();
        assert!(matches!(recorded_event(&streams(), &not_json), Err(StoreError::Backend(_))));
        let foreign_metadata = stored("t1.order-1", "X", json!({}), json!({ "$correlationId": "x" }));
        assert!(matches!(recorded_event(&streams(), &foreign_metadata), Err(StoreError::Backend(_))));
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
    fn connection_trouble_is_unavailable_and_the_rest_a_backend_failure() {
        use eventstore::Error as E;
        for error in [E::ConnectionClosed, E::DeadlineExceeded, E::ServerError("down".into())] {
            assert!(matches!(store_error(error), StoreError::Unavailable(_)));
        }
        assert!(matches!(
            store_error(E::Grpc { code: tonic_code::UNAVAILABLE.into(), message: "x".into() }),
            StoreError::Unavailable(_)
        ));
        for error in [E::AccessDenied, E::ResourceDeleted, E::UnsupportedFeature, E::InternalParsingError("x".into())] {
            assert!(matches!(store_error(error), StoreError::Backend(_)));
        }
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
