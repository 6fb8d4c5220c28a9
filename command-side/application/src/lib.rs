//! The application layer of the command side: typed commands in, typed
//! results or a typed error out. Each command is a straight line of steps
//! (zero-to-production's `try_processing` is the model): the request's
//! `Idempotency-Key` (claimed, or the outcome saved under it returned), the
//! event metadata (who, correlation, causation, trace), the check of who asks
//! against the aggregate's state, the domain's decision and its append (with
//! retries on concurrency conflicts), and the outcome saved under the key.
//! The HTTP API and the saga participants both call it.
//!
//! - `orders`, `inventory`: the commands the API offers, one file per aggregate.
//! - `commands`: load, check, decide, append, retry: the core of every command;
//!   `cached`: the same from a kept state, for the saga participants' reactions.
//! - `idempotency`: `Idempotency-Key` claims and saved outcomes.
//! - `outcome`: what a command answers ([`Done`], [`CommandError`], [`Refusal`]).
//! - `webhooks`: merchants' webhook endpoints and which URLs they may have.

pub mod cached;
pub mod commands;
pub mod idempotency;
mod inventory;
mod orders;
pub mod outcome;
mod snapshots;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::Aggregate;
use event_store::{EventStore, Metadata};
use serde::de::DeserializeOwned;
use serde::Serialize;
use service_kit::personal_data::{MasterKeys, Vault};
use sqlx::PgPool;

pub use cached::StateCache;
pub use commands::{Appended, EventIds, ExecuteError, Invocation};
pub use inventory::ReceiveStock;
pub use orders::{CancelOrder, PlaceOrder, ShipOrder};
pub use outcome::{CommandError, Done, OrderAccepted, Refusal, StockAccepted};

use idempotency::{Key, Lease, NextAction, Saved};

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// As the events record it: `customer:<id>` or `admin:<id>`.
    pub actor: String,
    /// The customer a customer's token acts for; `None` for an administrator.
    pub customer: Option<String>,
}

/// One request to the application: who asks, how it is correlated, its key,
/// and the version it requires.
#[derive(Debug, Clone)]
pub struct Request {
    pub caller: Caller,
    pub correlation_id: String,
    /// What caused it (the HTTP request's id).
    pub causation_id: String,
    /// The W3C `traceparent` of the request's span, if traced.
    pub trace_context: String,
    /// `Idempotency-Key`, with the request's fingerprint.
    pub key: Option<Key>,
    /// `If-Match`: the stream version the client requires.
    pub if_match: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a command is decided again after a concurrency conflict.
    pub max_attempts: u32,
    /// How long an order may stay pending before it is cancelled.
    pub order_deadline: chrono::Duration,
    /// Longest a request waits for another one running under the same key.
    pub key_wait: Duration,
    /// Aggregate states kept for the reactions (see `cached`).
    pub kept_states: usize,
    /// Seal the customers' data keys (`PERSONAL_DATA_KEY`, `PERSONAL_DATA_PREVIOUS_KEYS`).
    pub master_keys: MasterKeys,
    /// Which webhook URLs may be registered (`WEBHOOK_ALLOWED_HOSTS`, `WEBHOOK_ALLOW_PRIVATE`).
    pub webhook_policy: webhooks::UrlPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            order_deadline: chrono::Duration::minutes(15),
            key_wait: Duration::from_secs(9),
            kept_states: 10_000,
            master_keys: MasterKeys::development(),
            webhook_policy: webhooks::UrlPolicy::default(),
        }
    }
}

/// The command side's application: the event store, the idempotency keys'
/// database, the settings, and the states kept for reactions.
#[derive(Clone)]
pub struct Application {
    store: Arc<dyn EventStore>,
    pool: PgPool,
    settings: Arc<Settings>,
    states: Arc<StateCache>,
    vault: Vault,
}

/// A request under way: how its events are made, and as of when.
struct Run {
    invocation: Invocation,
    now: DateTime<Utc>,
    lease: Option<Lease>,
}

/// The first step of a request: run it, or answer as it was answered before.
enum Start<T> {
    Run(Run),
    Saved(Saved<T>),
}

