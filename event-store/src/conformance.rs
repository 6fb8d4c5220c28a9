//! The conformance suite: what every [`EventStore`] backend must do, written
//! once. A backend's test binary runs every case through
//! [`conformance_cases!`](crate::conformance_cases) with a [`Harness`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::testing::Harness;
use crate::{EventStore, EventStream, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreError};

/// Calls `$case_macro!(case, case, ...)` with the name of every case, so a
/// backend's tests can be generated from one list.
#[macro_export]
macro_rules! conformance_cases {
    ($case_macro:ident) => {
        $case_macro!(
            appends_and_reads_back_a_stream,
            an_unknown_stream_reads_empty,
            reads_a_stream_from_a_version,
            reads_a_page_of_a_stream,
            a_wrong_expected_version_is_a_conflict_carrying_the_actual_version,
            any_version_appends_to_new_and_existing_streams,
            only_one_of_racing_writers_with_the_same_expected_version_wins,
            an_append_of_stored_event_ids_returns_the_original_result,
            stored_event_ids_with_other_content_are_refused,
            racing_identical_appends_store_the_events_once,
            malformed_appends_are_refused_and_write_nothing,
            a_hundred_events_in_one_append_keep_their_order,
            the_global_log_reads_in_order_and_resumes_after_a_position,
            a_subscription_catches_up_then_follows_new_events,
            a_subscription_starts_after_the_given_position,
            stats_report_the_readable_head,
            events_are_located_by_position_and_counted_after_one,
            concurrent_writers_with_rollbacks_are_delivered_exactly_once_in_order,
            a_snapshot_is_kept_per_stream_and_only_a_later_one_replaces_it,
            a_snapshot_of_another_schema_replaces_the_kept_one,
            an_offered_snapshot_is_written_in_the_background,
        );
    };
}

/// Longest a subscription may take to deliver what was committed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: Metadata {
            correlation_id: "corr-1".into(),
            causation_id: "cause-1".into(),
            actor: "test".into(),
            trace_context: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        },
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| event("Happened", json!({ "n": i }))).collect()
}

fn unique_stream(category: &str) -> String {
    format!("{category}-{}", Uuid::new_v4())
}

/// Takes `n` events from a subscription, failing if they do not come in time.
pub async fn take(subscription: &mut EventStream, n: usize) -> Vec<RecordedEvent> {
    let mut taken = Vec::with_capacity(n);
    while taken.len() < n {
        match tokio::time::timeout(DELIVERY_TIMEOUT, subscription.next()).await {
            Ok(Some(Ok(event))) => taken.push(event),
            Ok(Some(Err(error))) => panic!("subscription failed: {error}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!("only {} of {n} events arrived within {DELIVERY_TIMEOUT:?}", taken.len()),
        }
    }
    taken
}

/// Asserts that nothing more arrives for a while.
pub async fn assert_quiet(subscription: &mut EventStream, wait: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(wait, subscription.next()).await {
        panic!("expected nothing more, got {item:?}");
    }
}

async fn all_events(store: &dyn EventStore) -> Vec<RecordedEvent> {
    store.read_all(None, 1_000_000).await.expect("read_all")
}

/// Waits until `check` holds (up to `DELIVERY_TIMEOUT`). The global log may
/// show a committed event a moment late, never early: on PostgreSQL the read
/// horizon stays below a transaction of another database of the cluster that
/// ends while it is computed (see `es_read_horizon`), so a read can show less
/// than the one before it. Whatever a case asserts of the global log, it
/// asserts of the log once it shows what was appended.
async fn soon<T, Fut>(what: &str, check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::testing::eventually(DELIVERY_TIMEOUT, what, check).await
}

/// The whole log once it shows at least `at_least` events.
async fn log_of(store: &dyn EventStore, at_least: usize) -> Vec<RecordedEvent> {
    soon(&format!("{at_least} events in the log"), || async {
        Some(all_events(store).await).filter(|log| log.len() >= at_least)
    })
    .await
}

/// The log up to now, without markers: appends a marker event to a stream
/// of its own and waits until the log shows it, so that the log shows every
/// event appended before.
async fn log_through_a_marker(store: &dyn EventStore) -> Vec<RecordedEvent> {
    const MARKER: &str = "LogMarker";
    let marker = unique_stream("order");
    store.append(&marker, ExpectedVersion::NoStream, vec![event(MARKER, json!({}))]).await.unwrap();
    let log = soon("the marker in the log", || async {
        Some(all_events(store).await).filter(|log| log.iter().any(|e| e.stream_id == marker))
    })
    .await;
    log.into_iter().filter(|e| e.event_type != MARKER).collect()
}

pub async fn appends_and_reads_back_a_stream(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    let new = events(2);
    let result = store.append(&stream, ExpectedVersion::NoStream, new.clone()).await.unwrap();
    assert_eq!(result.stream_version, 2);

    let read = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(read.len(), 2);
    for (i, (stored, sent)) in read.iter().zip(&new).enumerate() {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.stream_id, stream);
        assert_eq!(stored.stream_version, i as u64 + 1);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata, sent.metadata);
        assert_eq!(stored.category(), "order");
        let age = chrono::Utc::now() - stored.recorded_at;
        assert!(age < chrono::Duration::minutes(1) && age > chrono::Duration::minutes(-1), "recorded_at {age}");
    }
    assert!(read[0].log_position < read[1].log_position);
    assert_eq!(read[1].log_position, result.log_position);
}

