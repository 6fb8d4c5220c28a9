//! `migrate`: applies the system's pending migrations to `DATABASE_URL`
//! (creating the database if it does not exist), then exits.

use service_kit::config::Environment;
use service_kit::postgres::DatabaseConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = DatabaseConfig::from_source(&Environment, 1)?;
    migrations::connect_and_migrate(&database).await?.close().await;
    eprintln!("{} migrations applied", migrations::expected());
    Ok(())
}
