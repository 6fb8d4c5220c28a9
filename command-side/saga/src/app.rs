//! The saga process: connects (the database migrated, the event store,
//! NATS), builds the application layer and the gateway client, serves its
//! health and metrics on `SAGA_OPS_ADDR`, and runs the participants until
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use application::{Application, Settings};
use async_nats::jetstream;
use event_store::{EventStore, StoreError};
use service_kit::ops::{Check, OpsServer};
use service_kit::Shutdown;
use sqlx::PgPool;

use crate::gateway::Gateway;
use crate::participants::Reactor;
use crate::{run, Config, SagaError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] migrations::MigrateError),
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] StoreError),
    #[error("NATS_URL is not a NATS server address: {0}")]
    Nats(#[from] async_nats::ConnectError),
    #[error("cannot listen on {addr} (SAGA_OPS_ADDR): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub struct App {
    config: Config,
    pool: PgPool,
    store: Arc<dyn EventStore>,
    nats: async_nats::Client,
    ops: OpsServer,
}

impl App {
    /// Connects to the database (migrated), the event store and NATS
    /// (waiting for it if it is not up yet), and binds the ops address.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let addr = config.ops_addr;
        let ops = OpsServer::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?;
        let pool = migrations::connect_and_migrate(&config.database).await?;
        let store = config.event_store.open(pool.clone(), &domain::CATEGORIES).await?;
        let nats = service_kit::nats::connect(&config.nats_url).await?;
        Ok(Self { config, pool, store, nats, ops })
    }

    /// Runs the participants until `shutdown`.
    pub async fn run_until(self, shutdown: Shutdown) -> Result<(), SagaError> {
        let mut checks =
            vec![Check::database(self.pool.clone(), migrations::expected()), Check::nats(self.nats.clone())];
        checks.extend(Check::event_store_if_separate(&self.config.event_store, &self.store));
        let ops = tokio::spawn(self.ops.run(checks, shutdown.clone()));
        let saga = self.config.saga;
        tracing::info!(stream = %saga.events.stream, gateway = %saga.gateway.url, "saga participants starting");
        let settings =
            Settings { max_attempts: saga.command_max_attempts, kept_states: saga.state_cache, ..Settings::default() };
        let app = Application::new(self.store, self.pool.clone(), settings);
        let reactor = Reactor { app, pool: self.pool, gateway: Gateway::new(saga.gateway.clone()) };
        let outcome = run(reactor, jetstream::new(self.nats), saga, shutdown).await;
        let _ = ops.await;
        outcome
    }
}
