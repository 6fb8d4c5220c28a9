//! Group commit: appends that arrive while others are being written go to
//! the database together, one statement and one commit for the lot.
//!
//! Every append of the process is queued here. Writer tasks take turns: the
//! one whose turn it is takes whatever has queued up (at most one append per
//! stream, and up to the batch limits) and writes it, while the next gathers
//! what arrives meanwhile. The next writes its batch when that statement
//! returns, or once it has been out for the relief delay
//! ([`GroupCommitConfig::relief`]): normally one statement is out at a time
//! (fewer, larger batches: less CPU per append on both sides, and more
//! appends per second while the machine is CPU-bound), and a slow one (a
//! lock wait, a slow flush, a batch written append by append) holds up the
//! others of the process only for that long.
//!
//! Each append in a batch keeps its own optimistic concurrency check: the
//! statement writes the appends whose stream is at their expected version
//! and none of whose event ids is stored, and leaves out the others, which
//! the caller then explains as it would a single append (conflict, replay).
//! A caller is answered after the commit returns, so nothing is
//! acknowledged before it is durable, and the statement is atomic: a batch
//! that fails fails for each of its callers, with nothing written. Only a
//! race with another transaction on the same stream or event id (another
//! process's append in flight) makes the whole statement fail; the batch's
//! appends are then written one by one.
//!
//! A batch of one is the plain one-event or many-event statement, and an
//! append that finds nothing queued and nothing being written is written by
//! its caller at once, so a lone client pays nothing for the grouping (not
//! even the hand-off to a writer task and back: two task wake-ups).
//!
//! Appends run on connections kept out of the pool between statements
//! (`kept.rs`): through the pool, each would pay sqlx's check of the
//! connection given back, a second round trip; and there the batch
//! statement is planned once, not at every execution.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use super::kept::{on_kept, Kept};
use super::notify::TaskGuard;
use super::queries::{self, Appended};
use crate::{ExpectedVersion, NewEvent, StoreError};

/// How appends are grouped.
#[derive(Debug, Clone)]
pub struct GroupCommitConfig {
    /// Writer tasks, each with at most one statement in flight: while one
    /// waits for its commit, the next gathers a batch, written when that
    /// commit returns or once it has been out for `relief`.
    pub writers: usize,
    /// How long a writer with a batch gathered waits for another writer's
    /// statement before writing its own beside it. Long enough for a
    /// statement and its commit under load (about a millisecond here), so
    /// that the next batch gathers behind it instead of going out small at
    /// once; short enough that a statement stuck on a lock or a slow flush
    /// does not stop the process's appends. Each time it runs out counts in
    /// `event_store_append_reliefs_total`.
    pub relief: Duration,
    /// The most appends in one batch.
    pub max_appends: usize,
    /// The most events in one batch (an append larger than this is written alone).
    pub max_events: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self { writers: 2, relief: Duration::from_millis(5), max_appends: 128, max_events: 2_000 }
    }
}

/// One append waiting for its batch.
pub(super) struct Request {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Arc<[NewEvent]>,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

impl Request {
    fn answer(self, result: Result<Appended, StoreError>) {
        // The caller may have given up (its timeout); then nobody listens.
        let _ = self.reply.send(result);
    }
}

pub(super) struct GroupCommit {
    queue: mpsc::Sender<Request>,
    /// Appends queued or being written, by the writers or by their callers.
    in_flight: AtomicUsize,
    kept: Arc<Kept>,
    _writers: Vec<TaskGuard>,
}

/// One append counted in flight until dropped (answered, or its caller gave up).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl GroupCommit {
    pub fn start(kept: Arc<Kept>, config: GroupCommitConfig) -> Self {
        // Room for a burst; beyond it, callers wait to queue (back-pressure).
        let (queue, receiver) = mpsc::channel(config.max_appends.max(1) * 8);
        let pending = Arc::new(Mutex::new(Pending { receiver, deferred: VecDeque::new() }));
        let writing = Arc::new(Writing::default());
        let writers = (0..config.writers.max(1))
            .map(|_| {
                let writer = Writer {
                    kept: kept.clone(),
                    pending: pending.clone(),
                    writing: writing.clone(),
                    config: config.clone(),
                };
                TaskGuard(tokio::spawn(writer.run()))
            })
            .collect();
        Self { queue, in_flight: AtomicUsize::new(0), kept, _writers: writers }
    }

    #[cfg(feature = "testing")]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Writes the append at once if nothing else is in flight; else queues
    /// it and waits for the outcome of its batch.
    pub async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Arc<[NewEvent]>,
    ) -> Result<Appended, StoreError> {
        if self.in_flight.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let _counted = InFlight(&self.in_flight);
            metrics::histogram!("event_store_append_batch_size").record(1.0);
            return one(&self.kept, stream_id, expected, &events).await;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _counted = InFlight(&self.in_flight);
        let (reply, outcome) = oneshot::channel();
        let request = Request { stream_id: stream_id.to_owned(), expected, events, reply };
        self.queue.send(request).await.map_err(|_| writers_gone())?;
        outcome.await.unwrap_or_else(|_| Err(writers_gone()))
    }
}

fn writers_gone() -> StoreError {
    StoreError::Unavailable("the append writers have stopped".into())
}

