//! The relay process: a worker (see `worker`) that serves its health and
//! metrics on `RELAY_OPS_ADDR`, reports its lag, and relays until shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use event_store::EventStore;
use service_kit::Shutdown;
use sqlx::PgPool;

use crate::worker::{Connections, StartupError, Worker};
use crate::{checkpoint, relay, Config};

/// How often the relay's lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// The most events `relay_lag_events` counts: beyond, it says this many.
const LAG_COUNT_LIMIT: u64 = 100_000;

pub struct App {
    config: Config,
    worker: Worker,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let ops = (config.ops_addr, "RELAY_OPS_ADDR");
        let worker = Worker::connect(&config.common, &config.nats_url, ops).await?.follows_the_log();
        Ok(Self { config, worker })
    }

    /// Relays until `shutdown` (starting again after failures), reporting its lag.
    pub async fn run_until(self, shutdown: Shutdown) -> std::io::Result<()> {
        let (Connections { pool, store, nats }, ops) = self.worker.serve_ops(shutdown.clone());
        let stream = self.config.relay.stream.clone();
        let lag = tokio::spawn(report_lag(store.clone(), pool.clone(), stream.clone()));
        let horizon = tokio::spawn(event_store::watch::watch_log(store.clone(), LAG_EVERY));
        tracing::info!(%stream, "relay starting");
        relay::run_supervised(store, pool, jetstream::new(nats), self.config.relay, shutdown).await;
        lag.abort();
        horizon.abort();
        ops.await.unwrap_or(Ok(()))
    }
}

/// Reports `relay_lag_events` (readable events after the checkpoint, up to
/// [`LAG_COUNT_LIMIT`], plus those held back behind an open transaction)
/// every few seconds, for as long as it is polled.
async fn report_lag(store: Arc<dyn EventStore>, pool: PgPool, stream: String) {
    loop {
        match checkpoint::position(&pool, &stream).await {
            // Readable events after the checkpoint, and those held back behind an open transaction.
            Ok(after) => match (store.count_after(after, LAG_COUNT_LIMIT).await, store.stats().await) {
                (Ok(lag), Ok(stats)) => metrics::gauge!("relay_lag_events").set((lag + stats.held_back_events) as f64),
                (Err(error), _) | (_, Err(error)) => tracing::debug!(%error, "cannot count the relay's lag"),
            },
            Err(error) => tracing::debug!(%error, "cannot read the relay's checkpoint"),
        }
        tokio::time::sleep(LAG_EVERY).await;
    }
}
