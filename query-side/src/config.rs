//! The query side's configuration, from environment variables (see the README).

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::auth::AuthConfig;
use service_kit::config::{self, ConfigError, Source};
use service_kit::personal_data::MasterKeys;
use service_kit::process::CommonConfig;

use crate::progress::WaiterLimits;

#[derive(Debug, Clone)]
pub struct Config {
    /// The read models' database, the event store (read for `min_position`
    /// and the projections' lag), logging.
    pub common: CommonConfig,
    /// `QUERY_HTTP_ADDR`: where the API listens.
    pub http_addr: SocketAddr,
    /// `QUERY_OPS_ADDR`: `/metrics` and readiness with reasons, for operators.
    pub ops_addr: SocketAddr,
    /// `HTTP_REQUEST_TIMEOUT`
    pub request_timeout: Duration,
    /// `MIN_POSITION_WAIT`: longest a query waits for `min_position` before 503.
    pub min_position_wait: Duration,
    /// `MIN_POSITION_WAITERS`, `MIN_POSITION_WAITERS_PER_CLIENT`: how many
    /// queries may wait for a position at once, in all and per client.
    pub waiters: WaiterLimits,
    /// Bearer tokens and rate limits (see `service_kit::auth`).
    pub auth: AuthConfig,
    /// `PERSONAL_DATA_KEY` (or `_FILE`), `PERSONAL_DATA_PREVIOUS_KEYS`: open the customers' data keys.
    pub master_keys: MasterKeys,
    /// `NATS_URL`: the admin API's dead letters (readiness never asks NATS).
    pub nats_url: String,
    /// `SAGA_DEAD_LETTER_STREAM`: where the consumers put what they give up on.
    pub dead_letter_stream: String,
    /// `CORS_ALLOWED_ORIGINS` and the rest: browser clients (off by default).
    pub cors: service_kit::http::CorsConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&config::Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_source(source, 2, "info,sqlx=warn")?,
            http_addr: config::parsed(source, "QUERY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            ops_addr: config::parsed(source, "QUERY_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9105)))?,
            request_timeout: config::nonzero_duration(source, "HTTP_REQUEST_TIMEOUT", Duration::from_secs(10))?,
            min_position_wait: config::nonzero_duration(source, "MIN_POSITION_WAIT", Duration::from_secs(2))?,
            waiters: waiter_limits(source)?,
            auth: AuthConfig::from_source(source)?,
            master_keys: MasterKeys::from_source(source)?,
            nats_url: config::nats_url(source)?,
            dead_letter_stream: dead_letter_stream(source)?,
            cors: service_kit::http::CorsConfig::from_source(source)?,
        })
    }
}

fn dead_letter_stream(source: &dyn Source) -> Result<String, ConfigError> {
    let name: String = config::parsed(source, "SAGA_DEAD_LETTER_STREAM", "DEADLETTER".to_owned())?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ConfigError::new("SAGA_DEAD_LETTER_STREAM", name, "letters, digits, - and _ only"));
    }
    Ok(name)
}

fn waiter_limits(source: &dyn Source) -> Result<WaiterLimits, ConfigError> {
    let defaults = WaiterLimits::default();
    let total = config::ranged(source, "MIN_POSITION_WAITERS", defaults.total, 1, 1_000_000)?;
    let per_client = config::ranged(source, "MIN_POSITION_WAITERS_PER_CLIENT", defaults.per_client, 1, 1_000_000)?;
    if per_client > total {
        return Err(ConfigError::new(
            "MIN_POSITION_WAITERS_PER_CLIENT",
            per_client.to_string(),
            format!("must not exceed MIN_POSITION_WAITERS ({total})"),
        ));
    }
    Ok(WaiterLimits { total, per_client })
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn waiter_limits_are_checked_and_named() {
        let config = Config::from_source(&Vars(&[])).unwrap();
        assert_eq!(config.waiters, WaiterLimits::default());
        let config =
            Config::from_source(&Vars(&[("MIN_POSITION_WAITERS", "50"), ("MIN_POSITION_WAITERS_PER_CLIENT", "5")]));
        assert_eq!(config.unwrap().waiters, WaiterLimits { total: 50, per_client: 5 });
        for (vars, named) in [
            (&[("MIN_POSITION_WAITERS", "0")][..], "MIN_POSITION_WAITERS"),
            (&[("MIN_POSITION_WAITERS_PER_CLIENT", "lots")][..], "MIN_POSITION_WAITERS_PER_CLIENT"),
            (
                &[("MIN_POSITION_WAITERS", "10"), ("MIN_POSITION_WAITERS_PER_CLIENT", "11")][..],
                "MIN_POSITION_WAITERS_PER_CLIENT",
            ),
            (&[("QUERY_OPS_ADDR", "nowhere")][..], "QUERY_OPS_ADDR"),
        ] {
            let error = Config::from_source(&Vars(vars)).unwrap_err();
            assert_eq!(error.name, named, "{error}");
        }
    }
}
