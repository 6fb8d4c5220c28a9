//! The projections service: every projection, each supervised, and the
//! rebuilds asked for through the admin API.
//!
//! A projection interrupted by the database, or that lost its lock, starts
//! again after a pause (as a standby if another instance is live now). One
//! that failed on an event stays stopped, reported in
//! `projection_checkpoints`, until a rebuild replaces its tables (or the
//! service restarts).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, SharedTail};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::rebuild::{self, RebuildError, RebuildOptions};
use crate::{checkpoint, run, Projection, ProjectorConfig, RunError};

/// Pause before a supervised projection starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// Recent events kept in memory for the projections to share.
const SHARED_EVENTS: usize = 10_000;

/// How often a failed projection, and the rebuild requests, are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Runs every projection over `store`'s log into `pool`'s read models, and
/// the rebuilds requested, until `shutdown` completes.
pub async fn run_all(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    rebuild_options: RebuildOptions,
    shutdown: impl Future<Output = ()>,
) {
    // The projections read each new event of the log once, together.
    let store: Arc<dyn EventStore> = Arc::new(SharedTail::new(store, SHARED_EVENTS));
    let (stop, stopping) = watch::channel(false);
    let mut tasks: Vec<_> = crate::all()
        .into_iter()
        .map(|projection| {
            tokio::spawn(supervise(projection, store.clone(), pool.clone(), config.clone(), stopping.clone()))
        })
        .collect();
    tasks.push(tokio::spawn(rebuild_on_request(store, pool, rebuild_options, stopping)));
    shutdown.await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
}

async fn supervise(
    projection: Arc<dyn Projection>,
    store: Arc<dyn EventStore>,
    pool: PgPool,
    config: ProjectorConfig,
    mut stopping: watch::Receiver<bool>,
) {
    let name = projection.name();
    loop {
        let mut stop = stopping.clone();
        let outcome = run(projection.clone(), store.clone(), pool.clone(), config.clone(), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
        match outcome {
            Ok(()) => return,
            Err(error @ RunError::Failed { .. }) => {
                tracing::error!(projection = name, %error, "projection stopped; rebuild it once the cause is fixed");
                let mut stop = stopping.clone();
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => return,
                    () = until_not_failed(&pool, name) => {}
                }
                tracing::info!(projection = name, "the projection was rebuilt; starting it again");
                continue;
            }
            Err(error) => tracing::warn!(projection = name, %error, "projection interrupted; starting again"),
        }
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
    }
}

/// Returns once the projection's checkpoint is no longer `failed`.
async fn until_not_failed(pool: &PgPool, name: &str) {
    loop {
        tokio::time::sleep(POLL).await;
        match checkpoint::state(pool, name).await {
            Ok(Some(state)) if state == "failed" => {}
            Ok(_) => return,
            Err(error) => tracing::warn!(projection = name, %error, "cannot read the projection's state"),
        }
    }
}

/// Runs the rebuilds requested (`state = 'requested'`), and resumes those
/// that were interrupted (`running`, with no process holding their lock).
async fn rebuild_on_request(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    options: RebuildOptions,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let pending: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT name FROM projection_rebuilds WHERE state IN ('requested', 'running') ORDER BY requested_at",
        )
        .fetch_all(&pool)
        .await;
        for name in pending.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the rebuild requests");
            Vec::new()
        }) {
            let Some(projection) = crate::by_name(&name) else {
                tracing::warn!(projection = name, "a rebuild was requested for an unknown projection");
                continue;
            };
            let (progress, _) = watch::channel(rebuild::Progress::default());
            let rebuild = rebuild::rebuild(projection, store.clone(), pool.clone(), options.clone(), &progress);
            let mut stop = stopping.clone();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return, // resumed at the next start
                outcome = rebuild => match outcome {
                    Ok(_) | Err(RebuildError::AlreadyRunning(_)) => {}
                    Err(error) => tracing::error!(projection = name, %error, "rebuild failed"),
                },
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
