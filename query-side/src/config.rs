//! The query side's configuration, from environment variables (see the README).

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::auth::AuthConfig;
use service_kit::config::{self, ConfigError, Source};
use service_kit::postgres::DatabaseConfig;
use service_kit::telemetry::LogFormat;

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`: the database of the read models.
    pub database: DatabaseConfig,
    /// `EVENT_STORE_URL`: where the events live; read for `min_position` and the projections' lag.
    pub event_store: event_store::Backend,
    /// `QUERY_HTTP_ADDR`: where the API listens.
    pub http_addr: SocketAddr,
    /// `HTTP_REQUEST_TIMEOUT`
    pub request_timeout: Duration,
    /// `MIN_POSITION_WAIT`: longest a query waits for `min_position` before 503.
    pub min_position_wait: Duration,
    /// Bearer tokens and rate limits (see `service_kit::auth`).
    pub auth: AuthConfig,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&config::Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let (log_level, log_format) = config::logging(source, "info,sqlx=warn")?;
        Ok(Self {
            database: DatabaseConfig::from_source(source, 2)?,
            event_store: config::event_store(source)?,
            http_addr: config::parsed(source, "QUERY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            request_timeout: config::nonzero_duration(source, "HTTP_REQUEST_TIMEOUT", Duration::from_secs(10))?,
            min_position_wait: config::nonzero_duration(source, "MIN_POSITION_WAIT", Duration::from_secs(2))?,
            auth: AuthConfig::from_source(source)?,
            log_level,
            log_format,
        })
    }
}
