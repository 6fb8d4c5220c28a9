//! The saga participants' configuration: the events' stream, dead letters,
//! deliveries and concurrency, deadlines, the payment gateway; and the process's.

use std::net::SocketAddr;
use std::time::Duration;

use relay::RelayConfig;
use service_kit::config::{self, ConfigError, Environment, Source};
use service_kit::process::CommonConfig;

use crate::gateway::GatewayConfig;

/// How the consumers of the events (every participant, and the notifier)
/// take their messages: the stream, dead letters, redeliveries.
#[derive(Debug, Clone)]
pub struct Deliveries {
    /// The stream the relay publishes to, and its subject prefix.
    pub events: RelayConfig,
    /// `SAGA_DEAD_LETTER_STREAM`: where messages that cannot be handled go.
    pub dead_letter_stream: String,
    /// Subjects of dead letters: `<prefix>.<consumer>`.
    pub dead_letter_prefix: String,
    /// `SAGA_MAX_DELIVERIES`: deliveries of a failing message before it is dead-lettered.
    pub max_deliveries: i64,
    /// How long JetStream waits for an answer before delivering a message again.
    pub ack_wait: Duration,
    /// `SAGA_RETRY_DELAY`: pause before a failed or waiting message comes back (it grows).
    pub retry_delay: Duration,
    /// Chaos switch for tests: every message is handled, then delivered and handled once more.
    pub redeliver_once: bool,
}

impl Deliveries {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::new(RelayConfig::from_source(source)?);
        let dead_letter_stream: String =
            config::parsed(source, "SAGA_DEAD_LETTER_STREAM", defaults.dead_letter_stream.clone())?;
        if dead_letter_stream.is_empty()
            || !dead_letter_stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || dead_letter_stream == defaults.events.stream
        {
            return Err(ConfigError::new(
                "SAGA_DEAD_LETTER_STREAM",
                dead_letter_stream,
                "letters, digits, - and _ only, and not the events stream",
            ));
        }
        Ok(Self {
            dead_letter_stream,
            max_deliveries: config::ranged(source, "SAGA_MAX_DELIVERIES", defaults.max_deliveries, 1, 1000)?,
            retry_delay: config::nonzero_duration(source, "SAGA_RETRY_DELAY", defaults.retry_delay)?,
            ..defaults
        })
    }

    /// Defaults around the given event stream.
    pub fn new(events: RelayConfig) -> Self {
        let dead_letter_prefix = format!("{}_deadletter", events.subject_prefix.replace('.', "_"));
        Self {
            events,
            dead_letter_stream: "DEADLETTER".into(),
            dead_letter_prefix,
            max_deliveries: 5,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            redeliver_once: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SagaConfig {
    pub deliveries: Deliveries,
    /// `SAGA_CONCURRENCY`: messages each consumer handles at once. Commands
    /// on one stream take turns, and appends made at the same moment share a
    /// commit (group commit): more in flight means fewer commits per order.
    /// 4 held the saga benchmark to about 300 orders/s on two cores, 32 to
    /// about 400 (the same run).
    pub concurrency: usize,
    /// `SAGA_GATEWAY_CONCURRENCY`: the same for the consumers of the events
    /// the payment participant hears, whose messages mostly wait on the
    /// payment gateway (the lower of the two where others hear them too).
    pub gateway_concurrency: usize,
    /// How often a command is decided again after a concurrency conflict.
    pub command_max_attempts: u32,
    /// Aggregate states the participants keep between commands (see `cached`).
    pub state_cache: usize,
    /// `DEADLINE_POLL`: how often overdue orders are looked for.
    pub deadline_poll: Duration,
    pub gateway: GatewayConfig,
}

impl SagaConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::new(Deliveries::from_source(source)?, GatewayConfig::from_source(source)?);
        Ok(Self {
            concurrency: config::ranged(source, "SAGA_CONCURRENCY", defaults.concurrency, 1, 1024)?,
            gateway_concurrency: config::ranged(
                source,
                "SAGA_GATEWAY_CONCURRENCY",
                defaults.gateway_concurrency,
                1,
                4096,
            )?,
            deadline_poll: config::nonzero_duration(source, "DEADLINE_POLL", defaults.deadline_poll)?,
            ..defaults
        })
    }

    /// Defaults around the given deliveries and gateway.
    pub fn new(deliveries: Deliveries, gateway: GatewayConfig) -> Self {
        Self {
            deliveries,
            concurrency: 32,
            gateway_concurrency: 64,
            command_max_attempts: 20,
            state_cache: 10_000,
            deadline_poll: Duration::from_secs(1),
            gateway,
        }
    }
}

/// The saga process: the database, the event store and logging
/// (`CommonConfig`), `NATS_URL`, the participants' settings, `SAGA_OPS_ADDR`.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub nats_url: String,
    pub saga: SagaConfig,
    /// Health and metrics of the saga process.
    pub ops_addr: SocketAddr,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_source(source, 2, "info,sqlx=warn")?,
            nats_url: config::nats_url(source)?,
            saga: SagaConfig::from_source(source)?,
            ops_addr: config::parsed(source, "SAGA_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9102)))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn the_process_settings_are_checked_and_named() {
        for (name, value) in [("SAGA_OPS_ADDR", "nowhere"), ("NATS_URL", "http://x"), ("DATABASE_URL", "mysql://x")] {
            assert_eq!(Config::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }

    #[test]
    fn saga_settings_are_checked_and_named() {
        let config = SagaConfig::from_source(&Vars(&[])).unwrap().deliveries;
        assert_eq!(
            (config.dead_letter_stream.as_str(), config.dead_letter_prefix.as_str()),
            ("DEADLETTER", "events_deadletter")
        );
        for (name, value) in [
            ("SAGA_DEAD_LETTER_STREAM", "EVENTS"),
            ("SAGA_DEAD_LETTER_STREAM", "a.b"),
            ("SAGA_MAX_DELIVERIES", "0"),
            ("SAGA_CONCURRENCY", "lots"),
            ("SAGA_GATEWAY_CONCURRENCY", "0"),
            ("SAGA_RETRY_DELAY", "0s"),
            ("DEADLINE_POLL", "often"),
            ("PAYMENT_GATEWAY_URL", "ftp://x"),
        ] {
            assert_eq!(SagaConfig::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }
}
