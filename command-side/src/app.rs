//! Building the command service from its configuration, and running it
//! until shutdown. Tests build the same app on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::net::TcpListener;

use service_kit::ops::Check;

use crate::http::{self, AppState};
use crate::{idempotency, Config};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot reach the database (DATABASE_URL): {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply the migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {addr} (COMMAND_HTTP_ADDR): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] event_store::StoreError),
}

pub struct App {
    listener: TcpListener,
    router: Router,
    pool: PgPool,
    idempotency_key_ttl: Duration,
}

/// Connects to the configured database, creating it first if it does not
/// exist (convenient locally; in production it exists already).
async fn connect(config: &Config) -> Result<PgPool, StartupError> {
    let url = config.database_url.expose();
    if !Postgres::database_exists(url).await? {
        tracing::info!("creating the database");
        Postgres::create_database(url).await?;
    }
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

/// Applies every pending migration (`command-side migrate`).
pub async fn migrate(config: &Config) -> Result<PgPool, StartupError> {
    let pool = connect(config).await?;
    migrations::MIGRATOR.run(&pool).await?;
    Ok(pool)
}

impl App {
    /// Connects, migrates and binds, as configured.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = connect(&config).await?;
        Self::build_with_pool(config, pool).await
    }

    /// Migrates and binds with a pool of the caller's (the tests' own database).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> Result<Self, StartupError> {
        migrations::MIGRATOR.run(&pool).await?;
        let store = config.event_store.open(pool.clone(), &domain::CATEGORIES).await?;
        let state = AppState {
            store: store.clone(),
            pool: pool.clone(),
            command_max_attempts: config.command_max_attempts,
            order_deadline: chrono::Duration::from_std(config.order_deadline)
                .unwrap_or_else(|_| chrono::Duration::minutes(15)),
            idempotency_wait: idempotency_wait(config.request_timeout),
        };
        let gate = service_kit::auth::Gate::new(&config.auth);
        // Ready when PostgreSQL answers, migrated (shared/API.md: never NATS).
        let mut checks = vec![Check::database(pool.clone(), migrations::expected())];
        checks.extend(Check::event_store_if_separate(&config.event_store, &store));
        let router = http::router(state, config.body_limit, gate, checks);
        let router = service_kit::http::layers(router, config.request_timeout);
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartupError::Bind { addr: config.http_addr, source })?;
        Ok(Self { listener, router, pool, idempotency_key_ttl: config.idempotency_key_ttl })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let janitor = tokio::spawn(forget_expired_keys(self.pool.clone(), self.idempotency_key_ttl));
        tracing::info!(addr = %self.local_addr(), "command API listening");
        // The peer address keys rate limits when auth is off.
        let app = self.router.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        janitor.abort();
        tracing::info!("command API stopped");
        served
    }
}

/// How long a request waits for the first one under its `Idempotency-Key`:
/// long enough to outlast the first one's lease when the request timeout
/// allows, and always short of the timeout, so the answer is the documented
/// 409 rather than the timeout's 503.
fn idempotency_wait(request_timeout: Duration) -> Duration {
    let margin = Duration::from_secs(1).min(request_timeout / 2);
    (request_timeout - margin).min(idempotency::LEASE + Duration::from_secs(1))
}

async fn forget_expired_keys(pool: PgPool, ttl: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        every.tick().await;
        match idempotency::forget_expired(&pool, ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "expired idempotency keys removed"),
            Err(error) => tracing::warn!(%error, "could not remove expired idempotency keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_waits_for_its_key_short_of_the_request_timeout() {
        assert_eq!(idempotency_wait(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(idempotency_wait(Duration::from_secs(60)), idempotency::LEASE + Duration::from_secs(1));
        assert_eq!(idempotency_wait(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
