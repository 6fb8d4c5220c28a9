//! Running the participants: one supervised consumer per event type heard
//! (feeding every participant that hears it), and the deadline watcher.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use service_kit::{supervise, Shutdown};

use crate::config::{Deliveries, SagaConfig};
use crate::consumer::{self, Subscription};
use crate::deadline;
use crate::participants::{Acting, Hearing, Participant, Reactor};

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
    config: &Deliveries,
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

/// Runs every participant and the deadline watcher until `shutdown`. A
/// consumer that fails (NATS away, its consumer deleted) starts again after
/// a pause; the others carry on.
pub async fn run(
    reactor: Reactor,
    js: jetstream::Context,
    config: SagaConfig,
    shutdown: Shutdown,
) -> Result<(), SagaError> {
    relay::ensure_stream(&js, &config.deliveries.events).await?;
    ensure_dead_letter_stream(&js, &config.deliveries).await?;
    let mut tasks = tokio::task::JoinSet::new();
    // A subject the payment hears is handled no more at once than the gateway may be asked.
    let concurrency = |participant: &Participant| {
        if *participant == Participant::Payment {
            config.gateway_concurrency
        } else {
            config.concurrency
        }
    };
    for hearing in Hearing::all() {
        let subscription = Subscription {
            name: hearing.consumer(),
            event: hearing.event,
            concurrency: hearing.participants.iter().map(concurrency).min().unwrap_or(config.concurrency),
            start: DeliverPolicy::All,
            replaces: hearing.replaced(),
        };
        let (js, reactor, deliveries, shutdown) =
            (js.clone(), reactor.clone(), config.deliveries.clone(), shutdown.clone());
        tasks.spawn(async move {
            let acting = Acting::new(hearing.participants, &reactor);
            supervise(&subscription.name, &shutdown, RESTART_PAUSE, || {
                consumer::consume(&js, &deliveries, &subscription, &acting, &shutdown)
            })
            .await;
        });
    }
    let poll = config.deadline_poll;
    tasks.spawn(async move { deadline::watch(&reactor.app, &reactor.pool, poll, &shutdown).await });
    while tasks.join_next().await.is_some() {}
    tracing::info!("saga participants stopped");
    Ok(())
}

/// Pause before a failed consumer starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
