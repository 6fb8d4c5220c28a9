//! The one place that sets up logging: structured JSON lines (or readable
//! text for local work), filtered by a level directive such as `info` or
//! `info,command_side=debug`.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!("unknown log format {other:?}: use json or pretty")),
        }
    }
}

/// Checks a level directive without installing anything.
pub fn parse_level(directive: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(directive).map_err(|e| e.to_string())
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(level: &str, format: LogFormat) {
    let filter = parse_level(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Logs for tests: silent unless `TEST_LOG` is set (to a level directive, or anything for `debug`).
pub fn init_for_tests() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let level = if parse_level(&level).is_ok() { level } else { "debug".to_owned() };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(parse_level(&level).unwrap_or_else(|_| EnvFilter::new("debug")))
            .with_test_writer()
            .try_init();
    }
}
