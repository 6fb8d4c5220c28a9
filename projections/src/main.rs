//! `projections [serve]`: runs every projection until SIGTERM.

use std::time::Duration;

use anyhow::Context;
use projections::ProjectorConfig;
use service_kit::config::{self, Environment};
use service_kit::telemetry;
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = &Environment;
    let database_url = config::database_url(env, DEFAULT_DATABASE_URL)?;
    let (log_level, log_format) = config::logging(env, "info,sqlx=warn")?;
    let batch_size = config::ranged(env, "PROJECTION_BATCH_SIZE", 500usize, 1, 10_000)?;
    let max_connections = config::ranged(env, "DATABASE_MAX_CONNECTIONS", 10u32, 4, 1000)?;
    telemetry::init(&log_level, log_format);

    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some(other) => anyhow::bail!("unknown command {other:?}: use `serve` (the default)"),
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url.expose())
        .await
        .context("cannot reach the database (DATABASE_URL)")?;
    event_store::postgres::MIGRATOR.run(&pool).await.context("cannot apply the migrations")?;
    let config = ProjectorConfig { batch_size, ..ProjectorConfig::default() };
    tracing::info!("projections running");
    projections::service::run_all(pool, config, service_kit::shutdown::signal()).await;
    Ok(())
}

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";
