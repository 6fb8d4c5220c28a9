//! `command-side [serve|migrate|relay|saga]`: the command API, only its
//! migrations, the relay that publishes the log to NATS JetStream, or the
//! saga participants that react to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream;

use command_side::relay::{self, RelayConfig};
use command_side::saga::{self, SagaConfig};
use command_side::{App, Config};
use event_store::EventStore;
use service_kit::ops::{Check, OpsServer};
use service_kit::{shutdown, telemetry};
use sqlx::PgPool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let mode = std::env::args().nth(1);
    let service = match mode.as_deref() {
        Some("relay") => "relay",
        Some("saga") => "saga",
        _ => "command-api",
    };
    let _telemetry = telemetry::init(service, &config.log_level, config.log_format);
    match mode.as_deref() {
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
    let ops = bind_ops(relay_config.ops_addr, "RELAY_OPS_ADDR").await?;
    let pool = command_side::migrate(&config).await.context("the relay cannot reach the database")?;
    let client = nats().await?;
    let store = open_store(&config, &pool).await?;
    let ops = tokio::spawn(ops.run(checks(&config, &store, &pool, &client), shutdown::signal()));
    let lag = tokio::spawn(relay::report_lag(store.clone(), pool.clone(), relay_config.stream.clone(), LAG_EVERY));
    tracing::info!(stream = %relay_config.stream, "relay starting");
    relay::run_supervised(store, pool, jetstream::new(client), relay_config, shutdown::signal()).await;
    lag.abort();
    ops.await??;
    Ok(())
}

async fn saga(config: Config) -> anyhow::Result<()> {
    let saga_config = SagaConfig::from_source(&service_kit::config::Environment)?;
    let ops = bind_ops(saga_config.ops_addr, "SAGA_OPS_ADDR").await?;
    let pool = command_side::migrate(&config).await.context("the saga participants cannot reach the database")?;
    let client = nats().await?;
    let store = open_store(&config, &pool).await?;
    let ops = tokio::spawn(ops.run(checks(&config, &store, &pool, &client), shutdown::signal()));
    tracing::info!(stream = %saga_config.events.stream, gateway = %saga_config.gateway.url, "saga participants starting");
    let gateway = saga::gateway::Gateway::new(saga_config.gateway.clone());
    saga::run(store, pool, jetstream::new(client), saga_config, gateway, shutdown::signal()).await?;
    ops.await??;
    Ok(())
}

/// How often the relay's lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

async fn bind_ops(addr: SocketAddr, setting: &str) -> anyhow::Result<OpsServer> {
    OpsServer::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({setting})"))
}

/// The event store `EVENT_STORE_URL` names (PostgreSQL, the pool's, by default).
async fn open_store(config: &Config, pool: &PgPool) -> anyhow::Result<Arc<dyn EventStore>> {
    config
        .event_store
        .open(pool.clone(), &domain::CATEGORIES)
        .await
        .context("cannot open the event store (EVENT_STORE_URL)")
}

/// Ready when the database (migrated), the event store and NATS answer.
fn checks(config: &Config, store: &Arc<dyn EventStore>, pool: &PgPool, client: &async_nats::Client) -> Vec<Check> {
    let mut checks = vec![Check::database(pool.clone(), migrations::expected()), Check::nats(client.clone())];
    checks.extend(Check::event_store_if_separate(&config.event_store, store));
    checks
}

/// `NATS_URL`; waits for NATS if it is not up yet, rather than failing.
async fn nats() -> anyhow::Result<async_nats::Client> {
    let nats_url = service_kit::config::nats_url(&service_kit::config::Environment)?;
    service_kit::nats::connect(&nats_url)
        .await
        .with_context(|| format!("NATS_URL {nats_url:?} is not a NATS server address"))
}
