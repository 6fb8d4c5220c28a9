//! `command-side [serve|migrate|relay]`: the command API, only its
//! migrations, or the relay that publishes the log to NATS JetStream.

use anyhow::{bail, Context};
use std::sync::Arc;

use command_side::relay::{self, RelayConfig};
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
        Some(other) => bail!("unknown command {other:?}: use `serve` (the default), `migrate` or `relay`"),
    }
    Ok(())
}

async fn relay(config: Config) -> anyhow::Result<()> {
    let env = &service_kit::config::Environment;
    let relay_config = RelayConfig::from_source(env)?;
    let nats_url: String = service_kit::config::parsed(env, "NATS_URL", "nats://127.0.0.1:4222".to_owned())?;
    let pool = command_side::migrate(&config).await.context("the relay cannot reach the database")?;
    // Waits for NATS if it is not up yet, rather than failing.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats_url.as_str())
        .await
        .with_context(|| format!("NATS_URL {nats_url:?} is not a NATS server address"))?;
    let store = Arc::new(PgEventStore::new(pool.clone()));
    tracing::info!(stream = %relay_config.stream, "relay starting");
    relay::run_supervised(store, pool, async_nats::jetstream::new(client), relay_config, shutdown::signal()).await;
    Ok(())
}