impl Application {
    pub fn new(store: Arc<dyn EventStore>, pool: PgPool, settings: Settings) -> Self {
        let states = Arc::new(StateCache::new(settings.kept_states));
        let vault = Vault::new(pool.clone(), settings.master_keys.clone());
        Self { store, pool, settings: Arc::new(settings), states, vault }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The customers' personal data: sealed, opened, erased.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The merchants' webhook endpoints.
    pub fn webhooks(&self) -> webhooks::Registry {
        webhooks::Registry::new(self.pool.clone(), self.settings.webhook_policy.clone())
    }

    /// Runs a command caused by an event (a saga participant's reaction) from
    /// the aggregate's kept state; answers the state after it. Commands sent
    /// this way must be idempotent in the domain (see `cached`).
    pub async fn react<A>(
        &self,
        invocation: &Invocation,
        stream_id: &str,
        command: A::Command,
    ) -> Result<Arc<A::State>, ExecuteError>
    where
        A: Aggregate,
        A::Command: Clone,
        A::State: Send + Sync + 'static,
    {
        let (_, state) = cached::execute::<A>(&*self.store, &self.states, stream_id, invocation, command).await?;
        Ok(state)
    }

    /// Runs a reaction's command whose state the caller does not need, in
    /// one append with the commands for the same stream that queue while it
    /// waits for the stream's turn (a hot item's reservations); answers how
    /// many commands that append held. See [`cached::execute_joined`].
    pub async fn react_joined<A>(
        &self,
        invocation: &Invocation,
        stream_id: &str,
        command: A::Command,
    ) -> Result<usize, ExecuteError>
    where
        A: Aggregate + 'static,
        A::Command: Clone + Send,
        A::State: Send + Sync + 'static,
    {
        cached::execute_joined::<A>(&*self.store, &self.states, stream_id, invocation, command).await
    }

    /// Runs several reactions' commands on one stream in one append, where
    /// that decides what running them one by one would; `false` (nothing
    /// appended) where it might not, and they are to be run one by one with
    /// [`Self::react`]. See [`cached::execute_together`].
    pub async fn react_together<A>(
        &self,
        stream_id: &str,
        commands: &[(Invocation, A::Command)],
    ) -> Result<bool, ExecuteError>
    where
        A: Aggregate,
        A::Command: Clone,
        A::State: Send + Sync + 'static,
    {
        cached::execute_together::<A>(&*self.store, &self.states, stream_id, commands).await
    }

    /// Keeps the state after an event this process was told of (a saga
    /// participant's message), where it can: see [`cached::StateCache::observe`].
    pub async fn observe<A>(&self, event: &event_store::RecordedEvent, decoded: &A::Event)
    where
        A: Aggregate,
        A::State: Send + Sync + 'static,
    {
        let at = Appended { stream_version: event.stream_version, position: event.log_position.position };
        self.states.observe::<A>(&event.stream_id, at, decoded).await;
    }

    /// The current state of the aggregate in `stream_id`, read from the store.
    pub async fn load<A: Aggregate>(&self, stream_id: &str) -> Result<A::State, ExecuteError> {
        commands::load::<A>(&*self.store, stream_id).await
    }

    /// Forgets idempotency keys older than `ttl`; answers how many.
    pub async fn forget_expired_keys(&self, ttl: Duration) -> Result<u64, sqlx::Error> {
        idempotency::forget_expired(&self.pool, ttl).await
    }

    /// The first step of every request: its key claimed (or the outcome saved
    /// under it returned), and how its events are made.
    async fn start<T: DeserializeOwned>(&self, request: &Request) -> Result<Start<T>, CommandError> {
        let lease = match &request.key {
            None => None,
            Some(key) => {
                match idempotency::try_processing(&self.pool, &request.caller.actor, key, self.settings.key_wait)
                    .await?
                {
                    NextAction::StartProcessing(lease) => Some(lease),
                    NextAction::ReturnSaved(saved) => return Ok(Start::Saved(saved)),
                }
            }
        };
        let (now, ids) = lease.as_ref().map_or((Utc::now(), EventIds::Random), |l| (l.requested_at, l.ids));
        let invocation = Invocation {
            metadata: Metadata {
                correlation_id: request.correlation_id.clone(),
                causation_id: request.causation_id.clone(),
                actor: request.caller.actor.clone(),
                trace_context: request.trace_context.clone(),
            },
            ids,
            expected_version: request.if_match,
            max_attempts: self.settings.max_attempts,
        };
        Ok(Start::Run(Run { invocation, now, lease }))
    }

    /// The last step of every request: its outcome saved under its key (a
    /// refusal too: the same request is refused again), or the key given back
    /// after a failure that may pass (the client's retry runs again).
    async fn finish<T: Serialize>(
        &self,
        request: &Request,
        lease: Option<Lease>,
        outcome: Result<T, CommandError>,
    ) -> Result<Done<T>, CommandError> {
        let (Some(key), Some(lease)) = (&request.key, lease) else {
            return outcome.map(|value| Done { value, replayed: false });
        };
        let actor = &request.caller.actor;
        let remembered = match &outcome {
            Ok(value) => idempotency::save(&self.pool, actor, key, &lease, &Saved::Accepted(value)).await,
            Err(CommandError::Refused(refusal)) => {
                idempotency::save(&self.pool, actor, key, &lease, &Saved::<&T>::Refused(refusal.clone())).await
            }
            Err(_) => idempotency::release(&self.pool, actor, key, &lease).await,
        };
        match remembered {
            Ok(true) => {}
            // This request outlived its lease and another took the key over:
            // the events are the same (derived ids), the successor answers.
            Ok(false) => tracing::warn!("the idempotency key was taken over; its new holder saves the outcome"),
            // The command's outcome stands; a retry with the key finds its events.
            Err(error) => tracing::warn!(%error, "could not save the idempotency key's outcome"),
        }
        outcome.map(|value| Done { value, replayed: false })
    }
}
