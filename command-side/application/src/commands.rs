//! The core of every command: load the aggregate's stream, fold the state,
//! check who asks against it, let the domain decide, append with the version
//! that was read. A concurrency conflict means someone else appended in
//! between: load again and decide again, a bounded number of times, unless
//! the client pinned the version with `If-Match`.

use chrono::{DateTime, Utc};
use domain::{Aggregate, DomainError, EventPayload};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError};
use uuid::Uuid;

use crate::snapshots;

/// How the events of one command get their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventIds {
    /// Fresh ids, ordered by time (UUIDv7): a new event's id, and a new
    /// order's stream (`order-<id>`, and its payment's), go in at the end of
    /// the log's event-id and stream indexes instead of on a random page of
    /// them, which on a log larger than memory means a read from disk per
    /// index and append (docs/performance.md, "A long log").
    Random,
    /// Ids derived from this namespace (UUIDv5): the same request always
    /// produces the same ids, so a replay can be recognised.
    Derived(Uuid),
    /// Ids hashed from this namespace as for [`EventIds::Derived`], with
    /// this time (Unix milliseconds) in their first 48 bits, where a UUIDv7
    /// keeps its own (so UUIDv8s): the same on every replay, and in time
    /// order like fresh ones. See [`EventIds::derived`].
    DerivedAt(Uuid, u64),
}

impl EventIds {
    /// Ids for what `source` caused (a saga's reaction to an event, a
    /// request under an idempotency key's generation), derived from
    /// `namespace`, as of `at`, the stored time of `source`.
    ///
    /// In time order when `source` is (a UUIDv7, or a v8 derived here):
    /// ids derived before this existed came from sources of other versions
    /// (v4 and v5), which keep deriving UUIDv5s, so what they caused is
    /// still recognised when they are replayed after an upgrade.
    pub fn derived(source: Uuid, namespace: Uuid, at: DateTime<Utc>) -> Self {
        match source.get_version_num() {
            7 | 8 => Self::DerivedAt(namespace, u64::try_from(at.timestamp_millis()).unwrap_or(0)),
            _ => Self::Derived(namespace),
        }
    }

    fn id(self, index: usize) -> Uuid {
        match self {
            Self::Random => Uuid::now_v7(),
            derived => derived.derive(&format!("event/{index}")),
        }
    }

    /// A derived id for something other than an event (an order id).
    pub fn derive(self, name: &str) -> Uuid {
        match self {
            Self::Random => Uuid::now_v7(),
            Self::Derived(namespace) => Uuid::new_v5(&namespace, name.as_bytes()),
            Self::DerivedAt(namespace, millis) => {
                let mut bytes = *Uuid::new_v5(&namespace, name.as_bytes()).as_bytes();
                bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
                uuid::Builder::from_custom_bytes(bytes).into_uuid()
            }
        }
    }
}

/// Who asks, and how.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub metadata: Metadata,
    pub ids: EventIds,
    /// The stream version the client requires (`If-Match`).
    pub expected_version: Option<u64>,
    pub max_attempts: u32,
}

