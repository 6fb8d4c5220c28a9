//! The simulator's configuration, from environment variables, checked at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::config::{self, ConfigError, Source};
use service_kit::telemetry::LogFormat;

use crate::Faults;

#[derive(Debug, Clone)]
pub struct Config {
    /// `GATEWAY_HTTP_ADDR`
    pub http_addr: SocketAddr,
    /// `GATEWAY_LATENCY`, `GATEWAY_ERROR_RATE`: faults from the start.
    pub faults: Faults,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&config::Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let latency = config::duration(source, "GATEWAY_LATENCY", Duration::ZERO)?;
        let rate = |name: &str| -> Result<f64, ConfigError> {
            let rate: f64 = config::parsed(source, name, 0.0)?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::new(name, rate.to_string(), "must be between 0 and 1"));
            }
            Ok(rate)
        };
        let (log_level, log_format) = config::logging(source, "info")?;
        Ok(Self {
            http_addr: config::parsed(source, "GATEWAY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8090)))?,
            faults: Faults {
                latency_ms: latency.as_millis() as u64,
                error_rate: rate("GATEWAY_ERROR_RATE")?,
                down: false,
                lost_answer_rate: rate("GATEWAY_LOST_ANSWER_RATE")?,
                garbled_answer_rate: rate("GATEWAY_GARBLED_ANSWER_RATE")?,
            },
            log_level,
            log_format,
        })
    }

    /// Port 0 on loopback, no faults: for tests.
    pub fn ephemeral() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            faults: Faults::default(),
            log_level: "info".into(),
            log_format: LogFormat::Json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn faults_come_from_the_environment_and_are_checked() {
        let config = Config::from_source(&Vars(&[
            ("GATEWAY_LATENCY", "25ms"),
            ("GATEWAY_ERROR_RATE", "0.1"),
            ("GATEWAY_LOST_ANSWER_RATE", "0.2"),
        ]))
        .unwrap();
        assert_eq!(
            config.faults,
            Faults { latency_ms: 25, error_rate: 0.1, lost_answer_rate: 0.2, ..Faults::default() }
        );
        for (name, value) in [
            ("GATEWAY_ERROR_RATE", "1.5"),
            ("GATEWAY_LOST_ANSWER_RATE", "-1"),
            ("GATEWAY_GARBLED_ANSWER_RATE", "2"),
            ("GATEWAY_LATENCY", "soon"),
            ("GATEWAY_HTTP_ADDR", "here"),
        ] {
            assert_eq!(Config::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }
}
