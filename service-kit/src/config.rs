//! Reading configuration from environment variables. Every value is checked
//! at start-up; a bad one stops the process with a message naming it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: value.into(), reason: reason.into() }
    }
}

/// Where configuration comes from: the process environment, or (in tests) a list.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct Environment;

impl Source for Environment {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Fixed variables, for tests: `Vars(&[("PORT", "8080")])`.
pub struct Vars<'a>(pub &'a [(&'a str, &'a str)]);

impl Source for Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }
}

/// A value parsed with `FromStr`, or the default when the variable is unset or empty.
pub fn parsed<T>(source: &dyn Source, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match source.get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|e: T::Err| ConfigError::new(name, value, e.to_string())),
    }
}

/// A duration such as `500ms`, `10s` or `15m`.
pub fn duration(source: &dyn Source, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match source.get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(value) => humantime::parse_duration(value.trim())
            .map_err(|e| ConfigError::new(name, value, format!("{e} (write e.g. 500ms, 10s, 15m)"))),
    }
}

/// A number within an inclusive range.
pub fn ranged<T>(source: &dyn Source, name: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
    T::Err: fmt::Display,
{
    let value = parsed(source, name, default)?;
    if value < min || value > max {
        return Err(ConfigError::new(name, value.to_string(), format!("must be between {min} and {max}")));
    }
    Ok(value)
}

/// `DATABASE_URL` when unset: a local server's `orders` database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";

/// `NATS_URL` when unset: a local server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// `DATABASE_URL`: a postgres:// URL. The value is never echoed (it may hold a password).
pub fn database_url(source: &dyn Source) -> Result<Secret, ConfigError> {
    let url =
        source.get("DATABASE_URL").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new("DATABASE_URL", "***", "must be a postgres:// URL"));
    }
    Ok(Secret::new(url))
}

/// `NATS_URL`: a nats:// URL of the NATS server (with JetStream).
pub fn nats_url(source: &dyn Source) -> Result<String, ConfigError> {
    let url: String = parsed(source, "NATS_URL", DEFAULT_NATS_URL.to_owned())?;
    if !(url.starts_with("nats://") || url.starts_with("tls://") || url.starts_with("ws://")) {
        return Err(ConfigError::new("NATS_URL", url, "must be a nats:// URL"));
    }
    Ok(url)
}

/// `EVENT_STORE_URL`: which event store holds the events (see
/// [`event_store::Backend`]). The value is never echoed (it may hold a password).
#[cfg(feature = "event-store")]
pub fn event_store(source: &dyn Source) -> Result<event_store::Backend, ConfigError> {
    let value = source.get(event_store::EVENT_STORE_URL);
    event_store::Backend::from_setting(value.as_deref())
        .map_err(|reason| ConfigError::new(event_store::EVENT_STORE_URL, "***", reason))
}

/// `LOG_LEVEL` (a tracing filter directive) and `LOG_FORMAT` (`json` or `pretty`).
pub fn logging(source: &dyn Source, default_level: &str) -> Result<(String, crate::telemetry::LogFormat), ConfigError> {
    let level = source.get("LOG_LEVEL").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default_level.to_owned());
    crate::telemetry::parse_level(&level).map_err(|e| ConfigError::new("LOG_LEVEL", &level, e))?;
    let format = parsed(source, "LOG_FORMAT", crate::telemetry::LogFormat::Json)?;
    Ok((level, format))
}

/// A duration longer than zero.
pub fn nonzero_duration(source: &dyn Source, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = duration(source, name, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(name, "0", "must be longer than zero"));
    }
    Ok(value)
}

/// A secret (a URL with a password, a key): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_and_empty_values_take_the_default() {
        let env = &Vars(&[("EMPTY", " ")]);
        assert_eq!(parsed(env, "MISSING", 7u32).unwrap(), 7);
        assert_eq!(parsed(env, "EMPTY", 7u32).unwrap(), 7);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let env = &Vars(&[("PORT", "eighty"), ("WAIT", "soon"), ("POOL", "0")]);
        let err = parsed(env, "PORT", 80u16).unwrap_err();
        assert_eq!(err.name, "PORT");
        assert!(err.to_string().contains("PORT=\"eighty\""), "{err}");
        assert_eq!(duration(env, "WAIT", Duration::ZERO).unwrap_err().name, "WAIT");
        assert!(ranged(env, "POOL", 5u32, 1, 100).unwrap_err().to_string().contains("between 1 and 100"));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        let env = &Vars(&[("A", "500ms"), ("B", "15m")]);
        assert_eq!(duration(env, "A", Duration::ZERO).unwrap(), Duration::from_millis(500));
        assert_eq!(duration(env, "B", Duration::ZERO).unwrap(), Duration::from_secs(900));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("postgres://u:pw@h/db")), "Secret(***)");
    }
}
