//! The saga participants: choreography over JetStream, no orchestrator.
//!
//! Each participant listens to the events the relay publishes, turns each one
//! into a command on its own aggregate (`participants`), and acknowledges the
//! message once the append committed (`consumer`). The payment participant
//! talks to the payment gateway (`gateway`); the deadline participant expires
//! orders left pending too long (`deadline`). Messages are checked like any
//! input (`trigger`); the ones that cannot be handled end in a dead-letter
//! stream with their error.

pub mod consumer;
pub mod deadline;
pub mod gateway;
pub mod participants;
pub mod trigger;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use event_store::EventStore;
use service_kit::config::{self, ConfigError, Source};
use sqlx::PgPool;

use crate::cached::StateCache;
use crate::relay::{self, RelayConfig};
use gateway::{Gateway, GatewayConfig};
use participants::{Participant, Reactor};

#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// The stream the relay publishes to, and its subject prefix.
    pub events: RelayConfig,
    /// `SAGA_DEAD_LETTER_STREAM`: where messages that cannot be handled go.
    pub dead_letter_stream: String,
    /// Subjects of dead letters: `<prefix>.<consumer>`.
    pub dead_letter_prefix: String,
    /// `SAGA_MAX_DELIVERIES`: deliveries of a failing message before it is dead-lettered.
    pub max_deliveries: i64,
    /// `SAGA_CONCURRENCY`: messages each consumer handles at once. The work
    /// is reads and appends on the database: more in flight only contends.
    pub concurrency: usize,
    /// `SAGA_GATEWAY_CONCURRENCY`: the same for the payment participant's
    /// consumers, whose messages mostly wait on the payment gateway.
    pub gateway_concurrency: usize,
    /// How long JetStream waits for an answer before delivering a message again.
    pub ack_wait: Duration,
    /// `SAGA_RETRY_DELAY`: pause before a failed or waiting message comes back (it grows).
    pub retry_delay: Duration,
    /// How often a command is decided again after a concurrency conflict.
    pub command_max_attempts: u32,
    /// Aggregate states the participants keep between commands (see `cached`).
    pub state_cache: usize,
    /// `DEADLINE_POLL`: how often overdue orders are looked for.
    pub deadline_poll: Duration,
    /// `SAGA_OPS_ADDR`: health and metrics of the saga process.
    pub ops_addr: SocketAddr,
    /// Chaos switch for tests: every message is handled, then delivered and handled once more.
    pub redeliver_once: bool,
    pub gateway: GatewayConfig,
}

