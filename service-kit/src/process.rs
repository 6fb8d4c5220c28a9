//! What every process that keeps the system's data has in common (features
//! `postgres` and `event-store`): the settings it reads (`DATABASE_URL`,
//! `DATABASE_MAX_CONNECTIONS`, `EVENT_STORE_URL`, `LOG_LEVEL`,
//! `LOG_FORMAT`), the event store it opens, and the readiness of both.

use std::sync::Arc;

use event_store::{Backend, EventStore, StoreError};
use sqlx::PgPool;

use crate::config::{self, ConfigError, Source};
use crate::ops::Check;
use crate::postgres::DatabaseConfig;
use crate::telemetry::LogFormat;

#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub database: DatabaseConfig,
    pub event_store: Backend,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// `at_least` database connections (what the process needs at once),
    /// and `LOG_LEVEL` when unset.
    pub fn from_source(source: &dyn Source, at_least: u32, default_log_level: &str) -> Result<Self, ConfigError> {
        let (log_level, log_format) = config::logging(source, default_log_level)?;
        Ok(Self {
            database: DatabaseConfig::from_source(source, at_least)?,
            event_store: config::event_store(source)?,
            log_level,
            log_format,
        })
    }

    /// The event store `EVENT_STORE_URL` names (PostgreSQL, over `pool`, by
    /// default), holding the streams of `categories`.
    pub async fn open_store(&self, pool: &PgPool, categories: &[&str]) -> Result<Arc<dyn EventStore>, StoreError> {
        self.event_store.open(pool.clone(), categories).await
    }

    /// [`CommonConfig::open_store`] with the store's subscriptions tuned.
    pub async fn open_store_with(
        &self,
        pool: &PgPool,
        categories: &[&str],
        subscription: event_store::SubscriptionConfig,
    ) -> Result<Arc<dyn EventStore>, StoreError> {
        self.event_store.open_with(pool.clone(), categories, subscription).await
    }

    /// Ready when the database answers with `migrations` applied, and
    /// EventStoreDB, where it holds the events, answers too.
    pub fn checks(&self, pool: &PgPool, store: &Arc<dyn EventStore>, migrations: usize) -> Vec<Check> {
        let mut checks = vec![Check::database(pool.clone(), migrations)];
        checks.extend(Check::event_store_if_separate(&self.event_store, store));
        checks
    }
}
