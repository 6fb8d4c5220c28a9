//! The relay's configuration: the JetStream stream it publishes to (which
//! the saga participants consume), and the process's settings.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::config::{self, ConfigError, Environment, Source};
use service_kit::process::CommonConfig;

/// The events' stream: `RELAY_STREAM`, `RELAY_SUBJECT_PREFIX`.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The JetStream stream (created if missing, file storage).
    pub stream: String,
    /// Subjects are `<prefix>.<category>.<EventType>`.
    pub subject_prefix: String,
    /// Most events published before their acknowledgements are awaited.
    pub batch_size: usize,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How often a standby instance tries to become the live one.
    pub standby_poll: Duration,
    /// How long the stream keeps an event, and how many bytes it keeps at
    /// most (the oldest go first). The event store is the source of truth:
    /// the stream only carries events to the participants, which keep up
    /// within seconds.
    pub max_age: Duration,
    pub max_bytes: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stream: "EVENTS".into(),
            subject_prefix: "events".into(),
            batch_size: 256,
            duplicate_window: Duration::from_secs(120),
            standby_poll: Duration::from_secs(1),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

impl RelayConfig {
    /// `RELAY_STREAM`, `RELAY_SUBJECT_PREFIX`, `RELAY_STREAM_MAX_AGE` and `RELAY_STREAM_MAX_BYTES`, checked.
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let stream: String = config::parsed(source, "RELAY_STREAM", defaults.stream.clone())?;
        let subject_prefix: String = config::parsed(source, "RELAY_SUBJECT_PREFIX", defaults.subject_prefix.clone())?;
        let token =
            |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !token(&stream) {
            return Err(ConfigError::new("RELAY_STREAM", stream, "letters, digits, - and _ only"));
        }
        if !subject_prefix.split('.').all(token) {
            return Err(ConfigError::new(
                "RELAY_SUBJECT_PREFIX",
                subject_prefix,
                "dot-separated tokens of letters, digits, - and _",
            ));
        }
        let max_age = config::nonzero_duration(source, "RELAY_STREAM_MAX_AGE", defaults.max_age)?;
        let max_bytes = config::ranged(source, "RELAY_STREAM_MAX_BYTES", defaults.max_bytes, 1 << 20, i64::MAX)?;
        Ok(Self { stream, subject_prefix, max_age, max_bytes, ..defaults })
    }
}

/// The relay process: the database, the event store and logging
/// (`CommonConfig`), `NATS_URL`, the stream, `RELAY_OPS_ADDR`.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub nats_url: String,
    pub relay: RelayConfig,
    /// Health and metrics of the relay process.
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
            relay: RelayConfig::from_source(source)?,
            ops_addr: config::parsed(source, "RELAY_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9101)))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn the_stream_and_prefix_settings_are_checked() {
        let config = RelayConfig::from_source(&Vars(&[])).unwrap();
        assert_eq!((config.stream.as_str(), config.subject_prefix.as_str()), ("EVENTS", "events"));
        let custom = RelayConfig::from_source(&Vars(&[("RELAY_SUBJECT_PREFIX", "shop.events")])).unwrap();
        assert_eq!(custom.subject_prefix, "shop.events");
        let bounded =
            RelayConfig::from_source(&Vars(&[("RELAY_STREAM_MAX_AGE", "2d"), ("RELAY_STREAM_MAX_BYTES", "2097152")]));
        let bounded = bounded.unwrap();
        assert_eq!((bounded.max_age, bounded.max_bytes), (Duration::from_secs(2 * 86400), 2 << 20));
        for (name, value) in
            [("RELAY_STREAM_MAX_AGE", "0s"), ("RELAY_STREAM_MAX_BYTES", "1000"), ("RELAY_STREAM_MAX_BYTES", "lots")]
        {
            let bad = RelayConfig::from_source(&Vars(&[(name, value)])).unwrap_err();
            assert!(bad.to_string().contains(name), "{bad}");
        }
        let bad = RelayConfig::from_source(&Vars(&[("RELAY_STREAM", "a.b")])).unwrap_err();
        assert!(bad.to_string().contains("RELAY_STREAM"), "{bad}");
        let bad = RelayConfig::from_source(&Vars(&[("RELAY_SUBJECT_PREFIX", "events.>")])).unwrap_err();
        assert!(bad.to_string().contains("RELAY_SUBJECT_PREFIX"), "{bad}");
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [("NATS_URL", "http://x"), ("RELAY_OPS_ADDR", "here"), ("DATABASE_URL", "mysql://x")] {
            assert_eq!(Config::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }
}
