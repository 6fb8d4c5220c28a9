//! `migrate`: applies the system's pending migrations to `DATABASE_URL`
//! (creating the database if it does not exist), then exits.

use anyhow::Context;
use service_kit::config::Environment;
use service_kit::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = DatabaseConfig::from_source(&Environment, 1)?;
    let pool = config.connect().await.context("cannot reach the database (DATABASE_URL)")?;
    migrations::MIGRATOR.run(&pool).await.context("cannot apply the migrations")?;
    eprintln!("{} migrations applied", migrations::expected());
    Ok(())
}
