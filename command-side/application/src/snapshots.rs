//! Loading from a snapshot and the events after it, and offering new
//! snapshots, for aggregates whose [`Aggregate::SNAPSHOTS`] asks for them.
//! Every load goes through here: HTTP commands, and the saga participants'
//! kept states when a stream is first read (after a restart, a cache miss).

use domain::{Aggregate, SnapshotPolicy};
use event_store::{EventStore, Snapshot};

use crate::commands::{decode, Appended, ExecuteError};

/// Where a load starts: the state of the stream's snapshot (one of this
/// code's schema, that it can read) and its version; else the empty state.
pub(crate) async fn start<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
) -> Result<(Appended, A::State), ExecuteError> {
    let empty = (Appended { stream_version: 0, position: 0 }, A::State::default());
    let Some(policy) = A::SNAPSHOTS else { return Ok(empty) };
    let Some(snapshot) = store.read_snapshot(stream_id).await? else { return Ok(empty) };
    if snapshot.schema_version != policy.schema_version {
        return Ok(empty);
    }
    match A::decode_state(snapshot.state) {
        Some(state) => Ok((Appended { stream_version: snapshot.stream_version, position: snapshot.position }, state)),
        None => {
            tracing::warn!(
                stream_id,
                version = snapshot.stream_version,
                "a snapshot cannot be read; folding the stream"
            );
            Ok(empty)
        }
    }
}

/// The state of `stream_id` now: its snapshot and the events after it.
/// A load that folded many events offers a snapshot of what it built.
pub(crate) async fn load<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
) -> Result<(Appended, A::State), ExecuteError> {
    let (mut appended, mut state) = start::<A>(store, stream_id).await?;
    let folded = catch_up::<A>(store, stream_id, &mut appended, &mut state).await?;
    after_load::<A>(store, stream_id, folded, appended, &state);
    Ok((appended, state))
}

/// After a load that folded `folded` events into `state` (at `at`): a
/// snapshot when they were many, so the next load starts from here.
pub(crate) fn after_load<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
    folded: usize,
    at: Appended,
    state: &A::State,
) {
    if A::SNAPSHOTS.is_some_and(|policy| folded as u64 >= policy.interval(A::state_size(state))) {
        offer::<A>(store, stream_id, at, state);
    }
}

/// Applies the events appended after `appended` to `state`; answers how many.
pub(crate) async fn catch_up<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
    appended: &mut Appended,
    state: &mut A::State,
) -> Result<usize, ExecuteError> {
    let events = store.read_stream(stream_id, appended.stream_version + 1).await?;
    for stored in &events {
        *state = A::evolve(std::mem::take(state), &decode::<A>(stored)?);
        *appended = Appended { stream_version: stored.stream_version, position: stored.log_position.position };
    }
    Ok(events.len())
}

/// After an append took the stream from version `before` to `after`: a
/// snapshot of `state` (the state at `after`) when it crossed a multiple of
/// the policy's interval for a state of its size.
pub(crate) fn after_append<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
    before: u64,
    after: Appended,
    state: &A::State,
) {
    let interval = |policy: SnapshotPolicy| policy.interval(A::state_size(state));
    if A::SNAPSHOTS.is_some_and(|policy| after.stream_version / interval(policy) > before / interval(policy)) {
        offer::<A>(store, stream_id, after, state);
    }
}

