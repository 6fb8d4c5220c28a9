use domain::inventory::{Inventory, InventoryCommand};
use event_store::{MemoryEventStore, Metadata};
use uuid::Uuid;

use super::*;
use crate::commands::EventIds;

pub(super) fn invocation() -> Invocation {
    Invocation { metadata: Metadata::default(), ids: EventIds::Random, expected_version: None, max_attempts: 5 }
}

pub(super) fn reserve(order: u128) -> InventoryCommand {
    InventoryCommand::Reserve { sku: "SKU-1".into(), order_id: Uuid::from_u128(order), quantity: 1 }
}

#[tokio::test]
async fn a_kept_state_catches_up_with_what_others_appended() {
    let counters = service_kit::metrics::Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    let store = MemoryEventStore::new();
    let cache = StateCache::new(10);
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 5 };
    execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), receive.clone()).await.unwrap();
    // Another process appends behind the cache's back.
    commands::execute::<Inventory>(&store, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    let (appended, state) =
        execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(2)).await.unwrap();
    assert_eq!((appended.stream_version, state.reserved, state.available()), (3, 2, 3));
    assert_eq!(cache.len(), 1);
    // Its decision on the stale state was refused, and taken again: counted.
    assert_eq!(counters.get("application_commands_decided_again_total", &[("aggregate", "inventory")]), 1);
}

/// Ten reservations on one item at once: they take turns, so only the
/// first reads the stream (this process kept nothing of it yet, so it
/// first took it to be new), and none loses a race for its version
/// (which would read again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_one_stream_take_turns_and_read_it_once() {
    let store = Arc::new(crate::commands::tests::Counting::default());
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 50 };
    commands::execute::<Inventory>(&store.store, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    let cache = Arc::new(StateCache::new(10));
    let reservations = (0..10).map(|order| {
        let (store, cache) = (store.clone(), cache.clone());
        tokio::spawn(async move {
            execute::<Inventory>(&*store, &cache, "inventory-SKU-1", &invocation(), reserve(order)).await
        })
    });
    for reserved in futures_util::future::join_all(reservations).await {
        reserved.unwrap().unwrap();
    }
    assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 1);
    let state = commands::load::<Inventory>(&store.store, "inventory-SKU-1").await.unwrap();
    assert_eq!(state.reserved, 10);
}

/// A reservation delivered again to a process that kept nothing of the
/// item (restarted): taken to be new, the item would refuse it and clash
/// with the stored reservation's ids; it reads the item instead and finds
/// the reservation done.
#[tokio::test]
async fn a_redelivered_command_on_a_stream_nothing_is_kept_for_finds_it_done() {
    let store = MemoryEventStore::new();
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 5 };
    commands::execute::<Inventory>(&store, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    let derived = Invocation { ids: EventIds::Derived(Uuid::from_u128(3)), ..invocation() };
    let first = execute::<Inventory>(&store, &StateCache::new(10), "inventory-SKU-1", &derived, reserve(1)).await;
    let (first, _) = first.unwrap();
    let restarted = StateCache::new(10);
    let (again, state) =
        execute::<Inventory>(&store, &restarted, "inventory-SKU-1", &derived, reserve(1)).await.unwrap();
    assert_eq!(again, first);
    assert_eq!((state.reserved, state.available()), (1, 4));
    assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 2);
}

