//! The projections service: every projection, each supervised. A projection
//! interrupted by the database, or that lost its lock, starts again after a
//! pause (as a standby if another instance is live now); one that failed on
//! an event stays stopped, reported in `projection_checkpoints`, until the
//! service restarts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, PgEventStore};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{run, Projection, ProjectorConfig, RunError};

/// Pause before a supervised projection starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// Runs every projection until `shutdown` completes.
pub async fn run_all(pool: PgPool, config: ProjectorConfig, shutdown: impl Future<Output = ()>) {
    let store: Arc<dyn EventStore> = Arc::new(PgEventStore::new(pool.clone()));
    let (stop, stopping) = watch::channel(false);
    let supervisors: Vec<_> = crate::all()
        .into_iter()
        .map(|projection| {
            tokio::spawn(supervise(projection, store.clone(), pool.clone(), config.clone(), stopping.clone()))
        })
        .collect();
    shutdown.await;
    let _ = stop.send(true);
    for supervisor in supervisors {
        let _ = supervisor.await;
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
                tracing::error!(projection = name, %error, "projection stopped; fix the cause and restart the service");
                return;
            }
            Err(error) => tracing::warn!(projection = name, %error, "projection interrupted; starting again"),
        }
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(RESTART_PAUSE) => {}
        }
    }
}
