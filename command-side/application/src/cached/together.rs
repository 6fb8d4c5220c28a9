//! Commands on one stream run together, in one append: several a caller
//! hands over at once ([`execute_together`]: an order's lines reported
//! reserved in one batch of messages), and those that queue for a busy
//! stream's turn ([`execute_joined`]: a hot item's reservations). Either way
//! each command decides on the state the ones before it left, its events
//! keep its own ids and metadata, and where one by one might decide
//! otherwise they run one by one.

use std::sync::{Arc, PoisonError};

use domain::Aggregate;
use event_store::{EventStore, ExpectedVersion, StoreError};

use super::{execute_in_turn, StateCache};
use crate::commands::{self, Appended, ExecuteError, Invocation};
use crate::snapshots;

/// A command waiting for its stream's turn, with where its outcome goes.
struct Joining<A: Aggregate> {
    call: (Invocation, A::Command),
    answer: tokio::sync::oneshot::Sender<Result<usize, ExecuteError>>,
}

/// The most commands one append takes for [`execute_joined`].
const MOST_JOINED: usize = 128;

impl StateCache {
    /// Queues a command to be run by whoever holds the stream's turn next.
    fn join<A: Aggregate + 'static>(&self, stream_id: &str, joining: Joining<A>)
    where
        A::Command: Send,
    {
        let mut queues = self.joining.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(stream_id.to_owned()).or_insert_with(|| Box::new(Vec::<Joining<A>>::new()));
        match queue.downcast_mut::<Vec<Joining<A>>>() {
            Some(queue) => queue.push(joining),
            // A stream holds one aggregate; were it another, its waiters run alone.
            None => *queue = Box::new(vec![joining]),
        }
    }

    /// Whether commands wait to be run with others on the stream.
    fn is_joined(&self, stream_id: &str) -> bool {
        self.joining.lock().unwrap_or_else(PoisonError::into_inner).contains_key(stream_id)
    }

    /// The commands queued for the stream, oldest first, at most [`MOST_JOINED`].
    fn joined<A: Aggregate + 'static>(&self, stream_id: &str) -> Vec<Joining<A>>
    where
        A::Command: Send,
    {
        let mut queues = self.joining.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queues.remove(stream_id) else { return Vec::new() };
        let Ok(mut queue) = queue.downcast::<Vec<Joining<A>>>() else { return Vec::new() };
        if queue.len() > MOST_JOINED {
            let rest = queue.split_off(MOST_JOINED);
            queues.insert(stream_id.to_owned(), Box::new(rest));
        }
        *queue
    }

    /// Remembers that another process appends to the stream too (at most
    /// as many streams as states are kept).
    fn raced(&self, stream_id: &str) {
        let mut raced = self.raced.lock().unwrap_or_else(PoisonError::into_inner);
        if raced.len() >= self.capacity {
            raced.clear();
        }
        raced.insert(stream_id.to_owned());
    }

    fn has_raced(&self, stream_id: &str) -> bool {
        self.raced.lock().unwrap_or_else(PoisonError::into_inner).contains(stream_id)
    }
}

/// Runs several domain-idempotent commands on one stream in one append (an
/// order's lines reported reserved in one batch of messages): each decides
/// on the state the ones before it left, and its events get its own
/// invocation's ids and metadata, so the log holds what running them one by
/// one would have written, in one transaction. Answers `false`, having
/// appended nothing, where one by one might decide differently: no state is
/// kept for the stream, a command would write nothing or refuse, two
/// commands are one (the same message twice), the stream moved on, or some
/// of the ids were stored before (a redelivery). The caller then runs them
/// one by one with [`execute`](super::execute), which handles each of
/// those; a state that folded decisions not appended is not kept, so that
/// starts from the store.
pub async fn execute_together<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    commands: &[(Invocation, A::Command)],
) -> Result<bool, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
    A::State: Send + Sync + 'static,
{
    let _turn = cache.turn(stream_id).await;
    let done = leading_in_turn::<A>(store, cache, stream_id, commands, true).await?;
    Ok(done > 0 && done == commands.len())
}

