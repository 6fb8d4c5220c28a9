//! The one harness of the query API's tests: the app built as `main`
//! builds it, on port 0, against a fresh migrated database of the test's
//! own, with the event store over it and, when a test asks, the projections
//! running.

use std::future::Future;
use std::sync::Arc;

use domain::EventPayload;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use projections::ProjectorConfig;
use query_side::{App, Config};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use service_kit::testing::settings;
use service_kit::{Shutdown, Trigger};
use sqlx::PgPool;
use uuid::Uuid;

/// The secret the tests' tokens are signed with, where auth is on.
pub const SECRET: &str = "query-api-test-secret-of-32-bytes-or-more";

pub struct TestApp {
    pub base: String,
    /// The ops address: `/metrics`, `/health/*` with reasons.
    pub ops: String,
    pub client: Client,
    pub pool: PgPool,
    pub store: PgEventStore,
}

/// Starts the app (auth off, `MIN_POSITION_WAIT` 2 s), runs `test`, stops the app.
pub async fn with_app<F, Fut>(test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    with_app_env(&[], test).await;
}

/// [`with_app`] with settings of the test's own.
pub async fn with_app_env<F, Fut>(env: &[(&str, &str)], test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    service_kit::telemetry::init_for_tests();
    // A dead-letter stream of the test's own (none, unless the test makes it):
    // never the shared server's DEADLETTER, which a replay would send to a real shop.
    let dead_letters = format!("NONE_{}", Uuid::new_v4().simple());
    let defaults = [
        ("QUERY_HTTP_ADDR", "127.0.0.1:0"),
        ("QUERY_OPS_ADDR", "127.0.0.1:0"),
        ("MIN_POSITION_WAIT", "2s"),
        ("AUTH_MODE", "off"),
        ("SAGA_DEAD_LETTER_STREAM", dead_letters.as_str()),
    ];
    let config = Config::from_source(&service_kit::config::Vars(&settings(&defaults, env))).unwrap();
    migrations::testing::with_database(12, |pool| async move {
        let app = App::build_with_pool(config, pool.clone()).await.unwrap();
        let (base, ops) = (format!("http://{}", app.local_addr()), format!("http://{}", app.ops_addr()));
        let (stop, shutdown) = Shutdown::new();
        let server = tokio::spawn(app.run_until(shutdown));
        let store = PgEventStore::new(pool.clone());
        test(TestApp { base, ops, client: Client::new(), pool, store }).await;
        stop.fire();
        server.await.unwrap().unwrap();
    })
    .await;
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    /// A GET with a bearer token.
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    /// Appends domain events; returns the global position of the last.
    pub async fn append(&self, stream: &str, events: &[impl EventPayload]) -> u64 {
        let batch = events
            .iter()
            .map(|e| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: e.event_type().to_owned(),
                schema_version: e.schema_version(),
                payload: e.to_payload(),
                metadata: Metadata::default(),
            })
            .collect();
        self.store.append(stream, ExpectedVersion::Any, batch).await.unwrap().log_position.position
    }

    /// Runs the projections until the returned trigger is fired or dropped.
    pub fn project(&self) -> Trigger {
        let (stop, shutdown) = Shutdown::new();
        let store: Arc<dyn EventStore> = Arc::new(self.store.clone());
        let pool = self.pool.clone();
        tokio::spawn(async move {
            projections::service::run_all(store, pool, ProjectorConfig::default(), Default::default(), shutdown).await;
        });
        stop
    }
}

/// Asserts a problem+json answer with this status, and returns its body.
pub async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.unwrap()
}
