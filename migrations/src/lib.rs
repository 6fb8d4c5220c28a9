//! The system's schema, in one migration history applied with sqlx:
//!
//! - `event-store/`: the event store's own tables (`es_events`, the log's
//!   read horizon, the record of the backend), which
//!   `event_store::postgres::MIGRATOR` applies alone where only the events
//!   live;
//! - this folder: everything else, each table owned by the module that
//!   queries it (read models, projection checkpoints and rebuilds,
//!   idempotency keys, the relay's checkpoint, saga deadlines, the backend
//!   record).
//!
//! Migrations are never edited once merged.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, Migrator};
use sqlx::PgPool;

/// Every migration of the system, the event store's and the others, in version order.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let others = sqlx::migrate!("../migrations");
    let mut all: Vec<Migration> =
        event_store::postgres::MIGRATOR.migrations.iter().chain(others.migrations.iter()).cloned().collect();
    all.sort_by_key(|migration| migration.version);
    Migrator { migrations: Cow::Owned(all), ..Migrator::DEFAULT }
});

/// How many migrations a database up to date has applied (for readiness).
pub fn expected() -> usize {
    MIGRATOR.migrations.len()
}

/// Why the database could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot reach the database (DATABASE_URL): {0}")]
    Connect(#[from] sqlx::Error),
    #[error("cannot apply the migrations: {0}")]
    Apply(#[from] sqlx::migrate::MigrateError),
}

/// The pool of a service that writes: connected (the database created if
/// missing) and migrated.
pub async fn connect_and_migrate(database: &service_kit::postgres::DatabaseConfig) -> Result<PgPool, MigrateError> {
    let pool = database.connect().await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Test support (feature `testing`).
#[cfg(feature = "testing")]
pub mod testing {
    use std::future::Future;

    use sqlx::PgPool;

    /// Runs `test` against a new database of its own with the whole schema,
    /// then drops it (see `event_store::testing::with_migrated_database`).
    pub async fn with_database<F, Fut>(max_connections: u32, test: F)
    where
        F: FnOnce(PgPool) -> Fut,
        Fut: Future<Output = ()>,
    {
        event_store::testing::with_migrated_database(&super::MIGRATOR, max_connections, test).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_history_in_version_order_starting_with_the_event_store() {
        let versions: Vec<i64> = MIGRATOR.migrations.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "{versions:?}");
        assert_eq!(versions[0], event_store::postgres::MIGRATOR.migrations[0].version);
        assert!(versions.len() > event_store::postgres::MIGRATOR.migrations.len());
    }
}