/// A stream nothing is kept for is taken to be new: a creation appends
/// without reading.
#[tokio::test]
async fn a_new_stream_is_written_without_reading_it() {
    let store = crate::commands::tests::Counting::default();
    let cache = StateCache::new(10);
    let receive = InventoryCommand::Receive { sku: "SKU-9".into(), quantity: 5 };
    let (appended, _) = execute::<Inventory>(&store, &cache, "inventory-SKU-9", &invocation(), receive).await.unwrap();
    assert_eq!(appended.stream_version, 1);
    assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Receives stock on an item through another process (nothing kept
/// here); answers the stream's events as this process would be told of them.
async fn received_elsewhere(store: &MemoryEventStore) -> Vec<(Appended, <Inventory as Aggregate>::Event)> {
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 5 };
    commands::execute::<Inventory>(store, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    let recorded = store.read_stream("inventory-SKU-1", 1).await.unwrap();
    recorded
        .iter()
        .map(|e| {
            let at = Appended { stream_version: e.stream_version, position: e.log_position.position };
            (at, commands::decode::<Inventory>(e).unwrap())
        })
        .collect()
}

/// Told of a stream's first event (a saga message), the process keeps
/// the state after it: its first command there decides at once and
/// appends without a read.
#[tokio::test]
async fn a_stream_observed_from_its_first_event_is_commanded_without_a_read() {
    let store = crate::commands::tests::Counting::default();
    let told = received_elsewhere(&store.store).await;
    let cache = StateCache::new(10);
    cache.observe::<Inventory>("inventory-SKU-1", told[0].0, &told[0].1).await;
    let (appended, state) =
        execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    assert_eq!((appended.stream_version, state.reserved, state.available()), (2, 1, 4));
    assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// An observed state is a kept state like any other: if the stream has
/// moved on, the decision on it fails its expected version and is taken
/// again on what the store holds.
#[tokio::test]
async fn an_observed_state_that_is_behind_the_stream_is_read_before_it_counts() {
    let store = MemoryEventStore::new();
    let told = received_elsewhere(&store).await;
    commands::execute::<Inventory>(&store, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    let cache = StateCache::new(10);
    cache.observe::<Inventory>("inventory-SKU-1", told[0].0, &told[0].1).await;
    let (appended, state) =
        execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(2)).await.unwrap();
    assert_eq!((appended.stream_version, state.reserved, state.available()), (3, 2, 3));
}

/// Only a stream's first event starts a state, and only the event right
/// after a kept state advances it: a later event with nothing kept, or
/// one the kept state already holds, changes nothing.
#[tokio::test]
async fn only_a_first_event_or_the_next_one_is_kept() {
    let store = MemoryEventStore::new();
    let told = received_elsewhere(&store).await;
    let cache = StateCache::new(10);
    let (at, event) = &told[0];
    let later = Appended { stream_version: 2, ..*at };
    cache.observe::<Inventory>("inventory-SKU-1", later, event).await;
    assert!(cache.is_empty(), "a state from the middle of a stream would be wrong");
    execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    cache.observe::<Inventory>("inventory-SKU-1", *at, event).await;
    let kept = cache.take::<Inventory>("inventory-SKU-1").expect("kept");
    assert_eq!((kept.0.stream_version, kept.1.reserved), (2, 1), "the newer state stays");
}

#[tokio::test]
async fn a_kept_state_that_would_do_nothing_is_read_up_to_date_first() {
    let store = MemoryEventStore::new();
    let cache = StateCache::new(10);
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 5 };
    execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    // Another process reserves for order 1; the kept state knows nothing of it.
    commands::execute::<Inventory>(&store, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    let release = InventoryCommand::Release { sku: "SKU-1".into(), order_id: Uuid::from_u128(1) };
    let (appended, state) =
        execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), release).await.unwrap();
    assert_eq!((appended.stream_version, state.reserved, state.available()), (3, 0, 5), "released");
    assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_repeated_saga_command_changes_nothing() {
    let store = MemoryEventStore::new();
    let cache = StateCache::new(10);
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 5 };
    execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    let first = execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    let again = execute::<Inventory>(&store, &cache, "inventory-SKU-1", &invocation(), reserve(1)).await.unwrap();
    assert_eq!(first.0, again.0);
    assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 2);
}

#[tokio::test]
async fn concurrent_commands_through_one_cache_all_land_once() {
    let store = Arc::new(MemoryEventStore::new());
    let cache = Arc::new(StateCache::new(10));
    let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 100 };
    execute::<Inventory>(&*store, &cache, "inventory-SKU-1", &invocation(), receive).await.unwrap();
    let tasks = (0..20u128).map(|order| {
        let (store, cache) = (store.clone(), cache.clone());
        tokio::spawn(async move {
            let many = Invocation { max_attempts: 100, ..invocation() };
            execute::<Inventory>(&*store, &cache, "inventory-SKU-1", &many, reserve(order % 10)).await.unwrap();
        })
    });
    futures_util::future::join_all(tasks).await;
    let (_, state) = execute::<Inventory>(&*store, &cache, "inventory-SKU-1", &invocation(), reserve(0)).await.unwrap();
    assert_eq!(state.reserved, 10, "ten orders, each reserved once");
    assert_eq!(store.read_stream("inventory-SKU-1", 1).await.unwrap().len(), 11);
}

/// What another process may do to the item, behind the cache's back, or
/// what this process's saga asks through the cache.
#[derive(Debug, Clone)]
enum Step {
    Elsewhere(InventoryCommand),
    Cached(InventoryCommand),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    fn sku() -> String {
        "SKU-1".to_owned()
    }
    let order = (0u128..6).prop_map(Uuid::from_u128);
    let saga = prop_oneof![
        (order.clone(), 1i64..4).prop_map(|(order_id, quantity)| InventoryCommand::Reserve {
            sku: sku(),
            order_id,
            quantity
        }),
        order.prop_map(|order_id| InventoryCommand::Release { sku: sku(), order_id }),
    ];
    prop_oneof![
        saga.clone().prop_map(Step::Cached),
        saga.prop_map(Step::Elsewhere),
        (1i64..5).prop_map(|quantity| Step::Elsewhere(InventoryCommand::Receive { sku: sku(), quantity })),
    ]
}

