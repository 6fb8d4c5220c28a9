//! What the projections' tests share: running a projector, waiting for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, PgEventStore};
use projections::{run, status, Projection, ProjectorConfig, RunError};
use service_kit::{Shutdown, Trigger};
use sqlx::PgPool;
use tokio::task::JoinHandle;

pub fn by_name(name: &str) -> Arc<dyn Projection> {
    projections::by_name(name).expect("a projection of that name")
}

pub fn config() -> ProjectorConfig {
    ProjectorConfig { batch_size: 50, standby_poll: Duration::from_millis(100) }
}

/// A running projector and the means to stop it.
pub struct Running {
    stop: Trigger,
    pub task: JoinHandle<Result<(), RunError>>,
}

pub fn start(projection: Arc<dyn Projection>, store: &PgEventStore, pool: &PgPool) -> Running {
    let (stop, shutdown) = Shutdown::new();
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let pool = pool.clone();
    let task = tokio::spawn(async move { run(projection, store, pool, config(), &shutdown).await });
    Running { stop, task }
}

impl Running {
    pub async fn stop(self) -> Result<(), RunError> {
        self.stop.fire();
        self.task.await.unwrap()
    }
}

/// Waits until `check` holds, for at most `seconds`.
pub async fn eventually_within<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let within = Duration::from_secs(seconds);
    event_store::testing::eventually(within, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}

/// Waits until `check` holds, for at most 20 seconds.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(20, what, check).await;
}

/// Events of the log the projection has processed (applied or ignored).
pub async fn processed(pool: &PgPool, name: &str) -> u64 {
    status(pool, name).await.unwrap().map_or(0, |s| s.events_processed)
}

/// The test database's URL, for a child process.
pub fn database_url(pool: &PgPool) -> String {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let base = std::env::var("DATABASE_URL").unwrap();
    format!("{}/{database}", base.rsplit_once('/').unwrap().0)
}
