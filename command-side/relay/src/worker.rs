//! What the processes that follow the log over NATS share (the relay, and
//! the saga participants, which use it from here): connected to the
//! database (migrated), the event store and NATS (waiting for it if it is
//! not up yet), their ops address bound, and ready when all of them answer.

use std::net::SocketAddr;
use std::sync::Arc;

use event_store::{EventStore, StoreError};
use service_kit::ops::{Check, OpsServer};
use service_kit::process::CommonConfig;
use service_kit::Shutdown;
use sqlx::PgPool;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] migrations::MigrateError),
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] StoreError),
    #[error("NATS_URL is not a NATS server address: {0}")]
    Nats(#[from] async_nats::ConnectError),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind { addr: SocketAddr, setting: &'static str, source: std::io::Error },
}

/// A worker process connected, its ops address bound but not served yet.
pub struct Worker {
    connections: Connections,
    ops: OpsServer,
    checks: Vec<Check>,
}

/// What a worker works with.
pub struct Connections {
    pub pool: PgPool,
    pub store: Arc<dyn EventStore>,
    pub nats: async_nats::Client,
}

impl Worker {
    /// Binds `ops_addr` (the setting `setting` named it) and connects.
    pub async fn connect(
        common: &CommonConfig,
        nats_url: &str,
        (ops_addr, setting): (SocketAddr, &'static str),
    ) -> Result<Self, StartupError> {
        let ops =
            OpsServer::bind(ops_addr).await.map_err(|source| StartupError::Bind { addr: ops_addr, setting, source })?;
        let pool = migrations::connect_and_migrate(&common.database).await?;
        let store = common.open_store(&pool, &domain::CATEGORIES).await?;
        let nats = service_kit::nats::connect(nats_url).await?;
        let mut checks = common.checks(&pool, &store, migrations::expected());
        checks.push(Check::nats(nats.clone()));
        Ok(Self { connections: Connections { pool, store, nats }, ops, checks })
    }

    /// Serves `/health/*` and `/metrics` until `shutdown`; answers the connections to work with.
    /// Readiness asks the log's horizon too (a process that follows the log).
    pub fn follows_the_log(mut self) -> Self {
        self.checks.push(Check::log_horizon(self.connections.store.clone()));
        self
    }

    pub fn serve_ops(self, shutdown: Shutdown) -> (Connections, JoinHandle<std::io::Result<()>>) {
        (self.connections, tokio::spawn(self.ops.run(self.checks, shutdown)))
    }
}
