//! The projections service: every projection, each supervised, and the
//! rebuilds asked for through the admin API.
//!
//! A projection interrupted by the database, or that lost its lock, starts
//! again after a pause (as a standby if another instance is live now). One
//! that failed on an event stays stopped, reported in
//! `projection_checkpoints`, until a rebuild replaces its tables (or the
//! service restarts).

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, SharedTail};
use read_models::{checkpoints, rebuilds};
use service_kit::{supervise, Shutdown};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::rebuild::{self, RebuildError, RebuildOptions};
use crate::{run, Projection, ProjectorConfig, RunError};

/// Pause before a supervised projection starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// Recent events kept in memory for the projections to share.
const SHARED_EVENTS: usize = 10_000;

/// How often a failed projection, and the rebuild requests, are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Runs every projection over `store`'s log into `pool`'s read models, and
/// the rebuilds requested, until `shutdown`.
pub async fn run_all(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    rebuild_options: RebuildOptions,
    shutdown: Shutdown,
) {
    // The projections read each new event of the log once, together.
    let store: Arc<dyn EventStore> = Arc::new(SharedTail::new(store, SHARED_EVENTS));
    let mut tasks: Vec<_> = read_models::all()
        .into_iter()
        .map(|projection| {
            let (store, pool, config, shutdown) = (store.clone(), pool.clone(), config.clone(), shutdown.clone());
            tokio::spawn(async move { keep_running(projection, store, pool, config, shutdown).await })
        })
        .collect();
    tasks.push(tokio::spawn(rebuild_on_request(store, pool, rebuild_options, shutdown)));
    for task in tasks {
        let _ = task.await;
    }
}

async fn keep_running(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    shutdown: Shutdown,
) {
    let name = projection.name();
    supervise(name, &shutdown, RESTART_PAUSE, || async {
        match run(projection.clone(), store.clone(), pool.clone(), config.clone(), &shutdown).await {
            Err(error @ RunError::Failed { .. }) => {
                tracing::error!(projection = name, %error, "projection stopped; rebuild it once the cause is fixed");
                tokio::select! {
                    () = shutdown.requested() => {}
                    () = until_not_failed(&pool, name) => {
                        tracing::info!(projection = name, "the projection was rebuilt; starting it again");
                    }
                }
                Ok(())
            }
            outcome => outcome,
        }
    })
    .await;
}

/// Returns once the projection's checkpoint is no longer `failed`.
async fn until_not_failed(pool: &PgPool, name: &str) {
    loop {
        tokio::time::sleep(POLL).await;
        match checkpoints::state(pool, name).await {
            Ok(Some(state)) if state == "failed" => {}
            Ok(_) => return,
            Err(error) => tracing::warn!(projection = name, %error, "cannot read the projection's state"),
        }
    }
}

/// Runs the rebuilds requested (`state = 'requested'`), and resumes those
/// that were interrupted (`running`, with no process holding their lock).
async fn rebuild_on_request(store: Arc<dyn EventStore>, pool: PgPool, options: RebuildOptions, shutdown: Shutdown) {
    while !shutdown.is_requested() {
        let pending = rebuilds::pending(&pool).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the rebuild requests");
            Vec::new()
        });
        for name in pending {
            let Some(projection) = read_models::by_name(&name) else {
                tracing::warn!(projection = name, "a rebuild was requested for an unknown projection");
                continue;
            };
            let (progress, _) = watch::channel(rebuild::Progress::default());
            let rebuild = rebuild::rebuild(projection, store.clone(), pool.clone(), options.clone(), &progress);
            tokio::select! {
                () = shutdown.requested() => return, // resumed at the next start
                outcome = rebuild => match outcome {
                    Ok(_) | Err(RebuildError::AlreadyRunning(_)) => {}
                    Err(error) => tracing::error!(projection = name, %error, "rebuild failed"),
                },
            }
        }
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
