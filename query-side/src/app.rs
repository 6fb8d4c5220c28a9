//! Building the query service and running it until shutdown.

use std::net::SocketAddr;

use axum::Router;
use service_kit::nats::dead_letters::DeadLetters;
use service_kit::ops::{Check, OpsServer};
use service_kit::personal_data::Vault;
use service_kit::Shutdown;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::http::{self, AppState};
use crate::progress::Progress;
use crate::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach the database (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind { setting: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] event_store::StoreError),
    #[error("NATS_URL is not a NATS server address: {0}")]
    Nats(#[from] async_nats::ConnectError),
}

pub struct App {
    listener: TcpListener,
    router: Router,
    ops: OpsServer,
    checks: Vec<Check>,
    state: AppState,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = config.common.database.connect().await?;
        Self::build_with_pool(config, pool).await
    }

    /// The read-model tables are created by the migrations the other services apply.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> Result<Self, StartupError> {
        service_kit::metrics::handle();
        let store = config.common.open_store(&pool, &domain::CATEGORIES).await?;
        let state = AppState {
            store: store.clone(),
            progress: Progress::start(pool.clone(), config.waiters),
            pool: pool.clone(),
            min_position_wait: config.min_position_wait,
            vault: Vault::new(pool.clone(), config.master_keys.clone()),
            dead_letters: DeadLetters::new(
                async_nats::jetstream::new(service_kit::nats::connect(&config.nats_url).await?),
                config.dead_letter_stream.clone(),
            ),
        };
        let gate = service_kit::auth::Gate::new(&config.auth);
        // Ready when PostgreSQL answers, migrated (shared/API.md: never NATS).
        let checks = config.common.checks(&pool, &store, migrations::expected());
        let router = http::router(state.clone(), gate, checks.clone());
        let router = config.cors.apply(service_kit::http::layers(router, config.request_timeout));
        let listener = TcpListener::bind(config.http_addr).await.map_err(|source| StartupError::Bind {
            setting: "QUERY_HTTP_ADDR",
            addr: config.http_addr,
            source,
        })?;
        let ops = OpsServer::bind(config.ops_addr).await.map_err(|source| StartupError::Bind {
            setting: "QUERY_OPS_ADDR",
            addr: config.ops_addr,
            source,
        })?;
        Ok(Self { listener, router, ops, checks, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where `/metrics` and `/health/*` (with reasons) answer.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    pub async fn run_until(self, shutdown: Shutdown) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "query API listening");
        let gauges = http::record_metrics(self.state);
        let ops = tokio::spawn(self.ops.run(self.checks, shutdown.clone()));
        // The peer address (ConnectInfo) keys rate limits when auth is off.
        let served =
            service_kit::http::serve(self.listener, self.router, async move { shutdown.requested().await }).await;
        gauges.abort();
        let _ = ops.await;
        served
    }
}
