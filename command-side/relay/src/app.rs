//! The relay process: connects (the database migrated, the event store,
//! NATS), serves its health and metrics on `RELAY_OPS_ADDR`, reports its
//! lag, and relays until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use event_store::{EventStore, StoreError};
use service_kit::ops::{Check, OpsServer};
use service_kit::Shutdown;
use sqlx::PgPool;

use crate::{checkpoint, relay, Config};

/// How often the relay's lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// The most events `relay_lag_events` counts: beyond, it says this many.
const LAG_COUNT_LIMIT: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] migrations::MigrateError),
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] StoreError),
    #[error("NATS_URL is not a NATS server address: {0}")]
    Nats(#[from] async_nats::ConnectError),
    #[error("cannot listen on {addr} (RELAY_OPS_ADDR): {source}")]
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

    /// Relays until `shutdown` (starting again after failures), reporting its lag.
    pub async fn run_until(self, shutdown: Shutdown) -> std::io::Result<()> {
        let mut checks =
            vec![Check::database(self.pool.clone(), migrations::expected()), Check::nats(self.nats.clone())];
        checks.extend(Check::event_store_if_separate(&self.config.event_store, &self.store));
        let ops = tokio::spawn(self.ops.run(checks, shutdown.clone()));
        let stream = self.config.relay.stream.clone();
        let lag = tokio::spawn(report_lag(self.store.clone(), self.pool.clone(), stream.clone()));
        tracing::info!(%stream, "relay starting");
        let js = jetstream::new(self.nats);
        relay::run_supervised(self.store, self.pool, js, self.config.relay, shutdown).await;
        lag.abort();
        ops.await.unwrap_or(Ok(()))
    }
}

/// Reports `relay_lag_events` (readable events after the checkpoint, up to
/// [`LAG_COUNT_LIMIT`]) every few seconds, for as long as it is polled.
async fn report_lag(store: Arc<dyn EventStore>, pool: PgPool, stream: String) {
    loop {
        match checkpoint::position(&pool, &stream).await {
            Ok(after) => match store.count_after(after, LAG_COUNT_LIMIT).await {
                Ok(lag) => metrics::gauge!("relay_lag_events").set(lag as f64),
                Err(error) => tracing::debug!(%error, "cannot count the relay's lag"),
            },
            Err(error) => tracing::debug!(%error, "cannot read the relay's checkpoint"),
        }
        tokio::time::sleep(LAG_EVERY).await;
    }
}