proptest::proptest! {
    /// Whatever others append in between, every answer the cache gives
    /// is the stream's current state (decided on the kept state at once,
    /// or read up to date first), and what it appends is what a command
    /// on the freshly read stream would have appended.
    #[test]
    fn the_kept_state_never_answers_behind_the_stream(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (kept, fresh) = (MemoryEventStore::new(), MemoryEventStore::new());
            let cache = StateCache::new(10);
            let stream = "inventory-SKU-1";
            for step in steps {
                match step {
                    Step::Elsewhere(command) => {
                        let on_kept = commands::execute::<Inventory>(&kept, stream, &invocation(), command.clone()).await;
                        let on_fresh = commands::execute::<Inventory>(&fresh, stream, &invocation(), command).await;
                        assert_eq!(on_kept.is_ok(), on_fresh.is_ok());
                    }
                    Step::Cached(command) => {
                        let through_cache = execute::<Inventory>(&kept, &cache, stream, &invocation(), command.clone()).await;
                        let read_first = commands::execute::<Inventory>(&fresh, stream, &invocation(), command).await;
                        assert_eq!(through_cache.is_ok(), read_first.is_ok());
                        if let Ok((appended, state)) = through_cache {
                            let stored = kept.read_stream(stream, 1).await.unwrap();
                            let decoded: Vec<_> = stored.iter().map(|e| commands::decode::<Inventory>(e).unwrap()).collect();
                            assert_eq!(appended.stream_version, stored.len() as u64);
                            assert_eq!(*state, Inventory::fold(&decoded));
                        }
                    }
                }
            }
            let events = |store: &MemoryEventStore| {
                let store = store.clone();
                async move {
                    let events = store.read_stream(stream, 1).await.unwrap();
                    events.into_iter().map(|e| (e.event_type, e.payload)).collect::<Vec<_>>()
                }
            };
            assert_eq!(events(&kept).await, events(&fresh).await, "the same events, in the same order");
        });
    }
}

/// One delivery of an order's message to the inventory participant: its
/// reservation, or its end (a shipment if `ship` and the order holds
/// stock, else a release); through the process's cache, or after a
/// restart (a cache that kept nothing).
#[derive(Debug, Clone, Copy)]
struct Delivery {
    order: u128,
    reserve: bool,
    ship: bool,
    restarted: bool,
}

fn deliveries() -> impl proptest::strategy::Strategy<Value = Vec<Delivery>> {
    use proptest::prelude::*;
    let order = (any::<bool>(), 1usize..4, 1usize..4, proptest::collection::vec(any::<bool>(), 8));
    proptest::collection::vec(order, 1..8).prop_flat_map(|orders| {
        let mut all = vec![];
        for (n, (ship, reserves, ends, restarts)) in orders.into_iter().enumerate() {
            let order = n as u128 + 1;
            let (reserve, end) = restarts.split_at(4);
            all.extend(reserve[..reserves].iter().map(|&restarted| Delivery { order, reserve: true, ship, restarted }));
            all.extend(end[..ends].iter().map(|&restarted| Delivery { order, reserve: false, ship, restarted }));
        }
        Just(all).prop_shuffle()
    })
}

