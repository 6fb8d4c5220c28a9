//! Commands against aggregates whose state this process keeps between
//! commands, for the saga participants: a hot inventory item's stream grows
//! with every reservation, and reading all of it for each new one would make
//! a command cost as much as the item's whole history. With the state kept,
//! a command decides on it at once and appends with the version it knows:
//! optimistic concurrency refuses a stale decision, and only then are the
//! events appended since read. A decision that writes nothing (or refuses)
//! proves nothing about the state, so it is taken again after a read.
//!
//! For the saga participants' commands, whose event ids derive from the
//! message that caused them: a message delivered again is recognised by the
//! store (the ids are stored: it answers the first append's result, or
//! refuses ids stored with other content), and answered as done, without
//! deciding again. The domain need not remember every order it ever saw
//! (ADR 0011); while it does remember, a repeated command decides nothing.
//!
//! Commands on one stream take turns in this process (the second line of an
//! order recorded after the first, not beside it): the second then starts
//! from the state the first kept instead of reading the stream and losing
//! the race for its version. A stream no state is kept for is first taken
//! to be new (a payment requested), which the expected version checks: if
//! it exists after all, or the empty state would write nothing or refuse,
//! it is read.
//!
//! A hot stream (an item in a sale, hundreds of reservations a second) would
//! commit its commands one after another, each waiting for the one before.
//! Commands that need no state back ([`execute_joined`]: the inventory
//! participant's) queue instead while the stream's turn is taken, and
//! whoever takes it next appends all of them at once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use domain::Aggregate;
use event_store::{EventStore, ExpectedVersion, StoreError};

use crate::commands::{self, Appended, ExecuteError, Invocation};
use crate::snapshots;

/// Aggregate states by stream, at most `capacity` of them. Two generations
/// stand in for least-recently-used: states land in the recent one; when it
/// holds half the capacity it becomes the older one and the states nobody
/// used since the last turn are dropped. A hot stream's state is used, so
/// put back into the recent generation, all the time: it stays.
pub struct StateCache {
    generations: Mutex<Generations>,
    capacity: usize,
    /// Commands on a stream hold the turn of its stripe while they run.
    turns: Box<[tokio::sync::Mutex<()>]>,
    /// Commands waiting for a stream's turn to be run with others
    /// ([`execute_joined`]), by stream: a `Vec<Joining<A>>`.
    joining: Mutex<HashMap<String, Box<dyn Any + Send>>>,
}

/// A command waiting for its stream's turn, with where its outcome goes.
struct Joining<A: Aggregate> {
    call: (Invocation, A::Command),
    answer: tokio::sync::oneshot::Sender<Result<usize, ExecuteError>>,
}

/// The most commands one append takes for [`execute_joined`].
const MOST_JOINED: usize = 128;

/// Stripes of turns: streams that share one wait for each other (rarely).
const TURNS: usize = 1024;

#[derive(Default)]
struct Generations {
    recent: HashMap<String, Kept>,
    older: HashMap<String, Kept>,
}

struct Kept {
    appended: Appended,
    /// An `Arc<A::State>`.
    state: Box<dyn Any + Send>,
}