/// What waits to be written: the queue, and appends put back because their
/// stream already had an append in the batch being gathered.
struct Pending {
    receiver: mpsc::Receiver<Request>,
    deferred: VecDeque<Request>,
}

impl Pending {
    /// Waits for the first append of the next batch; `None` once the store is gone.
    async fn first(&mut self) -> Option<Request> {
        match self.deferred.pop_front() {
            Some(request) => Some(request),
            None => self.receiver.recv().await,
        }
    }

    /// The batch that starts with `first`: what else is waiting, within the
    /// limits and one append per stream.
    fn gather(&mut self, first: Request, config: &GroupCommitConfig) -> Vec<Request> {
        let mut events = first.events.len();
        let mut streams = HashSet::from([first.stream_id.clone()]);
        let mut batch = vec![first];
        let mut put_back = VecDeque::new();
        let mut earlier = std::mem::take(&mut self.deferred).into_iter();
        while batch.len() < config.max_appends {
            let Some(request) = earlier.next().or_else(|| self.receiver.try_recv().ok()) else { break };
            if request.reply.is_closed() {
                continue; // its caller gave up before it was written: do not write it
            }
            if events + request.events.len() > config.max_events || streams.contains(&request.stream_id) {
                put_back.push_back(request);
                continue;
            }
            events += request.events.len();
            streams.insert(request.stream_id.clone());
            batch.push(request);
        }
        // What was put back, and anything deferred not looked at, is first in line next time.
        put_back.extend(earlier);
        self.deferred = put_back;
        batch
    }
}

/// The writers' statements in flight, and a signal each time one returns.
#[derive(Default)]
struct Writing {
    statements: AtomicUsize,
    returned: Notify,
}

impl Writing {
    /// Returns at once if no other writer's statement is in flight, else
    /// when one returns, or after `relief` (counted) if none has.
    async fn wait_for_the_others(&self, relief: Duration) {
        let returned = self.returned.notified();
        tokio::pin!(returned);
        // Registered before looking, so a statement returning in between is not missed.
        returned.as_mut().enable();
        if self.statements.load(Ordering::Acquire) == 0 {
            return;
        }
        if tokio::time::timeout(relief, returned).await.is_err() {
            metrics::counter!("event_store_append_reliefs_total").increment(1);
        }
    }

    /// Counts `statement` in flight while it runs (until it returns, or is
    /// dropped: a writer that panicked must not keep the others waiting).
    async fn during<T>(&self, statement: impl std::future::Future<Output = T>) -> T {
        self.statements.fetch_add(1, Ordering::AcqRel);
        let _out = Out(self);
        statement.await
    }
}

/// A statement counted in [`Writing`]; dropped, it is no longer.
struct Out<'a>(&'a Writing);

impl Drop for Out<'_> {
    fn drop(&mut self) {
        self.0.statements.fetch_sub(1, Ordering::AcqRel);
        self.0.returned.notify_waiters();
    }
}

struct Writer {
    kept: Arc<Kept>,
    pending: Arc<Mutex<Pending>>,
    writing: Arc<Writing>,
    config: GroupCommitConfig,
}

impl Writer {
    async fn run(self) {
        loop {
            // Holding the lock while waiting makes the writers take turns.
            let mut pending = self.pending.lock().await;
            let Some(first) = pending.first().await else { return };
            // What arrives while another writer's statement is out joins this batch.
            self.writing.wait_for_the_others(self.config.relief).await;
            let batch = pending.gather(first, &self.config);
            drop(pending);
            metrics::histogram!("event_store_append_batch_size").record(batch.len() as f64);
            self.writing.during(self.write(batch)).await;
        }
    }

    async fn write(&self, mut batch: Vec<Request>) {
        if batch.len() == 1 {
            let request = batch.pop().expect("one request");
            let outcome = self.one(&request).await;
            return request.answer(outcome);
        }
        let appends: Vec<queries::BatchAppend<'_>> = batch
            .iter()
            .map(|r| queries::BatchAppend { stream_id: &r.stream_id, expected: r.expected, events: &r.events })
            .collect();
        let written = self.batch(&appends).await;
        match written {
            Ok(Some(outcomes)) => {
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.answer(Ok(outcome));
                }
            }
            Ok(None) => {
                // Another transaction raced for one of the batch's streams or
                // event ids (or deadlocked with it): write them one by one, each
                // finding out on its own.
                metrics::counter!("event_store_append_batch_splits_total").increment(1);
                let outcomes = futures_util::future::join_all(batch.iter().map(|request| self.one(request))).await;
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.answer(outcome);
                }
            }
            Err(error) => {
                for request in batch {
                    request.answer(Err(error.for_another_caller()));
                }
            }
        }
    }

    async fn one(&self, request: &Request) -> Result<Appended, StoreError> {
        one(&self.kept, &request.stream_id, request.expected, &request.events).await
    }

    async fn batch(&self, appends: &[queries::BatchAppend<'_>]) -> Result<Option<Vec<Appended>>, StoreError> {
        on_kept!(self.kept, |connection| queries::append_batch(connection, appends)).await
    }
}

/// One append's statement, on a kept connection.
async fn one(
    kept: &Kept,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Appended, StoreError> {
    on_kept!(kept, |connection| queries::append(connection, stream_id, expected, events)).await
}
