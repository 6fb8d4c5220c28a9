//! The projections process: its configuration, `build`, and its two ways of
//! running: `run_until(shutdown)` (every projection and the rebuilds asked
//! for, with health and metrics on `PROJECTIONS_OPS_ADDR`), and
//! `rebuild_with_progress_bar` (`projections rebuild <name>`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, StoreError};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use service_kit::config::{self, ConfigError, Environment, Source};
use service_kit::ops::OpsServer;
use service_kit::process::CommonConfig;
use service_kit::Shutdown;
use sqlx::PgPool;

/// How often the log's horizon is reported (`event_store::watch`).
const HORIZON_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
use tokio::sync::watch;

use crate::rebuild::{self, Progress, RebuildError, RebuildOptions};
use crate::ProjectorConfig;

/// What the process was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `projections [serve]`
    Serve,
    /// `projections rebuild <name>`
    Rebuild(String),
}

impl Command {
    /// From the command line (program name excluded).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] | ["serve"] => Ok(Self::Serve),
            ["rebuild", name] if read_models::by_name(name).is_some() => Ok(Self::Rebuild((*name).to_owned())),
            ["rebuild", name] => {
                Err(format!("no projection is called {name:?}; the projections are {}", read_models::NAMES.join(", ")))
            }
            _ => Err("usage: projections [serve] | projections rebuild <name>".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    /// The database (at least 4 connections), the event store, logging.
    pub common: CommonConfig,
    /// `PROJECTION_BATCH_SIZE`
    pub projector: ProjectorConfig,
    /// `REBUILD_PAGE_SIZE`
    pub rebuild: RebuildOptions,
    /// `PROJECTIONS_OPS_ADDR`
    pub ops_addr: SocketAddr,
    /// `PROJECTION_GATHER`: how long the projections let commits gather
    /// after a wake-up before they read the log (see `SubscriptionConfig::gather`).
    pub gather: Duration,
}

impl Config {
    pub fn from_env(command: Command) -> Result<Self, ConfigError> {
        Self::from_source(&Environment, command)
    }

    pub fn from_source(source: &dyn Source, command: Command) -> Result<Self, ConfigError> {
        // A rebuild on the command line draws a progress bar: only warnings are logged beside it.
        let default_level = if command == Command::Serve { "info,sqlx=warn" } else { "warn" };
        let batch_size = config::ranged(source, "PROJECTION_BATCH_SIZE", 500usize, 1, 10_000)?;
        let page_size = config::ranged(source, "REBUILD_PAGE_SIZE", 1_000usize, 100, 100_000)?;
        Ok(Self {
            command,
            common: CommonConfig::from_source(source, 4, default_level)?,
            projector: ProjectorConfig { batch_size, ..ProjectorConfig::default() },
            rebuild: RebuildOptions { page_size, ..RebuildOptions::default() },
            ops_addr: config::parsed(source, "PROJECTIONS_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9103)))?,
            gather: gather(source)?,
        })
    }
}

/// `PROJECTION_GATHER` when unset.
pub const DEFAULT_GATHER: Duration = Duration::from_millis(5);

/// `PROJECTION_GATHER`: 0 to 1 s, default [`DEFAULT_GATHER`].
fn gather(source: &dyn Source) -> Result<Duration, ConfigError> {
    let gather = config::duration(source, "PROJECTION_GATHER", DEFAULT_GATHER)?;
    if gather > Duration::from_secs(1) {
        return Err(ConfigError::new("PROJECTION_GATHER", format!("{gather:?}"), "at most 1s"));
    }
    Ok(gather)
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Database(#[from] migrations::MigrateError),
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] StoreError),
    #[error("cannot listen on {addr} (PROJECTIONS_OPS_ADDR): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the ops endpoints failed: {0}")]
    Ops(std::io::Error),
    #[error("rebuilding {name}: {source}")]
    Rebuild { name: String, source: RebuildError },
}

pub struct App {
    config: Config,
    pool: PgPool,
    store: Arc<dyn EventStore>,
}

impl App {
    /// Connects, migrates, opens the event store.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let pool = migrations::connect_and_migrate(&config.common.database).await?;
        let subscription = event_store::SubscriptionConfig { gather: config.gather, ..Default::default() };
        let store = config.common.open_store_with(&pool, &domain::CATEGORIES, subscription).await?;
        Ok(Self { config, pool, store })
    }

