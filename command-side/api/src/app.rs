//! Building the command API from its configuration, and running it until
//! shutdown. Tests build the same app on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use application::idempotency::LEASE;
use application::{Application, Settings};
use axum::Router;
use service_kit::ops::{Check, OpsServer};
use service_kit::Shutdown;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::{http, Config};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] migrations::MigrateError),
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind { setting: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the event store (EVENT_STORE_URL): {0}")]
    EventStore(#[from] event_store::StoreError),
}

pub struct App {
    listener: TcpListener,
    router: Router,
    ops: OpsServer,
    checks: Vec<Check>,
    application: Application,
    idempotency_key_ttl: Duration,
}

impl App {
    /// Connects (creating the database if missing), migrates and binds, as configured.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = migrations::connect_and_migrate(&config.common.database).await?;
        Self::build_with_pool(config, pool).await
    }

    /// Binds with a migrated pool of the caller's (the tests' own database).
    pub async fn build_with_pool(config: Config, pool: PgPool) -> Result<Self, StartupError> {
        service_kit::metrics::handle(); // the recorder, before anything is recorded
        let store = config.common.open_store(&pool, &domain::CATEGORIES).await?;
        let settings = Settings {
            max_attempts: config.command_max_attempts,
            order_deadline: chrono::Duration::from_std(config.order_deadline)
                .unwrap_or_else(|_| chrono::Duration::minutes(15)),
            key_wait: key_wait(config.request_timeout),
            master_keys: config.master_keys.clone(),
            webhook_policy: config.webhook_policy.clone(),
            ..Settings::default()
        };
        let application = Application::new(store.clone(), pool.clone(), settings);
        // Ready when PostgreSQL answers, migrated (shared/API.md: never NATS).
        let checks = config.common.checks(&pool, &store, migrations::expected());
        let router = http::router(application.clone(), config.body_limit, &config.auth, checks.clone());
        let router = config.cors.apply(service_kit::http::layers(router, config.request_timeout));
        let listener = TcpListener::bind(config.http_addr).await.map_err(|source| StartupError::Bind {
            setting: "COMMAND_HTTP_ADDR",
            addr: config.http_addr,
            source,
        })?;
        let ops = OpsServer::bind(config.ops_addr).await.map_err(|source| StartupError::Bind {
            setting: "COMMAND_OPS_ADDR",
            addr: config.ops_addr,
            source,
        })?;
        Ok(Self { listener, router, ops, checks, application, idempotency_key_ttl: config.idempotency_key_ttl })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where `/metrics` and `/health/*` (with reasons) answer.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.local_addr()
    }

    /// Serves until `shutdown`, then lets in-flight requests finish.
    pub async fn run_until(self, shutdown: Shutdown) -> std::io::Result<()> {
        let resealing = tokio::spawn(reseal_personal_data_keys(self.application.clone()));
        let janitor = tokio::spawn(forget_expired_keys(self.application, self.idempotency_key_ttl, shutdown.clone()));
        let ops = tokio::spawn(self.ops.run(self.checks, shutdown.clone()));
        tracing::info!(addr = %self.listener.local_addr()?, "command API listening");
        // The peer address (ConnectInfo) keys rate limits when auth is off.
        let served =
            service_kit::http::serve(self.listener, self.router, async move { shutdown.requested().await }).await;
        janitor.abort();
        resealing.abort();
        let _ = ops.await;
        tracing::info!("command API stopped");
        served
    }
}

/// How long a request waits for the first one under its `Idempotency-Key`:
/// long enough to outlast the first one's lease when the request timeout
/// allows, and always short of the timeout, so the answer is the documented
/// 409 rather than the timeout's 503.
fn key_wait(request_timeout: Duration) -> Duration {
    let margin = Duration::from_secs(1).min(request_timeout / 2);
    (request_timeout - margin).min(LEASE + Duration::from_secs(1))
}

/// After a master key rotation, seals the data keys the previous master
/// keys sealed with the current one (ADR 0014); nothing to do otherwise.
async fn reseal_personal_data_keys(application: Application) {
    match application.vault().reseal_all(100).await {
        Ok(0) => {}
        Ok(resealed) => tracing::info!(resealed, "personal data keys sealed again with the current master key"),
        Err(error) => tracing::error!(%error, "cannot seal the personal data keys with the current master key"),
    }
}

/// Every ten minutes, the first time ten minutes after start: a key
/// expires a day after its request (by default), so nothing waits for the
/// first pass, and a restart does not begin with it (nor does a test's API
/// remove, at a moment of its own, keys the test is setting up).
async fn forget_expired_keys(application: Application, ttl: Duration, shutdown: Shutdown) {
    const EVERY: Duration = Duration::from_secs(600);
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    while !shutdown.is_requested() {
        every.tick().await;
        match application.forget_expired_keys(ttl).await {
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
        assert_eq!(key_wait(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(key_wait(Duration::from_secs(60)), LEASE + Duration::from_secs(1));
        assert_eq!(key_wait(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
