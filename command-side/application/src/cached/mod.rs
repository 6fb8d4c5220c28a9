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

mod together;
pub use together::{execute_joined, execute_together};

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
    /// Streams where a group of commands lost the race for the version to
    /// another process: their groups read what was appended first.
    raced: Mutex<std::collections::HashSet<String>>,
}

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
            raced: Mutex::new(std::collections::HashSet::new()),
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
            Err(StoreError::WrongExpectedVersion { .. }) => {
                // A stream taken to be new was a guess; a state kept or read lost a race.
                if !unread || appended.stream_version > 0 {
                    commands::decided_again::<A>();
                }
                unread = false;
                catch_up::<A>(store, stream_id, &mut appended, &mut state).await?;
            }
            Err(other) => return Err(other.into()),
        }
    }
    cache.put::<A>(stream_id, appended, Arc::new(state));
    Err(ExecuteError::Contention(invocation.max_attempts))
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
mod tests;