impl StateCache {
    pub fn new(capacity: usize) -> Self {
        let turns = (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect();
        Self {
            generations: Mutex::new(Generations::default()),
            capacity: capacity.max(2),
            turns,
            joining: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for the turn of `stream_id`: one command at a time per stream.
    async fn turn(&self, stream_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripe(stream_id).lock().await
    }

    /// The turn of `stream_id` if it is free.
    fn free_turn(&self, stream_id: &str) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.stripe(stream_id).try_lock().ok()
    }

    fn stripe(&self, stream_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(stream_id) as usize % self.turns.len();
        &self.turns[stripe]
    }

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

    /// Takes a stream's state out (a concurrent command on the same stream
    /// then reads it from the store: states are moved, never copied).
    fn take<A: Aggregate>(&self, stream_id: &str) -> Option<(Appended, A::State)>
    where
        A::State: Send + Sync + 'static,
    {
        let kept = {
            let mut generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
            generations.recent.remove(stream_id).or_else(|| generations.older.remove(stream_id))?
        };
        let state = *kept.state.downcast::<Arc<A::State>>().ok()?;
        // Unshared unless a caller still holds the answer it was given.
        Some((kept.appended, Arc::try_unwrap(state).unwrap_or_else(|shared| (*shared).clone())))
    }

    fn put<A: Aggregate>(&self, stream_id: &str, appended: Appended, state: Arc<A::State>)
    where
        A::State: Send + Sync + 'static,
    {
        let mut generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
        generations.older.remove(stream_id);
        generations.recent.insert(stream_id.to_owned(), Kept { appended, state: Box::new(state) });
        if generations.recent.len() >= self.capacity / 2 {
            generations.older = std::mem::take(&mut generations.recent);
        }
    }

    /// Keeps what this process was told of a stream's event (a message it
    /// handles): the stream's first event starts a state, the event right
    /// after a kept state advances it; any other changes nothing. A state
    /// kept this way is like any other: a decision on it that turns out
    /// stale fails its expected version and is taken again after a read. It
    /// saves the read (a snapshot probe and the stream) that the first
    /// command of this process on the stream would otherwise start with.
    pub async fn observe<A: Aggregate>(&self, stream_id: &str, at: Appended, event: &A::Event)
    where
        A::State: Send + Sync + 'static,
    {
        let _turn = self.turn(stream_id).await;
        let (appended, state) = match self.take::<A>(stream_id) {
            None if at.stream_version == 1 => (at, A::evolve(A::State::default(), event)),
            None => return,
            Some((kept, state)) if at.stream_version == kept.stream_version + 1 => (at, A::evolve(state, event)),
            Some(kept) => kept,
        };
        self.put::<A>(stream_id, appended, Arc::new(state));
    }

    pub fn len(&self) -> usize {
        let generations = self.generations.lock().unwrap_or_else(PoisonError::into_inner);
        generations.recent.len() + generations.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs a domain-idempotent command, starting from the kept state; answers
/// the state after it (shared with the cache, not copied), and keeps that.
pub async fn execute<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
) -> Result<(Appended, Arc<A::State>), ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
    A::State: Send + Sync + 'static,
{
    let _turn = cache.turn(stream_id).await;
    execute_in_turn::<A>(store, cache, stream_id, invocation, command).await
}

/// [`execute`], for a caller that holds the stream's turn.
async fn execute_in_turn<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    invocation: &Invocation,
    command: A::Command,
) -> Result<(Appended, Arc<A::State>), ExecuteError>
where
    A: Aggregate,
    A::Command: Clone,
    A::State: Send + Sync + 'static,
{
    // A kept state may be behind the store until this call has read it; a
    // stream without one is taken to be new until then.
    let mut unread = true;
    let (mut appended, mut state) =
        cache.take::<A>(stream_id).unwrap_or((Appended { stream_version: 0, position: 0 }, A::State::default()));
    for _ in 0..invocation.max_attempts.max(1) {
        let mut decision = A::decide(&state, command.clone());
        if unread && !matches!(&decision, Ok(events) if !events.is_empty()) {
            // Writing nothing, or refusing, is only the answer on a current state.
            if catch_up::<A>(store, stream_id, &mut appended, &mut state).await? > 0 {
                decision = A::decide(&state, command.clone());
            }
        }
        let events = match decision {
            Ok(events) if events.is_empty() => {
                let state = Arc::new(state);
                cache.put::<A>(stream_id, appended, state.clone());
                return Ok((appended, state));
            }
            Ok(events) => events,
            Err(rejected) => {
                cache.put::<A>(stream_id, appended, Arc::new(state));
                return Err(rejected.into());
            }
        };
        let new_events = commands::to_append(&events, invocation);
        match store.append(stream_id, ExpectedVersion::Exact(appended.stream_version), new_events).await {
            // The store answered a replay: these ids were stored before, at
            // other versions than this state's next ones. This very command
            // (the same message) was done before: the state, taken to be new
            // or kept from earlier, is not the stream's, so read it, and
            // answer it.
            Ok(result) if result.stream_version != appended.stream_version + events.len() as u64 => {
                return done_before::<A>(store, cache, stream_id, appended, state).await;
            }
            Ok(result) => {
                let state = Arc::new(events.iter().fold(state, A::evolve));
                let before = appended.stream_version;
                let appended =
                    Appended { stream_version: result.stream_version, position: result.log_position.position };
                snapshots::after_append::<A>(store, stream_id, before, appended, &state);
                cache.put::<A>(stream_id, appended, state.clone());
                return Ok((appended, state));
            }
            // These ids were stored with what another state decided: this
            // command was done before too (a redelivery after its aggregate
            // has forgotten the order it concerned, or to a process that
            // kept nothing of the stream). Deciding again would do it twice.
            Err(StoreError::DuplicateEventId { .. }) => {
                return done_before::<A>(store, cache, stream_id, appended, state).await;
            }
            // Someone appended first: read, and decide again.
            Err(StoreError::WrongExpectedVersion { .. }) if unread => {
                unread = false;
                catch_up::<A>(store, stream_id, &mut appended, &mut state).await?;
            }
            Err(StoreError::WrongExpectedVersion { .. }) => {
                catch_up::<A>(store, stream_id, &mut appended, &mut state).await?;
            }
            Err(other) => return Err(other.into()),
        }
    }
    cache.put::<A>(stream_id, appended, Arc::new(state));
    Err(ExecuteError::Contention(invocation.max_attempts))
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
/// one by one with [`execute`], which handles each of those; the state
/// taken for the attempt is not kept, so that starts from the store.
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
    together_in_turn::<A>(store, cache, stream_id, commands).await
}

/// [`execute_together`], for a caller that holds the stream's turn.
async fn together_in_turn<A>(
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
    let Some((before, mut state)) = cache.take::<A>(stream_id) else { return Ok(false) };
    let mut new_events = Vec::new();
    let mut decided = 0;
    for (invocation, command) in commands {
        match A::decide(&state, command.clone()) {
            Ok(events) if !events.is_empty() => {
                new_events.extend(commands::to_append(&events, invocation));
                decided += events.len() as u64;
                state = events.iter().fold(state, A::evolve);
            }
            _ => return Ok(false),
        }
    }
    // The same message twice in one batch (delivered again while in hand).
    let mut ids = std::collections::HashSet::with_capacity(new_events.len());
    if !new_events.iter().all(|event| ids.insert(event.event_id)) {
        return Ok(false);
    }
    match store.append(stream_id, ExpectedVersion::Exact(before.stream_version), new_events).await {
        Ok(result) if result.stream_version == before.stream_version + decided => {
            let after = Appended { stream_version: result.stream_version, position: result.log_position.position };
            let state = Arc::new(state);
            snapshots::after_append::<A>(store, stream_id, before.stream_version, after, &state);
            cache.put::<A>(stream_id, after, state);
            Ok(true)
        }
        // Stored before (the same messages again), or others wrote first.
        Ok(_) | Err(StoreError::DuplicateEventId { .. } | StoreError::WrongExpectedVersion { .. }) => Ok(false),
        Err(other) => Err(other.into()),
    }
}

/// Runs a domain-idempotent command whose caller needs no state back (an
/// item's reservations and releases) with the commands for the same stream
/// that arrive while it waits for the stream's turn: whoever gets the turn
/// runs every command queued for the stream by then, in the order they
/// came, in one append where [`execute_together`] can (falling back to one
/// by one where it cannot), and answers each. A hot stream (an item in a
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

/// Runs queued commands for one stream (the caller holds its turn) and answers each.
async fn run_joined<A>(store: &dyn EventStore, cache: &StateCache, stream_id: &str, queued: Vec<Joining<A>>)
where
    A: Aggregate + 'static,
    A::Command: Clone + Send,
    A::State: Send + Sync + 'static,
{
    let (calls, answers): (Vec<_>, Vec<_>) = queued.into_iter().map(|joining| (joining.call, joining.answer)).unzip();
    let together = calls.len();
    if together > 1 {
        match together_in_turn::<A>(store, cache, stream_id, &calls).await {
            Ok(true) => {
                for answer in answers {
                    let _ = answer.send(Ok(together));
                }
                return;
            }
            // Each would wait for the store alone: each is told it is away.
            Err(ExecuteError::Store(StoreError::Unavailable(error))) => {
                let reason = error.to_string();
                for answer in answers {
                    let _ = answer.send(Err(StoreError::Unavailable(reason.clone().into()).into()));
                }
                return;
            }
            Ok(false) | Err(_) => {}
        }
    }
    for ((invocation, command), answer) in calls.into_iter().zip(answers) {
        let outcome = execute_in_turn::<A>(store, cache, stream_id, &invocation, command).await;
        let _ = answer.send(outcome.map(|_| 1));
    }
}

/// The answer to a command the store recognised as done before: the stream's
/// state, read up to date and kept.
async fn done_before<A>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream_id: &str,
    mut appended: Appended,
    mut state: A::State,
) -> Result<(Appended, Arc<A::State>), ExecuteError>
where
    A: Aggregate,
    A::State: Send + Sync + 'static,
{
    catch_up::<A>(store, stream_id, &mut appended, &mut state).await?;
    let state = Arc::new(state);
    cache.put::<A>(stream_id, appended, state.clone());
    Ok((appended, state))
}

/// Brings a kept state up to the stream: the events appended after it; or,
/// for a state that knows nothing of the stream yet (taken to be new), the
/// stream's snapshot and the events after that. Answers how many events
/// were folded (a snapshot's count too, as a state that changed).
async fn catch_up<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
    appended: &mut Appended,
    state: &mut A::State,
) -> Result<usize, ExecuteError> {
    let mut from_snapshot = 0;
    if appended.stream_version == 0 {
        let (at, snapshot) = snapshots::start::<A>(store, stream_id).await?;
        if at.stream_version > 0 {
            (*appended, *state, from_snapshot) = (at, snapshot, 1);
        }
    }
    let folded = snapshots::catch_up::<A>(store, stream_id, appended, state).await?;
    snapshots::after_load::<A>(store, stream_id, folded, *appended, state);
    Ok(folded + from_snapshot)
}