fn offer<A: Aggregate>(store: &dyn EventStore, stream_id: &str, at: Appended, state: &A::State) {
    let Some(policy) = A::SNAPSHOTS else { return };
    if at.stream_version == 0 {
        return;
    }
    store.offer_snapshot(Snapshot {
        stream_id: stream_id.to_owned(),
        stream_version: at.stream_version,
        position: at.position,
        schema_version: policy.schema_version,
        state: A::encode_state(state),
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use domain::inventory::{Inventory, InventoryCommand, InventoryState};
    use event_store::{MemoryEventStore, Metadata};
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::*;
    use crate::cached::{self, StateCache};
    use crate::commands::{self, EventIds, Invocation};

    const STREAM: &str = "inventory-SKU-1";

    fn invocation() -> Invocation {
        Invocation { metadata: Metadata::default(), ids: EventIds::Random, expected_version: None, max_attempts: 5 }
    }

    fn command(n: u8, kind: u8) -> InventoryCommand {
        let (sku, order_id) = ("SKU-1".to_owned(), Uuid::from_u128(u128::from(n % 7)));
        match kind % 4 {
            0 => InventoryCommand::Receive { sku, quantity: i64::from(n % 9) + 1 },
            1 => InventoryCommand::Reserve { sku, order_id, quantity: i64::from(n % 4) + 1 },
            2 => InventoryCommand::Release { sku, order_id },
            _ => InventoryCommand::Ship { sku, order_id },
        }
    }

    /// A history of `commands` on one item, and the state after each event.
    async fn history(store: &MemoryEventStore, commands: &[(u8, u8)]) -> Vec<(Appended, InventoryState)> {
        for (n, kind) in commands {
            let _ = commands::execute::<Inventory>(store, STREAM, &invocation(), command(*n, *kind)).await;
        }
        let events = store.read_stream(STREAM, 1).await.unwrap();
        let mut state = InventoryState::default();
        events
            .iter()
            .map(|stored| {
                state = Inventory::evolve(std::mem::take(&mut state), &decode::<Inventory>(stored).unwrap());
                (
                    Appended { stream_version: stored.stream_version, position: stored.log_position.position },
                    state.clone(),
                )
            })
            .collect()
    }

    fn snapshot_of(at: Appended, state: &InventoryState, schema_version: u32) -> Snapshot {
        Snapshot {
            stream_id: STREAM.into(),
            stream_version: at.stream_version,
            position: at.position,
            schema_version,
            state: Inventory::encode_state(state),
        }
    }

    proptest! {
        /// Whatever version a snapshot was taken at, the state loaded from it
        /// and the events after it is the fold of the whole stream, on every
        /// path that loads: a command's load, and a kept state read after a restart.
        #[test]
        fn a_snapshot_and_its_tail_load_as_the_full_fold(
            commands in prop::collection::vec((any::<u8>(), any::<u8>()), 1..40),
            at in any::<prop::sample::Index>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let store = MemoryEventStore::new();
                let states = history(&store, &commands).await;
                let Some((_, full)) = states.last().cloned() else { return };
                let (version, taken) = &states[at.index(states.len())];
                store.write_snapshot(snapshot_of(*version, taken, 1)).await.unwrap();
                assert_eq!(commands::load::<Inventory>(&store, STREAM).await.unwrap(), full);
                // A kept state that knows nothing of the stream (a restart) reads the same.
                let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 1 };
                let (_, kept) = cached::execute::<Inventory>(&store, &StateCache::new(4), STREAM, &invocation(), receive.clone()).await.unwrap();
                let expected = Inventory::evolve(full, &domain::inventory::InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 1 });
                assert_eq!(*kept, expected);
            });
        }
    }

    #[tokio::test]
    async fn a_load_starts_from_the_snapshot() {
        let store = MemoryEventStore::new();
        let states = history(&store, &[(5, 0), (1, 1), (2, 1)]).await;
        let (at, _) = states[1];
        // A snapshot that says something the events do not: the load took it.
        let marked = InventoryState { on_hand: 1_000, ..InventoryState::default() };
        store.write_snapshot(snapshot_of(at, &marked, 1)).await.unwrap();
        assert_eq!(commands::load::<Inventory>(&store, STREAM).await.unwrap().on_hand, 1_000);
    }

    #[tokio::test]
    async fn a_snapshot_of_another_schema_or_unreadable_is_ignored() {
        let store = MemoryEventStore::new();
        let states = history(&store, &[(5, 0), (1, 1), (2, 1)]).await;
        let (at, full) = states.last().cloned().unwrap();
        let marked = InventoryState { on_hand: 1_000, ..InventoryState::default() };
        store.write_snapshot(snapshot_of(at, &marked, 99)).await.unwrap();
        assert_eq!(commands::load::<Inventory>(&store, STREAM).await.unwrap(), full);
        let mut unreadable = snapshot_of(at, &marked, 1);
        unreadable.state = serde_json::json!({"on_hand": "many"});
        store.write_snapshot(unreadable).await.unwrap();
        assert_eq!(commands::load::<Inventory>(&store, STREAM).await.unwrap(), full);
    }

    /// An item whose open orders keep growing (a sale) is snapshotted at
    /// versions 100, 200, 400, 800: each snapshot writes out every hold, so
    /// they come as far apart as the item holds orders, not every 100
    /// events, and the last is loaded as the full fold.
    #[tokio::test]
    async fn a_large_state_is_snapshotted_as_far_apart_as_it_is_large() {
        let store = Arc::new(crate::commands::tests::Counting::default());
        let cache = StateCache::new(4);
        let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 1_000 };
        cached::execute::<Inventory>(&*store, &cache, STREAM, &invocation(), receive).await.unwrap();
        for order in 1..850 {
            let reserve =
                InventoryCommand::Reserve { sku: "SKU-1".into(), order_id: Uuid::from_u128(order), quantity: 1 };
            cached::execute::<Inventory>(&*store, &cache, STREAM, &invocation(), reserve).await.unwrap();
        }
        assert_eq!(store.snapshots.load(std::sync::atomic::Ordering::SeqCst), 4);
        let snapshot =
            event_store::testing::eventually(std::time::Duration::from_secs(10), "the snapshot at 800", || {
                let store = store.clone();
                async move { store.read_snapshot(STREAM).await.unwrap().filter(|s| s.stream_version == 800) }
            })
            .await;
        assert_eq!(Inventory::decode_state(snapshot.state).unwrap().holds.len(), 799);
        let full = commands::load::<Inventory>(&store.store, STREAM).await.unwrap();
        assert_eq!((full.holds.len(), full.reserved), (849, 849));
    }

    /// Commands on a growing stream leave a snapshot behind every
    /// `SNAPSHOTS.every` events, without waiting for it.
    #[tokio::test]
    async fn a_growing_stream_is_snapshotted_along_the_way() {
        let store = Arc::new(MemoryEventStore::new());
        let every = Inventory::SNAPSHOTS.unwrap().every;
        let cache = StateCache::new(4);
        for n in 0..every + 5 {
            let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 1 };
            let (appended, _) =
                cached::execute::<Inventory>(&*store, &cache, STREAM, &invocation(), receive).await.unwrap();
            assert_eq!(appended.stream_version, n + 1);
        }
        let snapshot = event_store::testing::eventually(std::time::Duration::from_secs(10), "a snapshot", || {
            let store = store.clone();
            async move { store.read_snapshot(STREAM).await.unwrap() }
        })
        .await;
        assert_eq!(snapshot.stream_version, every);
        let state = Inventory::decode_state(snapshot.state).unwrap();
        assert_eq!(state.on_hand, every);
    }
}
