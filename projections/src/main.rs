//! `projections [serve]`: runs every projection, and the rebuilds requested
//! through the admin API, until SIGTERM; health and metrics on `PROJECTIONS_OPS_ADDR`.
//! `projections rebuild <name>`: rebuilds one read model now, with a progress bar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use event_store::EventStore;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use projections::rebuild::{self, Progress, RebuildOptions};
use projections::ProjectorConfig;
use service_kit::config::{self, Environment};
use service_kit::ops::{Check, OpsServer};
use service_kit::telemetry;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;

const USAGE: &str = "usage: projections [serve] | projections rebuild <name>";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rebuild_name = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["serve"] => None,
        ["rebuild", name] => Some(name.to_string()),
        _ => anyhow::bail!("{USAGE}"),
    };
    if let Some(name) = &rebuild_name {
        if projections::by_name(name).is_none() {
            let known: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
            anyhow::bail!("no projection is called {name:?}; the projections are {}", known.join(", "));
        }
    }
    let env = &Environment;
    let database_url = config::database_url(env)?;
    let backend = config::event_store(env)?;
    // A rebuild on the command line draws a progress bar: only warnings are logged beside it.
    let default_level = if rebuild_name.is_some() { "warn" } else { "info,sqlx=warn" };
    let (log_level, log_format) = config::logging(env, default_level)?;
    let batch_size = config::ranged(env, "PROJECTION_BATCH_SIZE", 500usize, 1, 10_000)?;
    let page_size = config::ranged(env, "REBUILD_PAGE_SIZE", 5_000usize, 100, 100_000)?;
    let max_connections = config::ranged(env, "DATABASE_MAX_CONNECTIONS", 10u32, 4, 1000)?;
    let ops_addr = config::parsed(env, "PROJECTIONS_OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9103)))?;
    let _telemetry = telemetry::init("projections", &log_level, log_format);

    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url.expose())
        .await
        .context("cannot reach the database (DATABASE_URL)")?;
    migrations::MIGRATOR.run(&pool).await.context("cannot apply the migrations")?;
    let store = backend
        .open(pool.clone(), &domain::CATEGORIES)
        .await
        .context("cannot open the event store (EVENT_STORE_URL)")?;
    let rebuild_options = RebuildOptions { page_size, ..RebuildOptions::default() };
    match rebuild_name {
        Some(name) => rebuild_with_progress_bar(store, pool, &name, rebuild_options).await,
        None => {
            let ops = OpsServer::bind(ops_addr)
                .await
                .with_context(|| format!("cannot listen on {ops_addr} (PROJECTIONS_OPS_ADDR)"))?;
            let mut checks = vec![Check::database(pool.clone(), migrations::expected())];
            checks.extend(Check::event_store_if_separate(&backend, &store));
            let ops = tokio::spawn(ops.run(checks, service_kit::shutdown::signal()));
            let config = ProjectorConfig { batch_size, ..ProjectorConfig::default() };
            tracing::info!("projections running");
            projections::service::run_all(store, pool, config, rebuild_options, service_kit::shutdown::signal()).await;
            ops.await??;
            Ok(())
        }
    }
}

async fn rebuild_with_progress_bar(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    name: &str,
    options: RebuildOptions,
) -> anyhow::Result<()> {
    let projection = projections::by_name(name).context("checked in main")?;
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
    let rebuild = rebuild::rebuild(projection, store, pool, options, &progress);
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
    match outcome {
        Ok(done) => {
            bar.set_length(done.events_total);
            bar.finish_with_message("done");
            let seconds = started.elapsed().as_secs_f64();
            let replayed = done.events_done - resumed_at.unwrap_or(0);
            eprintln!(
                "{name}: rebuilt and swapped in, {} events in {seconds:.1} s ({:.0} events/s)",
                done.events_done,
                replayed as f64 / seconds.max(f64::EPSILON)
            );
            Ok(())
        }
        Err(error) => {
            bar.abandon();
            Err(error).with_context(|| format!("rebuilding {name}"))
        }
    }
}