fn snapshot(stream_id: &str, stream_version: u64, schema_version: u32) -> crate::Snapshot {
    crate::Snapshot {
        stream_id: stream_id.to_owned(),
        stream_version,
        position: stream_version * 10,
        schema_version,
        state: serde_json::json!({"version": stream_version, "holds": {"a": 1}}),
    }
}

pub async fn a_snapshot_is_kept_per_stream_and_only_a_later_one_replaces_it(h: Arc<dyn Harness>) {
    let store = h.store();
    let (one, other) = (unique_stream("inventory"), unique_stream("inventory"));
    assert_eq!(store.read_snapshot(&one).await.unwrap(), None);
    store.write_snapshot(snapshot(&one, 5, 1)).await.unwrap();
    store.write_snapshot(snapshot(&other, 9, 1)).await.unwrap();
    assert_eq!(store.read_snapshot(&one).await.unwrap(), Some(snapshot(&one, 5, 1)));
    store.write_snapshot(snapshot(&one, 8, 1)).await.unwrap();
    // An older one, written late (a slow writer), does not go back.
    store.write_snapshot(snapshot(&one, 6, 1)).await.unwrap();
    assert_eq!(store.read_snapshot(&one).await.unwrap(), Some(snapshot(&one, 8, 1)));
    assert_eq!(store.read_snapshot(&other).await.unwrap(), Some(snapshot(&other, 9, 1)));
    // Snapshots are not events: the streams and the log know nothing of them.
    assert!(store.read_stream(&one, 1).await.unwrap().is_empty());
    assert!(log_through_a_marker(&*store).await.iter().all(|e| e.stream_id != one && e.stream_id != other));
}

pub async fn a_snapshot_of_another_schema_replaces_the_kept_one(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("inventory");
    store.write_snapshot(snapshot(&stream, 50, 1)).await.unwrap();
    // Code with a new state shape writes its own, from an earlier version too.
    store.write_snapshot(snapshot(&stream, 40, 2)).await.unwrap();
    assert_eq!(store.read_snapshot(&stream).await.unwrap(), Some(snapshot(&stream, 40, 2)));
}

pub async fn an_offered_snapshot_is_written_in_the_background(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("inventory");
    store.offer_snapshot(snapshot(&stream, 3, 1));
    soon("the offered snapshot", || {
        let (store, stream) = (store.clone(), stream.clone());
        async move { store.read_snapshot(&stream).await.unwrap().filter(|s| *s == snapshot(&stream, 3, 1)) }
    })
    .await;
}

pub async fn an_unknown_stream_reads_empty(h: Arc<dyn Harness>) {
    assert!(h.store().read_stream("order-nobody", 1).await.unwrap().is_empty());
}

pub async fn reads_a_stream_from_a_version(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(3)).await.unwrap();
    let tail = store.read_stream(&stream, 2).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [2, 3]);
    assert!(store.read_stream(&stream, 4).await.unwrap().is_empty());
}

pub async fn reads_a_page_of_a_stream(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(5)).await.unwrap();
    let versions = |page: Vec<RecordedEvent>| page.iter().map(|e| e.stream_version).collect::<Vec<_>>();
    assert_eq!(versions(store.read_stream_page(&stream, 2, 2).await.unwrap()), [2, 3]);
    assert_eq!(versions(store.read_stream_page(&stream, 4, 10).await.unwrap()), [4, 5]);
    assert!(store.read_stream_page(&stream, 6, 10).await.unwrap().is_empty());
    assert!(store.read_stream_page(&stream, 1, 0).await.unwrap().is_empty());
    assert!(store.read_stream_page("order-nobody", 1, 10).await.unwrap().is_empty());
}

