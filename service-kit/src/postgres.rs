//! The one way every service gets its PostgreSQL pool (feature `postgres`).

use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPool;
use sqlx::Postgres;

use crate::config::{self, ConfigError, Secret, Source};

/// `DATABASE_URL` and `DATABASE_MAX_CONNECTIONS`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
}

/// Longest a query waits for a pooled connection before it fails (and the
/// caller answers 503 or tries again).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl DatabaseConfig {
    /// `at_least` connections: what the process needs at once to make progress.
    pub fn from_source(source: &dyn Source, at_least: u32) -> Result<Self, ConfigError> {
        let url = config::database_url(source)?;
        url.expose()
            .parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|e| ConfigError::new("DATABASE_URL", "***", format!("not a PostgreSQL URL: {e}")))?;
        let max_connections = config::ranged(source, "DATABASE_MAX_CONNECTIONS", 10u32.max(at_least), at_least, 1000)?;
        Ok(Self { url, max_connections })
    }

    /// Connects, creating the database first if it does not exist (convenient
    /// locally; in production it exists already).
    pub async fn connect(&self) -> Result<PgPool, sqlx::Error> {
        let url = self.url.expose();
        if !Postgres::database_exists(url).await? {
            tracing::info!("creating the database");
            Postgres::create_database(url).await?;
        }
        // The store's settings: a connection is checked before use only after a second idle.
        event_store::postgres::pool_options()
            .max_connections(self.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vars;

    #[test]
    fn the_database_settings_are_checked_and_never_echoed() {
        let config = DatabaseConfig::from_source(&Vars(&[]), 2).unwrap();
        assert_eq!((config.url.expose(), config.max_connections), (config::DEFAULT_DATABASE_URL, 10));
        let error = DatabaseConfig::from_source(&Vars(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]), 2).unwrap_err();
        assert!(error.name == "DATABASE_URL" && !error.to_string().contains("hunter2"), "{error}");
        let error = DatabaseConfig::from_source(&Vars(&[("DATABASE_MAX_CONNECTIONS", "3")]), 4).unwrap_err();
        assert_eq!(error.name, "DATABASE_MAX_CONNECTIONS");
    }
}