/// Decides `commands` in turn on the kept state, up to the first that would
/// write nothing, refuse, or write ids an earlier one writes (the same
/// message twice): those before it are appended at once, and the state
/// after them kept. Answers how many were done; 0 when nothing was kept,
/// none could be done, the stream moved on or some ids were stored before
/// (nothing appended). With `all`, only all of them or none are done.
///
/// A state nothing was decided on is kept as it was; one that folded
/// decisions that were not appended is dropped, and the next command
/// reads the stream. On a stream another process appends to as well (a
/// group lost the race for its version before: several saga instances
/// serving one hot item), the kept state first reads what was appended
/// since, so that the group rarely loses again and the state is rarely
/// dropped (dropped, a large item's state costs a load from its snapshot).
async fn leading_in_turn<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    commands: &[(Invocation, A::Command)],
    all: bool,
) -> Result<usize, ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
    A::State: Send + Sync + 'static,
{
    let Some((mut before, mut state)) = cache.take::<A>(stream_id) else { return Ok(0) };
    if cache.has_raced(stream_id) {
        super::catch_up::<A>(store, stream_id, &mut before, &mut state).await?;
    }
    let mut new_events = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut done = 0;
    for (invocation, command) in commands {
        let events = match A::decide(&state, command.clone()) {
            Ok(events) if !events.is_empty() => events,
            _ => break,
        };
        let appended = commands::to_append(&events, invocation);
        if !appended.iter().all(|event| ids.insert(event.event_id)) {
            break;
        }
        new_events.extend(appended);
        state = events.iter().fold(state, A::evolve);
        done += 1;
    }
    if done == 0 {
        cache.put::<A>(stream_id, before, Arc::new(state));
        return Ok(0);
    }
    if all && done < commands.len() {
        return Ok(0);
    }
    let decided = new_events.len() as u64;
    match store.append(stream_id, ExpectedVersion::Exact(before.stream_version), new_events).await {
        Ok(result) if result.stream_version == before.stream_version + decided => {
            let after = Appended { stream_version: result.stream_version, position: result.log_position.position };
            let state = Arc::new(state);
            snapshots::after_append::<A>(store, stream_id, before.stream_version, after, &state);
            cache.put::<A>(stream_id, after, state);
            Ok(done)
        }
        Err(StoreError::WrongExpectedVersion { .. }) => {
            commands::decided_again::<A>();
            cache.raced(stream_id);
            Ok(0)
        }
        // Stored before (the same messages again).
        Ok(_) | Err(StoreError::DuplicateEventId { .. }) => Ok(0),
        Err(other) => Err(other.into()),
    }
}

/// Runs a domain-idempotent command whose caller needs no state back (an
/// item's reservations and releases) with the commands for the same stream
/// that arrive while it waits for the stream's turn: whoever gets the turn
/// runs every command queued for the stream by then, in the order they
/// came, as many at a time in one append as decide what one by one would
/// (a message delivered again, which writes nothing, runs alone, as
/// [`execute`](super::execute) runs it), and answers each. A hot stream (an item in a
/// sale) then commits its commands in batches instead of one commit after
/// another. Answers how many commands the append that carried this one
/// held (1: alone).
///
/// A command that finds the turn free and nothing queued runs at once, as
/// [`execute`]. A waiter whose command was taken by a holder that was then
/// dropped before answering runs it itself: the ids, derived from the cause,
/// make that safe whether or not the holder's append was stored.
pub async fn execute_joined<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
) -> Result<usize, ExecuteError>
where
    A: Aggregate + 'static,
    A::Command: Clone + Send,
    A::State: Send + Sync + 'static,
{
    let mut held = cache.free_turn(stream_id);
    if held.is_some() && !cache.is_joined(stream_id) {
        return execute_in_turn::<A>(store, cache, stream_id, invocation, command).await.map(|_| 1);
    }
    let (answer, mut answered) = tokio::sync::oneshot::channel();
    cache.join::<A>(stream_id, Joining { call: (invocation.clone(), command.clone()), answer });
    loop {
        let turn = match held.take() {
            Some(turn) => turn,
            None => tokio::select! {
                biased;
                outcome = &mut answered => match outcome {
                    Ok(outcome) => return outcome,
                    Err(_) => break,
                },
                turn = cache.turn(stream_id) => turn,
            },
        };
        // A holder answers before it hands the turn on.
        match answered.try_recv() {
            Ok(outcome) => return outcome,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return execute_in_turn::<A>(store, cache, stream_id, invocation, command).await.map(|_| 1);
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
        }
        run_joined(store, cache, stream_id, cache.joined::<A>(stream_id)).await;
        drop(turn);
    }
    // Taken by a holder that was dropped before it answered.
    let _turn = cache.turn(stream_id).await;
    execute_in_turn::<A>(store, cache, stream_id, invocation, command).await.map(|_| 1)
}