pub async fn a_wrong_expected_version_is_a_conflict_carrying_the_actual_version(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    let conflict = |r: Result<_, StoreError>| match r {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => actual,
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(conflict(store.append(&stream, ExpectedVersion::Exact(1), events(1)).await), 0);
    store.append(&stream, ExpectedVersion::Exact(0), events(2)).await.unwrap();
    assert_eq!(conflict(store.append(&stream, ExpectedVersion::NoStream, events(1)).await), 2);
    assert_eq!(conflict(store.append(&stream, ExpectedVersion::Exact(1), events(1)).await), 2);
    assert_eq!(conflict(store.append(&stream, ExpectedVersion::Exact(3), events(1)).await), 2);
    assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 2, "a conflict writes nothing");
    assert_eq!(store.append(&stream, ExpectedVersion::Exact(2), events(1)).await.unwrap().stream_version, 3);
}

pub async fn any_version_appends_to_new_and_existing_streams(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("inventory");
    assert_eq!(store.append(&stream, ExpectedVersion::Any, events(1)).await.unwrap().stream_version, 1);
    assert_eq!(store.append(&stream, ExpectedVersion::Any, events(2)).await.unwrap().stream_version, 3);
}

pub async fn only_one_of_racing_writers_with_the_same_expected_version_wins(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(1)).await.unwrap();
    let racers = (0..10).map(|_| {
        let (store, stream) = (store.clone(), stream.clone());
        tokio::spawn(async move { store.append(&stream, ExpectedVersion::Exact(1), events(1)).await })
    });
    let outcomes = futures_util::future::join_all(racers).await;
    let mut wins = 0;
    for outcome in outcomes {
        match outcome.unwrap() {
            Ok(result) => {
                wins += 1;
                assert_eq!(result.stream_version, 2);
            }
            Err(StoreError::WrongExpectedVersion { actual: 2, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 2);
}

pub async fn an_append_of_stored_event_ids_returns_the_original_result(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    let batch = events(3);
    let first = store.append(&stream, ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    let before = log_through_a_marker(&*store).await.len();
    // The retry carries the expected version the writer had: it is not a conflict.
    let again = store.append(&stream, ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    assert_eq!(again, first);
    let any = store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
    assert_eq!(any, first);
    assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 3);
    assert_eq!(log_through_a_marker(&*store).await.len(), before, "nothing was appended again");
}

pub async fn stored_event_ids_with_other_content_are_refused(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    let batch = events(2);
    store.append(&stream, ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    let duplicate = |r: Result<_, StoreError>| matches!(r, Err(StoreError::DuplicateEventId { .. }));

    let mut changed = batch.clone();
    changed[1].payload = json!({ "n": "other" });
    assert!(duplicate(store.append(&stream, ExpectedVersion::Any, changed).await));
    let elsewhere = unique_stream("order");
    if store.guarantees().store_wide_event_ids {
        assert!(duplicate(store.append(&elsewhere, ExpectedVersion::Any, batch.clone()).await));
    }
    let partial = vec![batch[0].clone(), event("Happened", json!({}))];
    assert!(duplicate(store.append(&stream, ExpectedVersion::Any, partial).await));
    let reordered = vec![batch[1].clone(), batch[0].clone()];
    assert!(duplicate(store.append(&stream, ExpectedVersion::Any, reordered).await));

    assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 2);
    if store.guarantees().store_wide_event_ids {
        assert!(store.read_stream(&elsewhere, 1).await.unwrap().is_empty());
    }
}

pub async fn racing_identical_appends_store_the_events_once(h: Arc<dyn Harness>) {
    let store = h.store();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let stream = unique_stream("order");
        let batch = events(2);
        let racers = (0..20).map(|_| {
            let (store, stream, batch) = (store.clone(), stream.clone(), batch.clone());
            tokio::spawn(async move { store.append(&stream, expected, batch).await })
        });
        let results: Vec<_> = futures_util::future::join_all(racers)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap_or_else(|e| panic!("{expected}: a racing retry failed: {e}")))
            .collect();
        assert!(results.iter().all(|r| *r == results[0]), "{expected}: {results:?}");
        assert_eq!(store.read_stream(&stream, 1).await.unwrap().len(), 2);
    }
}

pub async fn malformed_appends_are_refused_and_write_nothing(h: Arc<dyn Harness>) {
    let store = h.store();
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::InvalidAppend(_)));
    let stream = unique_stream("order");
    assert!(invalid(store.append(&stream, ExpectedVersion::Any, vec![]).await));
    let twice = event("Happened", json!({}));
    assert!(invalid(store.append(&stream, ExpectedVersion::Any, vec![twice.clone(), twice]).await));
    assert!(invalid(store.append("", ExpectedVersion::Any, events(1)).await));
    assert!(invalid(store.append(&"x".repeat(crate::MAX_STREAM_ID_LEN + 1), ExpectedVersion::Any, events(1)).await));
    let mut untyped = event("", json!({}));
    assert!(invalid(store.append(&stream, ExpectedVersion::Any, vec![untyped.clone()]).await));
    untyped.event_type = "Happened".into();
    untyped.schema_version = 0;
    assert!(invalid(store.append(&stream, ExpectedVersion::Any, vec![untyped]).await));
    assert!(store.read_stream(&stream, 1).await.unwrap().is_empty());
}