impl SagaConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::new(RelayConfig::from_source(source)?, GatewayConfig::from_source(source)?);
        let dead_letter_stream: String =
            config::parsed(source, "SAGA_DEAD_LETTER_STREAM", defaults.dead_letter_stream.clone())?;
        if dead_letter_stream.is_empty()
            || !dead_letter_stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || dead_letter_stream == defaults.events.stream
        {
            return Err(ConfigError::new(
                "SAGA_DEAD_LETTER_STREAM",
                dead_letter_stream,
                "letters, digits, - and _ only, and not the events stream",
            ));
        }
        Ok(Self {
            dead_letter_stream,
            max_deliveries: config::ranged(source, "SAGA_MAX_DELIVERIES", defaults.max_deliveries, 1, 1000)?,
            concurrency: config::ranged(source, "SAGA_CONCURRENCY", defaults.concurrency, 1, 1024)?,
            gateway_concurrency: config::ranged(
                source,
                "SAGA_GATEWAY_CONCURRENCY",
                defaults.gateway_concurrency,
                1,
                4096,
            )?,
            retry_delay: config::nonzero_duration(source, "SAGA_RETRY_DELAY", defaults.retry_delay)?,
            deadline_poll: config::nonzero_duration(source, "DEADLINE_POLL", defaults.deadline_poll)?,
            ops_addr: config::parsed(source, "SAGA_OPS_ADDR", defaults.ops_addr)?,
            ..defaults
        })
    }

    /// Defaults around the given event stream and gateway.
    pub fn new(events: RelayConfig, gateway: GatewayConfig) -> Self {
        let dead_letter_prefix = format!("{}_deadletter", events.subject_prefix.replace('.', "_"));
        Self {
            events,
            dead_letter_stream: "DEADLETTER".into(),
            dead_letter_prefix,
            max_deliveries: 5,
            concurrency: 4,
            gateway_concurrency: 64,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            command_max_attempts: 20,
            state_cache: 10_000,
            deadline_poll: Duration::from_secs(1),
            ops_addr: SocketAddr::from(([127, 0, 0, 1], 9102)),
            redeliver_once: false,
            gateway,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error("JetStream: {0}")]
    Nats(String),
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

/// The dead-letter stream, created if missing (file storage, kept until drained).
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    config: &SagaConfig,
) -> Result<stream::Stream, SagaError> {
    js.get_or_create_stream(stream::Config {
        name: config.dead_letter_stream.clone(),
        subjects: vec![format!("{}.>", config.dead_letter_prefix)],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| SagaError::Nats(e.to_string()))
}

/// Runs every participant and the deadline watcher until `shutdown`, calling
/// the payment gateway through `gateway` (built from `config.gateway`; the
/// caller keeps a handle to watch its breaker). A consumer that fails (NATS
/// away, its consumer deleted) starts again after a pause; the others carry on.
pub async fn run(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    js: jetstream::Context,
    config: SagaConfig,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SagaError> {
    relay::ensure_stream(&js, &config.events).await?;
    ensure_dead_letter_stream(&js, &config).await?;
    let reactor = Reactor {
        store: store.clone(),
        pool: pool.clone(),
        gateway,
        max_attempts: config.command_max_attempts,
        states: Arc::new(StateCache::new(config.state_cache)),
    };
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for participant in Participant::ALL {
        for subscription in participant.subscriptions() {
            let (js, reactor, config, stopping) = (js.clone(), reactor.clone(), config.clone(), stopping.clone());
            tasks.spawn(async move { supervise(&js, &reactor, &config, participant, *subscription, stopping).await });
        }
    }
    let (poll, attempts) = (config.deadline_poll, config.command_max_attempts);
    tasks.spawn(async move { deadline::watch(&*store, &pool, poll, attempts, stopping).await });
    shutdown.await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("saga participants stopped");
    Ok(())
}

/// Pause before a failed consumer starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

async fn supervise(
    js: &jetstream::Context,
    reactor: &Reactor,
    config: &SagaConfig,
    participant: Participant,
    subscription: (&str, &str),
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let (participant_name, event_type) = (participant.name(), subscription.1);
    loop {
        let outcome = consumer::consume(js, reactor, config, participant, subscription, stopping.clone()).await;
        if *stopping.borrow() {
            return;
        }
        match outcome {
            Ok(()) => {
                tracing::warn!(participant = participant_name, event_type, "message stream ended; consuming again")
            }
            Err(error) => {
                tracing::warn!(participant = participant_name, event_type, %error, "consumer failed; starting again")
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn saga_settings_are_checked_and_named() {
        let config = SagaConfig::from_source(&Vars(&[])).unwrap();
        assert_eq!(
            (config.dead_letter_stream.as_str(), config.dead_letter_prefix.as_str()),
            ("DEADLETTER", "events_deadletter")
        );
        for (name, value) in [
            ("SAGA_DEAD_LETTER_STREAM", "EVENTS"),
            ("SAGA_DEAD_LETTER_STREAM", "a.b"),
            ("SAGA_MAX_DELIVERIES", "0"),
            ("SAGA_CONCURRENCY", "lots"),
            ("SAGA_GATEWAY_CONCURRENCY", "0"),
            ("SAGA_RETRY_DELAY", "0s"),
            ("DEADLINE_POLL", "often"),
            ("SAGA_OPS_ADDR", "nowhere"),
            ("PAYMENT_GATEWAY_URL", "ftp://x"),
        ] {
            assert_eq!(SagaConfig::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }
}
