//! The notifier's configuration: what every worker has (database, event
//! store, logging, NATS), how its consumers take messages, SMTP, and how
//! deliveries are sent and retried. Every value is checked at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use application::webhooks::UrlPolicy;
use async_nats::jetstream::consumer::DeliverPolicy;
use lettre::message::Mailbox;
use saga::Deliveries;
use service_kit::config::{self, ConfigError, Environment, Secret, Source};
use service_kit::personal_data::MasterKeys;
use service_kit::process::CommonConfig;

use crate::dispatch::DispatchConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub nats_url: String,
    /// The events' stream, dead letters and redeliveries, as the saga participants have them (`SAGA_*`).
    pub deliveries: Deliveries,
    /// `NOTIFIER_OPS_ADDR`: health and metrics.
    pub ops_addr: SocketAddr,
    /// `NOTIFY_START`: where a notifier's consumers start the first time:
    /// `new` (default: only what happens from now on; a new notifier does
    /// not tell a year of customers about old orders) or `all` (the stream's start).
    pub start: DeliverPolicy,
    /// `NOTIFY_CONSUMER_CONCURRENCY`: messages each consumer records at once.
    pub consumer_concurrency: usize,
    /// `SMTP_URL` (e.g. `smtps://user:password@mail.example:465`,
    /// `smtp://mail.example:587?tls=required`, `smtp://localhost:2525`):
    /// unset, no e-mail is sent. `EMAIL_FROM`: the sender.
    pub smtp: Option<SmtpConfig>,
    pub dispatch: DispatchConfig,
    /// `WEBHOOK_ALLOWED_HOSTS`, `WEBHOOK_ALLOW_PRIVATE`.
    pub url_policy: UrlPolicy,
    /// `PERSONAL_DATA_KEY` (or `_FILE`), `PERSONAL_DATA_PREVIOUS_KEYS`: open the customers' addresses.
    pub master_keys: MasterKeys,
    /// `NOTIFY_KEEP`: how long finished deliveries stay listed.
    pub keep: Duration,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub url: Secret,
    pub from: Mailbox,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = DispatchConfig::default();
        let start = match source.get("NOTIFY_START").unwrap_or_default().trim() {
            "" | "new" => DeliverPolicy::New,
            "all" => DeliverPolicy::All,
            other => return Err(ConfigError::new("NOTIFY_START", other, "new or all")),
        };
        let from: Mailbox =
            config::parsed(source, "EMAIL_FROM", "Order system <orders@localhost>".parse().expect("a mailbox"))?;
        let smtp = match source.get("SMTP_URL").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(url) => {
                lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url.trim())
                    .map_err(|e| ConfigError::new("SMTP_URL", "***", format!("not an SMTP URL: {e}")))?;
                Some(SmtpConfig { url: Secret::new(url.trim()), from })
            }
        };
        let retry_min = config::nonzero_duration(source, "NOTIFY_RETRY_MIN", defaults.retry_min)?;
        let retry_max = config::nonzero_duration(source, "NOTIFY_RETRY_MAX", defaults.retry_max)?;
        if retry_max < retry_min {
            return Err(ConfigError::new(
                "NOTIFY_RETRY_MAX",
                humantime::format_duration(retry_max).to_string(),
                "must not be shorter than NOTIFY_RETRY_MIN",
            ));
        }
        let dispatch = DispatchConfig {
            concurrency: config::ranged(source, "NOTIFY_CONCURRENCY", defaults.concurrency, 1, 1024)?,
            per_recipient: config::ranged(source, "NOTIFY_PER_RECIPIENT", defaults.per_recipient, 1, 256)?,
            retry_for: config::nonzero_duration(source, "NOTIFY_RETRY_FOR", defaults.retry_for)?,
            retry_min,
            retry_max,
            breaker_failures: config::ranged(source, "NOTIFY_BREAKER_FAILURES", defaults.breaker_failures, 1, 1000)?,
            breaker_open: config::nonzero_duration(source, "NOTIFY_BREAKER_OPEN", defaults.breaker_open)?,
            timeout: config::nonzero_duration(source, "WEBHOOK_TIMEOUT", defaults.timeout)?,
            poll: config::nonzero_duration(source, "NOTIFY_POLL", defaults.poll)?,
        };
        Ok(Self {
            common: CommonConfig::from_source(source, 2, "info,sqlx=warn")?,
            nats_url: config::nats_url(source)?,
            deliveries: Deliveries::from_source(source)?,
            ops_addr: config::parsed(source, "NOTIFIER_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9106)))?,
            start,
            consumer_concurrency: config::ranged(source, "NOTIFY_CONSUMER_CONCURRENCY", 16, 1, 1024)?,
            smtp,
            dispatch,
            url_policy: UrlPolicy::from_source(source)?,
            master_keys: MasterKeys::from_source(source)?,
            keep: config::nonzero_duration(source, "NOTIFY_KEEP", Duration::from_secs(30 * 24 * 3600))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn defaults_send_webhooks_and_no_email() {
        let config = Config::from_source(&Vars(&[])).unwrap();
        assert!(config.smtp.is_none());
        assert_eq!(config.start, DeliverPolicy::New);
        assert_eq!(config.dispatch.retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(config.ops_addr.port(), 9106);
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [
            ("NOTIFIER_OPS_ADDR", "here"),
            ("NOTIFY_START", "yesterday"),
            ("SMTP_URL", "http://mail.example"),
            ("EMAIL_FROM", "not an address"),
            ("NOTIFY_CONCURRENCY", "0"),
            ("NOTIFY_PER_RECIPIENT", "many"),
            ("NOTIFY_RETRY_FOR", "0s"),
            ("NOTIFY_RETRY_MAX", "1ms"),
            ("NOTIFY_BREAKER_FAILURES", "0"),
            ("WEBHOOK_TIMEOUT", "soon"),
            ("WEBHOOK_ALLOWED_HOSTS", "http://x"),
            ("SAGA_DEAD_LETTER_STREAM", "a.b"),
            ("NATS_URL", "http://x"),
        ] {
            let error = Config::from_source(&Vars(&[(name, value)])).unwrap_err();
            assert_eq!(error.name, name, "{error}");
        }
    }

    #[test]
    fn the_smtp_password_is_not_echoed() {
        let config = Config::from_source(&Vars(&[("SMTP_URL", "smtps://u:hunter2@mail.example:465")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
