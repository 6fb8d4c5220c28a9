//! The saga process: a worker (see `relay::worker`) that builds the
//! application layer and the gateway client, serves its health and metrics
//! on `SAGA_OPS_ADDR`, and runs the participants until shutdown.

use application::{Application, Settings};
use async_nats::jetstream;
use relay::worker::{Connections, StartupError, Worker};
use service_kit::Shutdown;

use crate::gateway::Gateway;
use crate::participants::Reactor;
use crate::{run, Config, SagaError};

pub struct App {
    config: Config,
    worker: Worker,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let ops = (config.ops_addr, "SAGA_OPS_ADDR");
        let worker = Worker::connect(&config.common, &config.nats_url, ops).await?;
        Ok(Self { config, worker })
    }

    /// Runs the participants until `shutdown`.
    pub async fn run_until(self, shutdown: Shutdown) -> Result<(), SagaError> {
        let (Connections { pool, store, nats }, ops) = self.worker.serve_ops(shutdown.clone());
        let saga = self.config.saga;
        tracing::info!(stream = %saga.deliveries.events.stream, gateway = %saga.gateway.url, "saga participants starting");
        let settings =
            Settings { max_attempts: saga.command_max_attempts, kept_states: saga.state_cache, ..Settings::default() };
        let app = Application::new(store, pool.clone(), settings);
        let reactor = Reactor::new(app, pool, Gateway::new(saga.gateway.clone()));
        let outcome = run(reactor, jetstream::new(nats), saga, shutdown).await;
        let _ = ops.await;
        outcome
    }
}