/// Runs queued commands for one stream (the caller holds its turn) and
/// answers each: as many as can go together in one append, then the first
/// that cannot alone (as [`execute`](super::execute) runs it), and so on.
async fn run_joined<A>(store: &dyn EventStore, cache: &StateCache, stream_id: &str, queued: Vec<Joining<A>>)
where
    A: Aggregate + 'static,
    A::Command: Clone + Send,
    A::State: Send + Sync + 'static,
{
    let (calls, answers): (Vec<_>, Vec<_>) = queued.into_iter().map(|joining| (joining.call, joining.answer)).unzip();
    let mut answers = answers.into_iter();
    let mut rest = calls.as_slice();
    while let [(invocation, command), others @ ..] = rest {
        let together = match others {
            [] => 0,
            _ => match leading_in_turn::<A>(store, cache, stream_id, rest, false).await {
                Ok(done) => done,
                // Each would wait for the store alone: each is told it is away.
                Err(ExecuteError::Store(StoreError::Unavailable(error))) => {
                    let reason = error.to_string();
                    for answer in answers {
                        let _ = answer.send(Err(StoreError::Unavailable(reason.clone().into()).into()));
                    }
                    return;
                }
                Err(_) => 0,
            },
        };
        if together > 0 {
            for answer in answers.by_ref().take(together) {
                let _ = answer.send(Ok(together));
            }
            rest = &rest[together..];
            continue;
        }
        let outcome = execute_in_turn::<A>(store, cache, stream_id, invocation, command.clone()).await;
        if let Some(answer) = answers.next() {
            let _ = answer.send(outcome.map(|_| 1));
        }
        rest = others;
    }
}

#[cfg(test)]
mod tests {
    use domain::inventory::{Inventory, InventoryCommand};
    use event_store::MemoryEventStore;
    use uuid::Uuid;

    use super::*;
    use crate::cached::execute;
    use crate::cached::tests::{derived, receive, reserve, written};