proptest::proptest! {
    /// Reservations and releases are idempotent in any order of delivery,
    /// whatever the item still remembers: every message delivered once
    /// or several times, interleaved at random, some after a restart. In
    /// the end the item holds nothing for anyone and remembers no order
    /// (its state is bounded by the open orders), no order was reserved
    /// for twice, and stock only left with a shipment. Deliveries that
    /// come one after the other in a batch (`with_next`) are tried
    /// together first, as the saga's consumers do, or (`joined`) run
    /// at once through `execute_joined`, queueing while the first's
    /// append is in flight, as the inventory participant does.
    #[test]
    fn reserve_and_release_are_idempotent_in_any_order_of_delivery(
        deliveries in deliveries(),
        with_next in proptest::collection::vec(proptest::prelude::any::<bool>(), 48),
        joined in proptest::collection::vec(proptest::prelude::any::<bool>(), 48),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let store = crate::commands::tests::Counting::default();
            let stream = "inventory-SKU-1";
            let receive = InventoryCommand::Receive { sku: "SKU-1".into(), quantity: 10 };
            commands::execute::<Inventory>(&store, stream, &invocation(), receive).await.unwrap();
            let mut cache = StateCache::new(10);
            let mut ends = std::collections::HashMap::new();
            let mut batch: Vec<(Invocation, InventoryCommand)> = Vec::new();
            // Together if they can be, else one by one; or joined.
            async fn handle(
                store: &crate::commands::tests::Counting,
                cache: &StateCache,
                batch: Vec<(Invocation, InventoryCommand)>,
                joined: bool,
            ) {
                let stream = "inventory-SKU-1";
                if joined && !batch.is_empty() {
                    let held = store.gate.write().await;
                    let all = batch.into_iter().map(|(invocation, command)| async move {
                        execute_joined::<Inventory>(store, cache, stream, &invocation, command).await
                    });
                    let mut all = std::pin::pin!(futures_util::future::join_all(all));
                    // Each starts: the first that appends waits with the turn, the rest queue.
                    let outcomes = match futures_util::FutureExt::now_or_never(&mut all) {
                        Some(outcomes) => outcomes,
                        None => {
                            drop(held);
                            all.await
                        }
                    };
                    for outcome in outcomes {
                        outcome.unwrap();
                    }
                    return;
                }
                if batch.len() > 1 && execute_together::<Inventory>(store, cache, stream, &batch).await.unwrap() {
                    return;
                }
                for (derived, command) in batch {
                    let (_, state) = execute::<Inventory>(store, cache, stream, &derived, command).await.unwrap();
                    assert!(state.reserved <= state.on_hand);
                }
            }
            for (n, delivery) in deliveries.into_iter().enumerate() {
                if delivery.restarted {
                    handle(&store, &cache, std::mem::take(&mut batch), joined[n]).await;
                    cache = StateCache::new(10);
                }
                let order_id = Uuid::from_u128(delivery.order);
                // The message's id, and so the ids of what it causes, are the same at every delivery.
                let (message, command) = if delivery.reserve {
                    (1, reserve(delivery.order))
                } else {
                    // The order's end is one message: a shipment (only
                    // ever after a reservation that held: a confirmed
                    // order), or else a release; the same at every delivery.
                    let holds = commands::load::<Inventory>(&store, stream).await.unwrap().holds.contains_key(&order_id);
                    let ships = *ends.entry(delivery.order).or_insert(delivery.ship && holds);
                    let sku = "SKU-1".to_owned();
                    if ships { (2, InventoryCommand::Ship { sku, order_id }) } else { (3, InventoryCommand::Release { sku, order_id }) }
                };
                let ids = EventIds::Derived(Uuid::new_v5(&order_id, &[message]));
                batch.push((Invocation { ids, ..invocation() }, command));
                if !with_next[n] {
                    handle(&store, &cache, std::mem::take(&mut batch), joined[n]).await;
                }
            }
            handle(&store, &cache, batch, false).await;
            let stored = store.read_stream(stream, 1).await.unwrap();
            let events: Vec<_> = stored.iter().map(|e| commands::decode::<Inventory>(e).unwrap()).collect();
            let state = Inventory::fold(&events);
            assert!(state.holds.is_empty() && state.awaiting.is_empty() && state.reserved == 0, "{state:?}");
            let mut reserved_for = std::collections::HashSet::new();
            let mut shipped = 0;
            for event in &events {
                match event {
                    domain::inventory::InventoryEvent::StockReserved { order_id, .. } => {
                        assert!(reserved_for.insert(*order_id), "reserved twice for {order_id}");
                    }
                    domain::inventory::InventoryEvent::StockShipped { quantity, .. } => shipped += u64::from(*quantity),
                    _ => {}
                }
            }
            assert_eq!(state.on_hand, 10 - shipped);
        });
    }
}

#[test]
fn the_cache_stays_within_its_capacity_and_keeps_what_is_used() {
    let cache = StateCache::new(4);
    let hot = || (Appended { stream_version: 1, position: 1 }, Arc::new(Default::default()));
    for n in 0..50 {
        let (appended, state) = hot();
        cache.put::<Inventory>("inventory-hot", appended, state);
        assert!(cache.take::<Inventory>("inventory-hot").is_some(), "round {n}");
        let (appended, state) = hot();
        cache.put::<Inventory>("inventory-hot", appended, state);
        let state = Arc::new(Default::default());
        cache.put::<Inventory>(&format!("inventory-{n}"), Appended { stream_version: 1, position: 1 }, state);
        assert!(cache.len() <= 4);
    }
    assert!(cache.take::<Inventory>("inventory-49").is_some());
    assert!(cache.take::<Inventory>("inventory-0").is_none());
}

pub(super) fn derived(namespace: u128) -> Invocation {
    Invocation { ids: EventIds::Derived(Uuid::from_u128(namespace)), ..invocation() }
}

pub(super) fn receive(quantity: i64) -> InventoryCommand {
    InventoryCommand::Receive { sku: "SKU-1".into(), quantity }
}

pub(super) fn written(events: Vec<event_store::RecordedEvent>) -> Vec<(Uuid, String, serde_json::Value, Metadata)> {
    events.into_iter().map(|e| (e.event_id, e.event_type, e.payload, e.metadata)).collect()
}