pub async fn a_hundred_events_in_one_append_keep_their_order(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    let batch = events(100);
    let result = store.append(&stream, ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    assert_eq!(result.stream_version, 100);
    let read = store.read_stream(&stream, 1).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        batch.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    assert!(read.windows(2).all(|w| w[0].log_position < w[1].log_position));
    let commits: HashSet<u64> = read.iter().map(|e| e.log_position.commit).collect();
    assert!(commits.len() == 1 || commits.len() == 100, "one append commits as one group (or each event alone)");
}

pub async fn the_global_log_reads_in_order_and_resumes_after_a_position(h: Arc<dyn Harness>) {
    let store = h.store();
    let (a, b) = (unique_stream("order"), unique_stream("payment"));
    store.append(&a, ExpectedVersion::NoStream, events(2)).await.unwrap();
    store.append(&b, ExpectedVersion::NoStream, events(1)).await.unwrap();
    store.append(&a, ExpectedVersion::Exact(2), events(2)).await.unwrap();

    let log = log_of(&*store, 5).await;
    assert_eq!(log.len(), 5);
    assert!(log.windows(2).all(|w| w[0].log_position < w[1].log_position), "log order");
    let streams: Vec<_> = log.iter().map(|e| (e.stream_id.as_str(), e.stream_version)).collect();
    assert_eq!(streams, [(a.as_str(), 1), (a.as_str(), 2), (b.as_str(), 1), (a.as_str(), 3), (a.as_str(), 4)]);

    let reader: &dyn EventStore = &*store;
    let read = move |after, limit| async move { reader.read_all(after, limit).await.unwrap() };
    soon("the first page", || async { (read(None, 2).await == log[..2]).then_some(()) }).await;
    soon("the rest", || async { (read(Some(log[1].log_position), 100).await == log[2..]).then_some(()) }).await;
    assert!(read(Some(log[4].log_position), 100).await.is_empty());
}

pub async fn a_subscription_catches_up_then_follows_new_events(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(3)).await.unwrap();
    let mut subscription = store.subscribe(None);
    let caught_up = take(&mut subscription, 3).await;
    assert_eq!(caught_up.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [1, 2, 3]);

    store.append(&stream, ExpectedVersion::Exact(3), events(2)).await.unwrap();
    let live = take(&mut subscription, 2).await;
    assert_eq!(live.iter().map(|e| e.stream_version).collect::<Vec<_>>(), [4, 5]);
    assert_quiet(&mut subscription, Duration::from_millis(300)).await;
}

pub async fn a_subscription_starts_after_the_given_position(h: Arc<dyn Harness>) {
    let store = h.store();
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(2)).await.unwrap();
    let second = store.read_stream(&stream, 2).await.unwrap().remove(0);
    store.append(&stream, ExpectedVersion::Exact(2), events(1)).await.unwrap();
    let mut subscription = store.subscribe(Some(second.log_position));
    let next = take(&mut subscription, 1).await;
    assert_eq!(next[0].stream_version, 3);
}

pub async fn stats_report_the_readable_head(h: Arc<dyn Harness>) {
    let store = h.store();
    assert_eq!(store.stats().await.unwrap().readable_head, None);
    let result = store.append(&unique_stream("order"), ExpectedVersion::NoStream, events(2)).await.unwrap();
    let stats = soon("the head is readable", || async {
        Some(store.stats().await.unwrap()).filter(|stats| stats.readable_head.is_some())
    })
    .await;
    assert_eq!(stats.readable_head, Some(result.log_position));
    assert_eq!(stats.held_back_events, 0);
}

