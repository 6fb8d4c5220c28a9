//! `command-side [serve|migrate|relay|saga]`: the command API, only its
//! migrations, the relay that publishes the log to NATS JetStream, or the
//! saga participants that react to it.

use anyhow::{bail, Context};
use std::sync::Arc;

use command_side::relay::{self, RelayConfig};
use command_side::saga::{self, SagaConfig};
use command_side::{App, Config};
use event_store::PgEventStore;
use service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(&config.log_level, config.log_format);
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let app = App::build(config).await.context("the command API cannot start")?;
            app.run_until(shutdown::signal()).await?;
        }
        Some("migrate") => {
            command_side::migrate(&config).await?.close().await;
            tracing::info!("migrations applied");
        }
        Some("relay") => relay(config).await?,
        Some("saga") => saga(config).await?,
        Some(other) => bail!("unknown command {other:?}: use `serve` (the default), `migrate`, `relay` or `saga`"),
    }
    Ok(())
}

async fn relay(config: Config) -> anyhow::Result<()> {
    let relay_config = RelayConfig::from_source(&service_kit::config::Environment)?;
    let pool = command_side::migrate(&config).await.context("the relay cannot reach the database")?;
    let js = jetstream().await?;
    let store = Arc::new(PgEventStore::new(pool.clone()));
    tracing::info!(stream = %relay_config.stream, "relay starting");
    relay::run_supervised(store, pool, js, relay_config, shutdown::signal()).await;
    Ok(())
}

async fn saga(config: Config) -> anyhow::Result<()> {
    let saga_config = SagaConfig::from_source(&service_kit::config::Environment)?;
    let pool = command_side::migrate(&config).await.context("the saga participants cannot reach the database")?;
    let js = jetstream().await?;
    let store = Arc::new(PgEventStore::new(pool.clone()));
    tracing::info!(stream = %saga_config.events.stream, gateway = %saga_config.gateway.url, "saga participants starting");
    let gateway = saga::gateway::Gateway::new(saga_config.gateway.clone());
    saga::run(store, pool, js, saga_config, gateway, shutdown::signal()).await?;
    Ok(())
}

/// `NATS_URL`; waits for NATS if it is not up yet, rather than failing.
async fn jetstream() -> anyhow::Result<async_nats::jetstream::Context> {
    let nats_url: String =
        service_kit::config::parsed(&service_kit::config::Environment, "NATS_URL", "nats://127.0.0.1:4222".to_owned())?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats_url.as_str())
        .await
        .with_context(|| format!("NATS_URL {nats_url:?} is not a NATS server address"))?;
    Ok(async_nats::jetstream::new(client))
}