#[cfg(test)]
mod tests {
    use domain::inventory::{Inventory, InventoryCommand};
    use event_store::{MemoryEventStore, Metadata};
    use uuid::Uuid;

    use super::*;
    use crate::commands::EventIds;

    fn invocation() -> Invocation {
        Invocation { metadata: Metadata::default(), ids: EventIds::Random, expected_version: None, max_attempts: 5 }
    }

    fn reserve(order: u128) -> InventoryCommand {
        InventoryCommand::Reserve { sku: "SKU-1".into(), order_id: Uuid::from_u128(order), quantity: 1 }
    }

    #[tokio::test]
    async fn a_kept_state_catches_up_with_what_others_appended() {
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
        let (appended, _) =
            execute::<Inventory>(&store, &cache, "inventory-SKU-9", &invocation(), receive).await.unwrap();
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
        let (_, state) =
            execute::<Inventory>(&*store, &cache, "inventory-SKU-1", &invocation(), reserve(0)).await.unwrap();
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
                all.extend(reserve[..reserves].iter().map(|&restarted| Delivery {
                    order,
                    reserve: true,
                    ship,
                    restarted,
                }));
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

    fn derived(namespace: u128) -> Invocation {
        Invocation { ids: EventIds::Derived(Uuid::from_u128(namespace)), ..invocation() }
    }

    fn receive(quantity: i64) -> InventoryCommand {
        InventoryCommand::Receive { sku: "SKU-1".into(), quantity }
    }

    fn written(events: Vec<event_store::RecordedEvent>) -> Vec<(Uuid, String, serde_json::Value, Metadata)> {
        events.into_iter().map(|e| (e.event_id, e.event_type, e.payload, e.metadata)).collect()
    }

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