pub async fn events_are_located_by_position_and_counted_after_one(h: Arc<dyn Harness>) {
    let store = h.store();
    assert_eq!(store.count_after(None, 100).await.unwrap(), 0);
    let stream = unique_stream("order");
    store.append(&stream, ExpectedVersion::NoStream, events(3)).await.unwrap();
    store.append(&unique_stream("payment"), ExpectedVersion::NoStream, events(2)).await.unwrap();
    let log = log_of(&*store, 5).await;
    for event in &log {
        let at = event.log_position;
        soon("located", || async { (store.locate(at.position).await.unwrap() == Some(at)).then_some(()) }).await;
    }
    let beyond = log[4].log_position.position + 1_000_000;
    assert_eq!(store.locate(beyond).await.unwrap(), None);
    for (after, at_most, expected) in [(None, 100, 5), (None, 3, 3), (Some(log[1].log_position), 100, 3)] {
        soon(&format!("{expected} counted after {after:?}, at most {at_most}"), || async {
            (store.count_after(after, at_most).await.unwrap() == expected).then_some(())
        })
        .await;
    }
    assert_eq!(store.count_after(Some(log[4].log_position), 100).await.unwrap(), 0);
}

/// 8 writers append 1 to 3 events at a time to a handful of shared streams,
/// each append held open for a random while and one in five rolled back,
/// while a subscriber reads from the start. The subscriber must see exactly
/// the committed events, each once, in log order and in each stream's order.
pub async fn concurrent_writers_with_rollbacks_are_delivered_exactly_once_in_order(h: Arc<dyn Harness>) {
    const WRITERS: usize = 8;
    const APPENDS_PER_WRITER: usize = 30;
    let store = h.store();
    let streams: Vec<String> = (0..4).map(|_| unique_stream("stress")).collect();
    let committed = Arc::new(Mutex::new(HashMap::<Uuid, String>::new()));
    let mut subscription = store.subscribe(None);

    let writers = (0..WRITERS).map(|_| {
        let (h, streams, committed) = (h.clone(), streams.clone(), committed.clone());
        tokio::spawn(async move {
            for _ in 0..APPENDS_PER_WRITER {
                let (stream, n, hold, commit) = {
                    let mut rng = rand::thread_rng();
                    let stream = streams[rng.gen_range(0..streams.len())].clone();
                    (stream, rng.gen_range(1..=3), Duration::from_millis(rng.gen_range(0..25)), rng.gen_bool(0.8))
                };
                let batch = events(n);
                let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
                let appended = h.append_held_open(&stream, ExpectedVersion::Any, batch, hold, commit).await.unwrap();
                if appended.is_some() {
                    committed.lock().unwrap().extend(ids.into_iter().map(|id| (id, stream.clone())));
                }
            }
        })
    });
    let delivered_while_writing = tokio::spawn(async move {
        let mut seen = Vec::new();
        // Read while the writers run; the rest is taken once they are done.
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(2), subscription.next()).await {
            seen.push(item.expect("subscription failed"));
        }
        (seen, subscription)
    });
    for writer in futures_util::future::join_all(writers).await {
        writer.unwrap();
    }
    let (mut delivered, mut subscription) = delivered_while_writing.await.unwrap();
    let committed = committed.lock().unwrap().clone();
    let missing = committed.len().saturating_sub(delivered.len());
    delivered.extend(take(&mut subscription, missing).await);
    assert_quiet(&mut subscription, Duration::from_millis(500)).await;

    let delivered_ids: Vec<Uuid> = delivered.iter().map(|e| e.event_id).collect();
    let unique: HashSet<Uuid> = delivered_ids.iter().copied().collect();
    assert_eq!(unique.len(), delivered_ids.len(), "an event was delivered twice");
    let committed_ids: HashSet<Uuid> = committed.keys().copied().collect();
    assert_eq!(unique, committed_ids, "delivered and committed events differ");
    assert!(delivered.windows(2).all(|w| w[0].log_position < w[1].log_position), "not in log order");

    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &delivered {
        assert_eq!(committed[&e.event_id], e.stream_id);
        versions.entry(e.stream_id.as_str()).or_default().push(e.stream_version);
    }
    for (stream, versions) in versions {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "stream {stream} delivered out of order or with a gap");
    }
    // A reader that starts afterwards sees the same log.
    let replay: Vec<Uuid> = log_of(&*store, delivered_ids.len()).await.iter().map(|e| e.event_id).collect();
    assert_eq!(replay, delivered_ids);
}
