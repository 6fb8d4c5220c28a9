//! Which event store a service uses: `EVENT_STORE_URL`, checked at start-up.
//!
//! Unset (or `postgres`): the PostgreSQL database of `DATABASE_URL`, which
//! also holds the read models and every checkpoint. An `esdb://`,
//! `esdb+discover://`, `kurrentdb://` or `kurrentdb+discover://` connection
//! string: EventStoreDB / KurrentDB holds the events (PostgreSQL still holds
//! the rest); this needs a build with the `eventstoredb` feature.

use std::sync::Arc;

use sqlx::PgPool;

use crate::{EventStore, PgEventStore, StoreError};

/// The name of the setting.
pub const EVENT_STORE_URL: &str = "EVENT_STORE_URL";

/// Connection-string schemes of EventStoreDB and KurrentDB (same format).
const ESDB_SCHEMES: [&str; 4] = ["esdb://", "esdb+discover://", "kurrentdb://", "kurrentdb+discover://"];

#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// The PostgreSQL database of `DATABASE_URL` (the default).
    Postgres,
    /// EventStoreDB / KurrentDB at this connection string.
    EventStoreDb { url: String },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may carry credentials.
        f.write_str(self.name())
    }
}

impl Backend {
    /// Parses the value of `EVENT_STORE_URL`; the error says what is wrong
    /// (the caller names the setting).
    pub fn from_setting(value: Option<&str>) -> Result<Self, String> {
        let value = value.map(str::trim).unwrap_or_default();
        if value.is_empty() || value.eq_ignore_ascii_case("postgres") {
            return Ok(Self::Postgres);
        }
        if !ESDB_SCHEMES.iter().any(|scheme| value.starts_with(scheme)) {
            return Err(format!("must be empty or `postgres` (PostgreSQL, the default) or a connection string starting with one of {ESDB_SCHEMES:?}"));
        }
        if !cfg!(feature = "eventstoredb") {
            return Err(
                "names EventStoreDB, but this build has no EventStoreDB support: build with `--features eventstoredb`"
                    .into(),
            );
        }
        #[cfg(feature = "eventstoredb")]
        crate::esdb::parse_settings(value)?;
        Ok(Self::EventStoreDb { url: value.to_owned() })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::EventStoreDb { .. } => "eventstoredb",
        }
    }

    /// The store: PostgreSQL over `pool`, or a client of EventStoreDB that
    /// holds the streams of `categories` (the system's: `order`, ...).
    ///
    /// `pool`'s database records which backend its read models and
    /// checkpoints come from (the first opener records it); opening another
    /// one there is refused, since positions of one mean nothing in the other.
    pub async fn open(&self, pool: PgPool, categories: &[&str]) -> Result<Arc<dyn EventStore>, StoreError> {
        self.open_with(pool, categories, crate::SubscriptionConfig::default()).await
    }

    /// [`Backend::open`] with subscriptions tuned (PostgreSQL; EventStoreDB
    /// pushes its subscriptions itself).
    pub async fn open_with(
        &self,
        pool: PgPool,
        categories: &[&str],
        subscription: crate::SubscriptionConfig,
    ) -> Result<Arc<dyn EventStore>, StoreError> {
        refuse_a_standby(&pool).await?;
        claim(&pool, self.name()).await?;
        match self {
            Self::Postgres => {
                let _ = categories; // every stream of the database is the system's
                let config = crate::PgStoreConfig { subscription, ..Default::default() };
                Ok(Arc::new(PgEventStore::with_config(pool, config)))
            }
            #[cfg(feature = "eventstoredb")]
            Self::EventStoreDb { url } => {
                let config = crate::esdb::EsdbConfig::new(url, categories);
                Ok(Arc::new(crate::esdb::EsdbEventStore::connect(config)?))
            }
            #[cfg(not(feature = "eventstoredb"))]
            Self::EventStoreDb { .. } => Err(StoreError::Backend("this build has no EventStoreDB support".into())),
        }
    }
}

/// A hot standby's snapshots do not list the primary's transactions in
/// progress the way the log's read horizon needs (ADR 0001): reading the log
/// there could skip events that commit late. The system runs on the primary.
async fn refuse_a_standby(pool: &PgPool) -> Result<(), StoreError> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(pool).await?;
    if standby {
        return Err(StoreError::Backend(
            "DATABASE_URL names a hot standby (a read-only replica): the log cannot be read safely there, \
             and nothing can be written; point DATABASE_URL at the primary"
                .into(),
        ));
    }
    Ok(())
}

/// Records `backend` as the database's event store unless one is recorded;
/// refuses if another one is. A database without the table yet (a service
/// that does not migrate, started first) is left to the services that do.
async fn claim(pool: &PgPool, backend: &str) -> Result<(), StoreError> {
    let recorded: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
        "WITH claimed AS (INSERT INTO event_store_backend (backend) VALUES ($1) ON CONFLICT DO NOTHING RETURNING backend) \
         SELECT backend FROM claimed UNION ALL SELECT backend FROM event_store_backend LIMIT 1",
    )
    .bind(backend)
    .fetch_optional(pool)
    .await;
    match recorded {
        Ok(Some(recorded)) if recorded != backend => Err(StoreError::Backend(
            format!(
                "this database's read models and checkpoints were built from the {recorded} event store, but \
                 EVENT_STORE_URL names {backend}: events are not moved between backends. Set EVENT_STORE_URL back, \
                 or start from a new database (DATABASE_URL); see docs/operations.md"
            )
            .into(),
        )),
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
            tracing::debug!("event_store_backend does not exist yet: the migrating services will record the backend");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_empty_and_postgres_mean_postgresql() {
        for value in [None, Some(""), Some("  "), Some("postgres"), Some("POSTGRES")] {
            assert_eq!(Backend::from_setting(value).unwrap(), Backend::Postgres, "{value:?}");
        }
    }

    #[test]
    fn anything_else_than_a_known_scheme_is_refused_with_the_choices() {
        for value in ["mysql://x", "http://localhost:2113", "esdb:/x", "tcp://localhost:1113"] {
            let error = Backend::from_setting(Some(value)).unwrap_err();
            assert!(error.contains("esdb://"), "{value}: {error}");
        }
    }

    #[cfg(not(feature = "eventstoredb"))]
    #[test]
    fn an_eventstoredb_url_needs_the_feature() {
        let error = Backend::from_setting(Some("esdb://localhost:2113?tls=false")).unwrap_err();
        assert!(error.contains("--features eventstoredb"), "{error}");
    }

    #[cfg(feature = "eventstoredb")]
    #[test]
    fn eventstoredb_and_kurrentdb_urls_select_eventstoredb() {
        for value in
            ["esdb://localhost:2113?tls=false", "kurrentdb+discover://a:2113,b:2113", "esdb://admin:changeit@h:2113"]
        {
            assert_eq!(Backend::from_setting(Some(value)).unwrap(), Backend::EventStoreDb { url: value.into() });
        }
        let secret = Backend::from_setting(Some("esdb://admin:changeit@h:2113")).unwrap();
        assert_eq!(format!("{secret:?}"), "eventstoredb", "credentials are never printed");
        assert!(Backend::from_setting(Some("esdb://localhost:2113?tls=maybe")).is_err());
    }
}