/// The command was applied (or had been applied already): where its stream
/// and the log stand after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub stream_version: u64,
    /// The global position of the last event appended (0 if none exists).
    pub position: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Who asks may not do this to the aggregate in its state.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("the stream is at version {actual}, not at the required {required}")]
    VersionMismatch { required: u64, actual: u64 },
    #[error("the stream kept changing; gave up after {0} attempts")]
    Contention(u32),
    #[error("stored event {event_id} cannot be loaded: {reason}")]
    Corrupt { event_id: Uuid, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn execute<A>(
    store: &dyn EventStore,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
) -> Result<Appended, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
{
    execute_checked::<A>(store, stream_id, invocation, command, |_| Ok(())).await
}

/// [`execute`] for a command that creates its aggregate under a new id (an
/// order placed): decided on the empty state and appended expecting no
/// stream, without reading first. Only when the stream exists after all (a
/// replay of the same request, or an id taken) does it read and decide as
/// [`execute`] does; so does a command the empty state refuses, to report
/// the refusal the stream's real state gives.
pub async fn create<A>(
    store: &dyn EventStore,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
) -> Result<Appended, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
{
    let unpinned = invocation.expected_version.is_none_or(|v| v == 0);
    let decided = if unpinned { A::decide(&A::State::default(), command.clone()).ok() } else { None };
    if let Some(events) = decided.filter(|events| !events.is_empty()) {
        match store.append(stream_id, ExpectedVersion::NoStream, to_append(&events, invocation)).await {
            Ok(result) => {
                return Ok(Appended { stream_version: result.stream_version, position: result.log_position.position })
            }
            // The stream exists, or holds these ids with other content (the
            // same request decided at another time): decide on what is there.
            Err(StoreError::WrongExpectedVersion { .. } | StoreError::DuplicateEventId { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    execute::<A>(store, stream_id, invocation, command).await
}

/// [`execute`], with `check` asked on every state the command is decided on
/// (who asks may act on this aggregate as it is): one read serves both.
pub async fn execute_checked<A>(
    store: &dyn EventStore,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
    check: impl Fn(&A::State) -> Result<(), String>,
) -> Result<Appended, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
{
    // The snapshot (if the aggregate keeps them) and the events after it;
    // after a conflict, only the events appended since.
    let (mut appended, mut state) = snapshots::start::<A>(store, stream_id).await?;
    for _ in 0..invocation.max_attempts.max(1) {
        let tail = store.read_stream(stream_id, appended.stream_version + 1).await?;
        if let Some(done) = already_applied(&tail, invocation.ids) {
            return Ok(done);
        }
        for stored in &tail {
            state = A::evolve(state, &decode::<A>(stored)?);
            appended = Appended { stream_version: stored.stream_version, position: stored.log_position.position };
        }
        snapshots::after_load::<A>(store, stream_id, tail.len(), appended, &state);
        let version = appended.stream_version;
        if let Some(required) = invocation.expected_version.filter(|v| *v != version) {
            return Err(ExecuteError::VersionMismatch { required, actual: version });
        }
        check(&state).map_err(ExecuteError::Forbidden)?;
        let events = A::decide(&state, command.clone())?;
        if events.is_empty() {
            return Ok(appended);
        }
        let new_events = to_append(&events, invocation);
        match store.append(stream_id, ExpectedVersion::Exact(version), new_events).await {
            Ok(result) => {
                let done = Appended { stream_version: result.stream_version, position: result.log_position.position };
                // (Not for a replay answered with its first result: those events are folded already.)
                if A::SNAPSHOTS.is_some() && done.stream_version == version + events.len() as u64 {
                    let after = events.iter().fold(state, A::evolve);
                    snapshots::after_append::<A>(store, stream_id, version, done, &after);
                }
                return Ok(done);
            }
            Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                if let Some(required) = invocation.expected_version {
                    return Err(ExecuteError::VersionMismatch { required, actual });
                }
                tracing::debug!(stream_id, version, actual, "concurrency conflict, deciding again");
                decided_again::<A>();
            }
            // These derived ids are stored with what another state decided:
            // this request was done before, further back than was read (or
            // the aggregate has forgotten it). Answer the stream as it stands.
            Err(StoreError::DuplicateEventId { .. }) => return Ok(appended),
            Err(other) => return Err(other.into()),
        }
    }
    Err(ExecuteError::Contention(invocation.max_attempts))
}

/// Counts a command decided again because another writer appended to its
/// stream first (metric `application_commands_decided_again_total`, by
/// aggregate): with several instances of a service, which aggregates they
/// race for, and how often.
pub(crate) fn decided_again<A: Aggregate>() {
    metrics::counter!("application_commands_decided_again_total", "aggregate" => A::CATEGORY).increment(1);
}

/// The decided events as they are appended: ids as the invocation says, its metadata.
pub(crate) fn to_append<E: EventPayload>(events: &[E], invocation: &Invocation) -> Vec<NewEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| NewEvent {
            event_id: invocation.ids.id(i),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata: invocation.metadata.clone(),
        })
        .collect()
}

/// The current state of the aggregate in `stream_id` (from its snapshot, if kept).
pub async fn load<A: Aggregate>(store: &dyn EventStore, stream_id: &str) -> Result<A::State, ExecuteError> {
    Ok(snapshots::load::<A>(store, stream_id).await?.1)
}

/// A stored event as the aggregate's event; a failure means the store holds
/// what this code cannot read.
pub(crate) fn decode<A: Aggregate>(stored: &RecordedEvent) -> Result<A::Event, ExecuteError> {
    A::Event::from_stored(&stored.event_type, stored.schema_version, stored.payload.clone())
        .map_err(|e| ExecuteError::Corrupt { event_id: stored.event_id, reason: e.to_string() })
}

/// With derived ids, the stream holding the first id means this very
/// request was applied before (its response was lost): answer as then.
fn already_applied(history: &[RecordedEvent], ids: EventIds) -> Option<Appended> {
    if let EventIds::Random = ids {
        return None;
    }
    let first = history.iter().position(|e| e.event_id == ids.id(0))?;
    let last = history[first..].iter().enumerate().take_while(|(i, e)| e.event_id == ids.id(*i)).last()?.1;
    Some(Appended { stream_version: last.stream_version, position: last.log_position.position })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use domain::inventory::{Inventory, InventoryCommand};

    use super::*;
    use event_store::MemoryEventStore;

    fn invocation(ids: EventIds) -> Invocation {
        Invocation { metadata: Metadata::default(), ids, expected_version: None, max_attempts: 5 }
    }

    /// Fresh ids follow one another in time (each one after the last, so
    /// they go in at the end of the log's indexes); derived ids are what
    /// they always were, so a request or trigger replayed after an upgrade
    /// still derives the ids it appended before.
    #[test]
    fn fresh_ids_grow_with_time_and_derived_ids_stay_as_they_were() {
        let mut fresh: Vec<Uuid> = (0..20).map(|i| EventIds::Random.id(i)).collect();
        fresh.push(EventIds::Random.derive("order"));
        assert!(fresh.iter().all(|id| id.get_version_num() == 7), "{fresh:?}");
        assert!(fresh.windows(2).all(|pair| pair[0] < pair[1]), "each after the last: {fresh:?}");
        let namespace = Uuid::from_u128(0x42);
        assert_eq!(EventIds::Derived(namespace).id(3), Uuid::new_v5(&namespace, b"event/3"));
        assert_eq!(EventIds::Derived(namespace).derive("order"), Uuid::new_v5(&namespace, b"order"));
        // What a v4 or v5 source (one from before ids in time order) caused.
        let at = Utc::now();
        for source in [Uuid::new_v4(), Uuid::new_v5(&namespace, b"source")] {
            assert_eq!(EventIds::derived(source, namespace, at), EventIds::Derived(namespace));
        }
    }

    /// What a source in time order causes gets ids in time order as of the
    /// source's stored time, and the same ids every time it is replayed;
    /// those ids are in time order themselves, so what they cause is too.
    #[test]
    fn ids_derived_from_a_source_in_time_order_keep_its_time_and_stay_the_same() {
        let namespace = Uuid::from_u128(0x42);
        let at = DateTime::parse_from_rfc3339("2026-12-05T08:00:00.123456Z").unwrap().to_utc();
        let source = Uuid::now_v7();
        let ids = EventIds::derived(source, namespace, at);
        let first: Vec<Uuid> = (0..4).map(|i| ids.id(i)).chain([ids.derive("order")]).collect();
        assert_eq!(first, (0..4).map(|i| ids.id(i)).chain([ids.derive("order")]).collect::<Vec<_>>(), "replayed");
        for id in &first {
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id.as_u128() >> 80, at.timestamp_millis() as u128, "the source's time leads: {id}");
        }
        assert_eq!(first.iter().collect::<std::collections::HashSet<_>>().len(), first.len(), "distinct");
        // The hash bits are the v5 id's: another namespace, other ids.
        let other = EventIds::derived(source, Uuid::from_u128(0x43), at);
        assert!((0..4).all(|i| other.id(i) != ids.id(i)));
        // A later source's ids come after, and an id derived here derives in time order too.
        let later = EventIds::derived(source, namespace, at + chrono::Duration::milliseconds(1));
        let latest = *first.iter().max().unwrap();
        assert!((0..4).all(|i| later.id(i) > latest));
        assert!(matches!(EventIds::derived(first[0], namespace, at), EventIds::DerivedAt(..)));
    }

    fn receive(quantity: i64) -> InventoryCommand {
        InventoryCommand::Receive { sku: "SKU-1".into(), quantity }
    }

    #[tokio::test]
    async fn a_command_appends_what_the_domain_decides() {
        let store = MemoryEventStore::new();
        let accepted = execute::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(5)).await;
        assert_eq!(accepted.unwrap().stream_version, 1);
        let stored = store.read_stream("inventory-SKU-1", 1).await.unwrap();
        assert_eq!(stored[0].event_type, "StockReceived");
    }

    #[tokio::test]
    async fn a_rejected_command_appends_nothing() {
        let store = MemoryEventStore::new();
        let result = execute::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(0)).await;
        assert!(matches!(result, Err(ExecuteError::Rejected(DomainError::Invalid(_)))));
        assert!(store.read_stream("inventory-SKU-1", 1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_pinned_version_that_differs_is_refused_without_retry() {
        let store = MemoryEventStore::new();
        execute::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(5)).await.unwrap();
        let pinned = Invocation { expected_version: Some(0), ..invocation(EventIds::Random) };
        let result = execute::<Inventory>(&store, "inventory-SKU-1", &pinned, receive(5)).await;
        assert!(matches!(result, Err(ExecuteError::VersionMismatch { required: 0, actual: 1 })));
    }

    #[tokio::test]
    async fn a_replayed_request_with_derived_ids_answers_as_the_first_time() {
        for ids in [EventIds::Derived(Uuid::from_u128(9)), EventIds::DerivedAt(Uuid::from_u128(9), 1_764_900_000_000)] {
            let store = MemoryEventStore::new();
            let first = execute::<Inventory>(&store, "inventory-SKU-1", &invocation(ids), receive(5)).await.unwrap();
            execute::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(1)).await.unwrap();
            let again = execute::<Inventory>(&store, "inventory-SKU-1", &invocation(ids), receive(5)).await.unwrap();
            assert_eq!(again, first, "{ids:?}");
            assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 2, "{ids:?}");
        }
    }

    /// Another writer appends between the command's read and its append:
    /// the command reads what was appended, decides again and lands, and
    /// the metric of decisions taken again counts it for its aggregate.
    #[tokio::test]
    async fn a_command_that_loses_the_race_for_its_version_is_decided_again_and_counted() {
        let counters = service_kit::metrics::Counters::default();
        let _recorder = metrics::set_default_local_recorder(&counters);
        let store = Arc::new(Counting::default());
        execute::<Inventory>(&*store, "inventory-SKU-1", &invocation(EventIds::Random), receive(5)).await.unwrap();
        let held = store.gate.write().await;
        let command = tokio::spawn({
            let store = store.clone();
            async move { execute::<Inventory>(&*store, "inventory-SKU-1", &invocation(EventIds::Random), receive(1)).await }
        });
        while store.reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        execute::<Inventory>(&store.store, "inventory-SKU-1", &invocation(EventIds::Random), receive(2)).await.unwrap();
        drop(held);
        assert_eq!(command.await.unwrap().unwrap().stream_version, 3);
        assert_eq!(load::<Inventory>(&store.store, "inventory-SKU-1").await.unwrap().on_hand, 8);
        let decided_again =
            |aggregate| counters.get("application_commands_decided_again_total", &[("aggregate", aggregate)]);
        assert_eq!((decided_again("inventory"), decided_again("order")), (1, 0));
    }

    /// A memory store that counts the appends and stream reads it is asked for.
    #[derive(Default)]
    pub(crate) struct Counting {
        pub store: MemoryEventStore,
        pub reads: AtomicUsize,
        pub appends: AtomicUsize,
        /// Appends wait while a test holds it for writing.
        pub gate: tokio::sync::RwLock<()>,
        /// Snapshots offered.
        pub snapshots: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl EventStore for Counting {
        async fn append(
            &self,
            stream_id: &str,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<event_store::AppendResult, StoreError> {
            let _open = self.gate.read().await;
            self.appends.fetch_add(1, Ordering::SeqCst);
            self.store.append(stream_id, expected, events).await
        }
        async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.read_stream(stream_id, from_version).await
        }
        async fn read_all(
            &self,
            after: Option<event_store::LogPosition>,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.store.read_all(after, limit).await
        }
        fn subscribe(&self, after: Option<event_store::LogPosition>) -> event_store::EventStream {
            self.store.subscribe(after)
        }
        async fn stats(&self) -> Result<event_store::LogStats, StoreError> {
            self.store.stats().await
        }
        async fn locate(&self, position: u64) -> Result<Option<event_store::LogPosition>, StoreError> {
            self.store.locate(position).await
        }
        async fn read_snapshot(&self, stream_id: &str) -> Result<Option<event_store::Snapshot>, StoreError> {
            self.store.read_snapshot(stream_id).await
        }
        async fn write_snapshot(&self, snapshot: event_store::Snapshot) -> Result<(), StoreError> {
            self.store.write_snapshot(snapshot).await
        }
        fn offer_snapshot(&self, snapshot: event_store::Snapshot) {
            self.snapshots.fetch_add(1, Ordering::SeqCst);
            self.store.offer_snapshot(snapshot);
        }
    }

    #[tokio::test]
    async fn a_creation_appends_without_reading_first() {
        let store = Counting::default();
        let created = create::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(5)).await;
        assert_eq!(created.unwrap().stream_version, 1);
        assert_eq!(store.reads.load(Ordering::SeqCst), 0);
        assert_eq!(store.store.read_stream("inventory-SKU-1", 1).await.unwrap()[0].event_type, "StockReceived");
    }

    #[tokio::test]
    async fn a_creation_on_a_stream_that_exists_decides_on_what_is_there() {
        let store = Counting::default();
        execute::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(5)).await.unwrap();
        let created = create::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(3)).await;
        assert_eq!(created.unwrap().stream_version, 2);
        let state = load::<Inventory>(&store, "inventory-SKU-1").await.unwrap();
        assert_eq!(state.on_hand, 8);
    }

    /// The same request (same derived ids) decided again later, with another
    /// time in its events: the first result, nothing appended.
    #[tokio::test]
    async fn a_creation_replayed_later_answers_as_the_first_time() {
        let store = MemoryEventStore::new();
        let ids = EventIds::Derived(Uuid::from_u128(7));
        let first = create::<Inventory>(&store, "inventory-SKU-1", &invocation(ids), receive(5)).await.unwrap();
        let again = create::<Inventory>(&store, "inventory-SKU-1", &invocation(ids), receive(6)).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_creation_the_empty_state_refuses_is_refused_with_the_real_state() {
        let store = Counting::default();
        let refused = create::<Inventory>(&store, "inventory-SKU-1", &invocation(EventIds::Random), receive(0)).await;
        assert!(matches!(refused, Err(ExecuteError::Rejected(DomainError::Invalid(_)))), "{refused:?}");
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "read once, to decide on what is there");
    }

    #[tokio::test]
    async fn concurrent_commands_on_one_stream_all_land() {
        let store = Arc::new(MemoryEventStore::new());
        let done = Arc::new(AtomicUsize::new(0));
        let tasks = (0..10).map(|_| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let inv = Invocation { max_attempts: 50, ..invocation(EventIds::Random) };
                execute::<Inventory>(&*store, "inventory-SKU-1", &inv, receive(1)).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        });
        futures_util::future::join_all(tasks).await;
        assert_eq!(done.load(Ordering::SeqCst), 10);
        assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 10);
    }
}