    /// What the command line asked: serve until `shutdown`, or rebuild one read model.
    pub async fn run_until(self, shutdown: Shutdown) -> Result<(), AppError> {
        match self.config.command.clone() {
            Command::Serve => self.serve(shutdown).await,
            Command::Rebuild(name) => self.rebuild_with_progress_bar(&name).await,
        }
    }

    /// Every projection, and the rebuilds asked for, until `shutdown`.
    async fn serve(self, shutdown: Shutdown) -> Result<(), AppError> {
        let addr = self.config.ops_addr;
        let ops = OpsServer::bind(addr).await.map_err(|source| AppError::Bind { addr, source })?;
        let mut checks = self.config.common.checks(&self.pool, &self.store, migrations::expected());
        checks.push(service_kit::ops::Check::log_horizon(self.store.clone()));
        let ops = tokio::spawn(ops.run(checks, shutdown.clone()));
        let horizon = tokio::spawn(event_store::watch::watch_log(self.store.clone(), HORIZON_EVERY));
        tracing::info!("projections running");
        let Config { projector, rebuild, .. } = self.config;
        crate::service::run_all(self.store, self.pool, projector, rebuild, shutdown).await;
        horizon.abort();
        ops.await.ok().transpose().map_err(AppError::Ops)?;
        Ok(())
    }

    /// Rebuilds `name` now, drawing a progress bar (events done of total, rate, time left).
    async fn rebuild_with_progress_bar(self, name: &str) -> Result<(), AppError> {
        let projection = read_models::by_name(name).expect("checked by Command::parse");
        let (progress, mut updates) = watch::channel(Progress::default());
        let bar = ProgressBar::new(0).with_prefix(name.to_owned()).with_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events, {rate} events/s, ETA {eta}",
            )
            .expect("a valid template")
            .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}", state.per_sec());
            }),
        );
        let started = Instant::now();
        let rebuild = rebuild::rebuild(projection, self.store, self.pool, self.config.rebuild, &progress);
        tokio::pin!(rebuild);
        let mut resumed_at = None;
        let outcome = loop {
            tokio::select! {
                outcome = &mut rebuild => break outcome,
                _ = updates.changed() => {
                    let Progress { events_done, events_total, .. } = *updates.borrow_and_update();
                    bar.set_length(events_total);
                    bar.set_position(events_done);
                    if resumed_at.is_none() {
                        // A resumed rebuild starts part way: its rate counts from here.
                        resumed_at = Some(events_done);
                        bar.reset_eta();
                    }
                }
            }
        };
        let done = outcome.map_err(|source| {
            bar.abandon();
            AppError::Rebuild { name: name.to_owned(), source }
        })?;
        bar.set_length(done.events_total);
        bar.finish_with_message("done");
        let seconds = started.elapsed().as_secs_f64();
        let replayed = done.events_done - resumed_at.unwrap_or(0);
        let rate = replayed as f64 / seconds.max(f64::EPSILON);
        // The command's own output, under its progress bar (stderr, as the bar).
        eprintln!("{name}: rebuilt and swapped in, {} events in {seconds:.1} s ({rate:.0} events/s)", done.events_done);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn the_command_line_names_a_known_projection() {
        let parse = |args: &[&str]| Command::parse(args.iter().map(|a| (*a).to_owned()));
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["serve"]), Ok(Command::Serve));
        assert_eq!(parse(&["rebuild", "orders"]), Ok(Command::Rebuild("orders".into())));
        assert!(parse(&["rebuild", "carts"]).unwrap_err().contains("orders, inventory, payments"));
        assert!(parse(&["frobnicate"]).unwrap_err().starts_with("usage"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [
            ("PROJECTION_BATCH_SIZE", "0"),
            ("REBUILD_PAGE_SIZE", "10"),
            ("DATABASE_MAX_CONNECTIONS", "3"),
            ("PROJECTIONS_OPS_ADDR", "here"),
            ("EVENT_STORE_URL", "mysql://x"),
            ("PROJECTION_GATHER", "2s"),
            ("PROJECTION_GATHER", "soon"),
        ] {
            let error = Config::from_source(&Vars(&[(name, value)]), Command::Serve).unwrap_err();
            assert_eq!(error.name, name, "{error}");
        }
        let gather = |vars: &[(&str, &str)]| Config::from_source(&Vars(vars), Command::Serve).unwrap().gather;
        assert_eq!(gather(&[]), DEFAULT_GATHER);
        assert_eq!(gather(&[("PROJECTION_GATHER", "0s")]), Duration::ZERO);
    }
}
