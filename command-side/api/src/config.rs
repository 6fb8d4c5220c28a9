//! The command API's configuration, from environment variables. See the
//! table in the README; every value is checked before the service starts.

use std::net::SocketAddr;
use std::time::Duration;

use application::webhooks::UrlPolicy;
use service_kit::auth::AuthConfig;
use service_kit::config::{self, ConfigError, Environment, Source};
use service_kit::personal_data::MasterKeys;
use service_kit::process::CommonConfig;

#[derive(Debug, Clone)]
pub struct Config {
    /// The database (idempotency keys, and the events by default), the event
    /// store (`EVENT_STORE_URL`), logging.
    pub common: CommonConfig,
    /// `COMMAND_HTTP_ADDR`: where the API listens.
    pub http_addr: SocketAddr,
    /// `COMMAND_OPS_ADDR`: `/metrics` and readiness with reasons, for operators.
    pub ops_addr: SocketAddr,
    /// `HTTP_BODY_LIMIT`: largest request body in bytes (larger: 413).
    pub body_limit: usize,
    /// `HTTP_REQUEST_TIMEOUT`: longest a request may take (longer: 503).
    pub request_timeout: Duration,
    /// `COMMAND_MAX_ATTEMPTS`: how often a command is decided again after a concurrency conflict.
    pub command_max_attempts: u32,
    /// `ORDER_DEADLINE`: how long an order may stay pending before it is cancelled.
    pub order_deadline: Duration,
    /// `IDEMPOTENCY_KEY_TTL`: how long an `Idempotency-Key` and its outcome are remembered.
    pub idempotency_key_ttl: Duration,
    /// Bearer tokens and rate limits (see `service_kit::auth`).
    pub auth: AuthConfig,
    /// `PERSONAL_DATA_KEY` (or `_FILE`), `PERSONAL_DATA_PREVIOUS_KEYS`: seal the customers' data keys.
    pub master_keys: MasterKeys,
    /// `WEBHOOK_ALLOWED_HOSTS`, `WEBHOOK_ALLOW_PRIVATE`: which URLs webhook endpoints may have.
    pub webhook_policy: UrlPolicy,
    /// `CORS_ALLOWED_ORIGINS` and the rest: browser clients (off by default).
    pub cors: service_kit::http::CorsConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_source(source, 1, "info,sqlx=warn")?,
            http_addr: config::parsed(source, "COMMAND_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            ops_addr: config::parsed(source, "COMMAND_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9104)))?,
            body_limit: config::ranged(source, "HTTP_BODY_LIMIT", 64 * 1024, 1024, 16 * 1024 * 1024)?,
            request_timeout: config::nonzero_duration(source, "HTTP_REQUEST_TIMEOUT", Duration::from_secs(10))?,
            command_max_attempts: config::ranged(source, "COMMAND_MAX_ATTEMPTS", 5, 1, 100)?,
            order_deadline: config::nonzero_duration(source, "ORDER_DEADLINE", Duration::from_secs(15 * 60))?,
            idempotency_key_ttl: config::nonzero_duration(
                source,
                "IDEMPOTENCY_KEY_TTL",
                Duration::from_secs(24 * 3600),
            )?,
            auth: AuthConfig::from_source(source)?,
            master_keys: MasterKeys::from_source(source)?,
            webhook_policy: UrlPolicy::from_source(source)?,
            cors: service_kit::http::CorsConfig::from_source(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn defaults_suit_a_local_machine() {
        let config = Config::from_source(&Vars(&[])).unwrap();
        assert_eq!(config.common.database.url.expose(), config::DEFAULT_DATABASE_URL);
        assert_eq!(config.http_addr.port(), 8080);
        assert_eq!(config.common.log_format, service_kit::telemetry::LogFormat::Json);
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [
            ("DATABASE_URL", "mysql://nope"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("COMMAND_HTTP_ADDR", "localhost"),
            ("HTTP_BODY_LIMIT", "ten"),
            ("HTTP_REQUEST_TIMEOUT", "0s"),
            ("COMMAND_MAX_ATTEMPTS", "-1"),
            ("ORDER_DEADLINE", "tomorrow"),
            ("IDEMPOTENCY_KEY_TTL", "1 fortnight"),
            ("LOG_LEVEL", "info,[[["),
            ("LOG_FORMAT", "xml"),
            ("EVENT_STORE_URL", "mysql://events"),
            ("WEBHOOK_ALLOWED_HOSTS", "https://x"),
            ("WEBHOOK_ALLOW_PRIVATE", "maybe"),
        ] {
            let error = Config::from_source(&Vars(&[(name, value)])).unwrap_err();
            assert_eq!(error.name, name, "{error}");
        }
    }

    #[test]
    fn a_bad_database_url_is_not_echoed() {
        let error = Config::from_source(&Vars(&[("DATABASE_URL", "mysql://user:hunter2@host/db")])).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = Config::from_source(&Vars(&[("EVENT_STORE_URL", "esdb://admin:hunter2@h:2113?tls=sometimes")]))
            .unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn the_events_live_in_postgresql_unless_event_store_url_says_otherwise() {
        assert_eq!(Config::from_source(&Vars(&[])).unwrap().common.event_store, event_store::Backend::Postgres);
        let esdb = Config::from_source(&Vars(&[("EVENT_STORE_URL", "esdb://localhost:2113?tls=false")]));
        if cfg!(feature = "eventstoredb") {
            assert_eq!(esdb.unwrap().common.event_store.name(), "eventstoredb");
        } else {
            assert!(esdb.unwrap_err().reason.contains("--features eventstoredb"));
        }
    }
}
