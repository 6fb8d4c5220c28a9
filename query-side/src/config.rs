//! The query side's configuration, from environment variables (see the README).

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::auth::AuthConfig;
use service_kit::config::{self, ConfigError, Source};
use service_kit::process::CommonConfig;

#[derive(Debug, Clone)]
pub struct Config {
    /// The read models' database, the event store (read for `min_position`
    /// and the projections' lag), logging.
    pub common: CommonConfig,
    /// `QUERY_HTTP_ADDR`: where the API listens.
    pub http_addr: SocketAddr,
    /// `HTTP_REQUEST_TIMEOUT`
    pub request_timeout: Duration,
    /// `MIN_POSITION_WAIT`: longest a query waits for `min_position` before 503.
    pub min_position_wait: Duration,
    /// Bearer tokens and rate limits (see `service_kit::auth`).
    pub auth: AuthConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&config::Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_source(source, 2, "info,sqlx=warn")?,
            http_addr: config::parsed(source, "QUERY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            request_timeout: config::nonzero_duration(source, "HTTP_REQUEST_TIMEOUT", Duration::from_secs(10))?,
            min_position_wait: config::nonzero_duration(source, "MIN_POSITION_WAIT", Duration::from_secs(2))?,
            auth: AuthConfig::from_source(source)?,
        })
    }
}