    /// Two reservations on one item in one append: the same events, ids
    /// and all, as running them one by one writes; the state after both is
    /// kept, so the next command decides on it without a read.
    #[tokio::test]
    async fn commands_together_append_once_what_one_by_one_would_write() {
        let reservations = [(derived(2), reserve(1)), (derived(3), reserve(2))];
        let together = crate::commands::tests::Counting::default();
        let cache = StateCache::new(10);
        execute::<Inventory>(&together, &cache, "inventory-SKU-1", &derived(1), receive(5)).await.unwrap();
        let done = execute_together::<Inventory>(&together, &cache, "inventory-SKU-1", &reservations).await;
        assert!(done.unwrap());
        assert_eq!(together.appends.load(std::sync::atomic::Ordering::SeqCst), 2, "one append for both");

        let apart = MemoryEventStore::new();
        let apart_cache = StateCache::new(10);
        execute::<Inventory>(&apart, &apart_cache, "inventory-SKU-1", &derived(1), receive(5)).await.unwrap();
        for (invocation, command) in &reservations {
            execute::<Inventory>(&apart, &apart_cache, "inventory-SKU-1", invocation, command.clone()).await.unwrap();
        }
        assert_eq!(
            written(together.store.read_stream("inventory-SKU-1", 1).await.unwrap()),
            written(apart.read_stream("inventory-SKU-1", 1).await.unwrap())
        );

        let (appended, state) =
            execute::<Inventory>(&together, &cache, "inventory-SKU-1", &derived(4), reserve(3)).await.unwrap();
        assert_eq!((appended.stream_version, state.reserved), (4, 3));
        assert_eq!(together.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// Wherever one by one might decide otherwise, commands together append
    /// nothing and say so; one by one then does what it always does.
    #[tokio::test]
    async fn commands_that_might_decide_otherwise_together_append_nothing() {
        let store = crate::commands::tests::Counting::default();
        let cache = StateCache::new(10);
        let appends = || store.appends.load(std::sync::atomic::Ordering::SeqCst);
        let stream = "inventory-SKU-1";
        let together = |commands: Vec<(Invocation, InventoryCommand)>| {
            let (store, cache) = (&store, &cache);
            async move { execute_together::<Inventory>(store, cache, stream, &commands).await.unwrap() }
        };

        // Nothing kept of the stream: one by one reads it first.
        assert!(!together(vec![(derived(2), receive(5))]).await);
        assert_eq!(appends(), 0);
        execute::<Inventory>(&store, &cache, stream, &derived(1), receive(5)).await.unwrap();

        // The second would write nothing (order 1 holds its stock already).
        assert!(!together(vec![(derived(2), reserve(1)), (derived(3), reserve(1))]).await);
        // One that refuses (a receipt of nothing). A command together that
        // did not go through leaves nothing kept: one by one reads first.
        execute::<Inventory>(&store, &cache, stream, &derived(2), reserve(1)).await.unwrap();
        let before = appends();
        assert!(!together(vec![(derived(4), reserve(4)), (derived(5), receive(0))]).await);
        assert_eq!(appends(), before, "nothing appended");

        // The stream moved on behind the kept state.
        execute::<Inventory>(&store, &cache, stream, &derived(4), reserve(4)).await.unwrap();
        commands::execute::<Inventory>(&store, stream, &derived(6), reserve(6)).await.unwrap();
        let before = appends();
        assert!(!together(vec![(derived(7), reserve(7)), (derived(8), reserve(8))]).await);
        assert_eq!(appends(), before + 1, "the one append refused for its version");

        // A reservation delivered again after its order let go of the stock:
        // deciding afresh would reserve it twice; its stored ids say it was done.
        let release = InventoryCommand::Release { sku: "SKU-1".into(), order_id: Uuid::from_u128(1) };
        execute::<Inventory>(&store, &cache, stream, &derived(9), release).await.unwrap();
        execute::<Inventory>(&store, &cache, stream, &derived(10), receive(1)).await.unwrap();
        assert!(!together(vec![(derived(2), reserve(1)), (derived(11), reserve(11))]).await);
        for (invocation, command) in [(derived(2), reserve(1)), (derived(11), reserve(11))] {
            execute::<Inventory>(&store, &cache, stream, &invocation, command).await.unwrap();
        }
        let state = commands::load::<Inventory>(&store.store, stream).await.unwrap();
        assert!(!state.holds.contains_key(&Uuid::from_u128(1)), "order 1 released and not reserved again");
        assert_eq!(state.holds.get(&Uuid::from_u128(11)), Some(&1));
    }

    /// Starts `execute_joined` of each command on its own task, in order,
    /// and lets them run until each has appended or waits.
    async fn start_joined(
        store: &Arc<crate::commands::tests::Counting>,
        cache: &Arc<StateCache>,
        calls: Vec<(Invocation, InventoryCommand)>,
    ) -> Vec<tokio::task::JoinHandle<Result<usize, ExecuteError>>> {
        let tasks = calls
            .into_iter()
            .map(|(invocation, command)| {
                let (store, cache) = (store.clone(), cache.clone());
                tokio::spawn(async move {
                    execute_joined::<Inventory>(&*store, &cache, "inventory-SKU-1", &invocation, command).await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tasks
    }

    /// Reservations on one item that arrive while its turn is taken (the
    /// first's append in flight) wait, and whoever gets the turn next appends
    /// them all at once, each command's events with its own ids, in the order
    /// they came; each is answered. A lone command is written alone.
    #[tokio::test]
    async fn commands_that_wait_for_a_busy_stream_are_appended_together() {
        let store = Arc::new(crate::commands::tests::Counting::default());
        let cache = Arc::new(StateCache::new(10));
        let stream = "inventory-SKU-1";
        let appends = || store.appends.load(std::sync::atomic::Ordering::SeqCst);
        execute::<Inventory>(&*store, &cache, stream, &derived(1), receive(50)).await.unwrap();
        assert_eq!(execute_joined::<Inventory>(&*store, &cache, stream, &derived(2), reserve(2)).await.unwrap(), 1);
        assert_eq!(appends(), 2, "alone, at once");

        let held = store.gate.write().await;
        let calls: Vec<_> = (10..20).map(|n| (derived(n), reserve(n))).collect();
        let tasks = start_joined(&store, &cache, calls.clone()).await;
        drop(held);
        let mut answers = vec![];
        for task in tasks {
            answers.push(task.await.unwrap().unwrap());
        }
        assert_eq!(answers, [vec![1], vec![9; 9]].concat(), "the first alone, the nine that waited together");
        assert_eq!(appends(), 4);

        // What one by one writes.
        let apart = MemoryEventStore::new();
        let apart_cache = StateCache::new(10);
        let all = [vec![(derived(1), receive(50)), (derived(2), reserve(2))], calls].concat();
        for (invocation, command) in all {
            execute::<Inventory>(&apart, &apart_cache, stream, &invocation, command).await.unwrap();
        }
        assert_eq!(
            written(store.store.read_stream(stream, 1).await.unwrap()),
            written(apart.read_stream(stream, 1).await.unwrap())
        );
        // The state after all of them is kept: no read.
        let (appended, state) = execute::<Inventory>(&*store, &cache, stream, &derived(30), reserve(30)).await.unwrap();
        assert_eq!((appended.stream_version, state.reserved), (13, 12));
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!cache.is_joined(stream), "nothing left waiting");
    }

    /// Waiting commands that cannot be appended together (one is a message
    /// delivered again while the first was in flight) run one by one, each
    /// answered its own outcome; nothing is done twice.
    #[tokio::test]
    async fn waiting_commands_that_cannot_go_together_run_one_by_one() {
        let store = Arc::new(crate::commands::tests::Counting::default());
        let cache = Arc::new(StateCache::new(10));
        let stream = "inventory-SKU-1";
        execute::<Inventory>(&*store, &cache, stream, &derived(1), receive(50)).await.unwrap();
        let held = store.gate.write().await;
        let calls = vec![(derived(2), reserve(2)), (derived(2), reserve(2)), (derived(3), reserve(3))];
        let tasks = start_joined(&store, &cache, calls).await;
        drop(held);
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        let state = commands::load::<Inventory>(&store.store, stream).await.unwrap();
        assert_eq!((state.reserved, state.holds.len()), (2, 2));
        assert_eq!(store.store.read_stream(stream, 1).await.unwrap().len(), 3);
    }

    /// A message delivered again amid a hot item's queue (it writes
    /// nothing) splits the queue: those before it in one append, it alone,
    /// those after it in another. The item's state stays kept throughout:
    /// only the repeated message reads the stream (to be sure it is done).
    #[tokio::test]
    async fn a_repeated_message_amid_the_queue_runs_alone_and_the_rest_together() {
        let store = Arc::new(crate::commands::tests::Counting::default());
        let cache = Arc::new(StateCache::new(10));
        let stream = "inventory-SKU-1";
        execute::<Inventory>(&*store, &cache, stream, &derived(1), receive(50)).await.unwrap();
        let appends = || store.appends.load(std::sync::atomic::Ordering::SeqCst);
        let held = store.gate.write().await;
        let calls: Vec<_> = [2, 3, 4, 2, 5, 6].into_iter().map(|n| (derived(n), reserve(n))).collect();
        let tasks = start_joined(&store, &cache, calls).await;
        drop(held);
        let mut answers = vec![];
        for task in tasks {
            answers.push(task.await.unwrap().unwrap());
        }
        assert_eq!(answers, [1, 2, 2, 1, 2, 2], "2 alone; 3 and 4; 2 again alone; 5 and 6");
        assert_eq!(appends(), 1 + 3, "the receipt; 2; 3 and 4; 5 and 6");
        assert_eq!(store.reads.load(std::sync::atomic::Ordering::SeqCst), 1, "only the repeated message read");
        let state = commands::load::<Inventory>(&store.store, stream).await.unwrap();
        assert_eq!((state.reserved, state.holds.len()), (5, 5));
    }

    /// Two processes serving one hot item: a group that lost the race for
    /// the item's version to the other (its state dropped) makes the
    /// process read what was appended before its next groups, which then
    /// go through together although the other keeps appending.
    #[tokio::test]
    async fn after_losing_a_race_to_another_process_groups_read_first() {
        let counters = service_kit::metrics::Counters::default();
        let _recorder = metrics::set_default_local_recorder(&counters);
        let store = crate::commands::tests::Counting::default();
        let cache = StateCache::new(10);
        let stream = "inventory-SKU-1";
        execute::<Inventory>(&store, &cache, stream, &derived(1), receive(50)).await.unwrap();
        let other = &store.store;
        let elsewhere = |n| async move {
            commands::execute::<Inventory>(other, stream, &derived(n), reserve(n)).await.unwrap();
        };
        let group = |first: u128| [(derived(first), reserve(first)), (derived(first + 1), reserve(first + 1))];

        elsewhere(100).await;
        assert!(!execute_together::<Inventory>(&store, &cache, stream, &group(10)).await.unwrap(), "lost the race");
        for (invocation, command) in group(10) {
            execute::<Inventory>(&store, &cache, stream, &invocation, command).await.unwrap();
        }
        for n in [101, 102] {
            elsewhere(n).await;
            let first = 10 * (n - 99);
            assert!(execute_together::<Inventory>(&store, &cache, stream, &group(first)).await.unwrap(), "read first");
        }
        let state = commands::load::<Inventory>(&store.store, stream).await.unwrap();
        assert_eq!(state.holds.len(), 9);
        // The one race lost is counted; the reads before the next groups
        // (and the first command after the loss, which had no state to
        // lose with) are not.
        assert_eq!(counters.get("application_commands_decided_again_total", &[("aggregate", "inventory")]), 1);
    }

    /// A holder dropped after taking the waiting commands, before it
    /// answered (its caller gave up): those it took run themselves.
    #[tokio::test]
    async fn commands_taken_by_a_holder_that_is_dropped_run_themselves() {
        let store = Arc::new(crate::commands::tests::Counting::default());
        let cache = Arc::new(StateCache::new(10));
        let stream = "inventory-SKU-1";
        execute::<Inventory>(&*store, &cache, stream, &derived(1), receive(50)).await.unwrap();
        let held = store.gate.write().await;
        let calls = (2..5).map(|n| (derived(n), reserve(n))).collect();
        let mut tasks = start_joined(&store, &cache, calls).await;
        // The first holds the turn, its append waiting; the others queue.
        tasks.remove(0).abort();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // The second took the turn and both queued commands; its append waits.
        tasks.remove(0).abort();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(held);
        assert_eq!(tasks.remove(0).await.unwrap().unwrap(), 1, "the third ran alone");
        let state = commands::load::<Inventory>(&store.store, stream).await.unwrap();
        assert_eq!(state.holds.keys().copied().collect::<Vec<_>>(), [Uuid::from_u128(4)]);
    }
}
