//! The one harness of the command API's tests: the app built as `main`
//! builds it, on port 0, against a fresh migrated database of the test's
//! own (zero-to-production's `spawn_app`), and a `TestApp` with request
//! methods.

use std::future::Future;

use command_api::{App, Config};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use service_kit::testing::settings;
use service_kit::Shutdown;
use sqlx::PgPool;

/// The secret the tests' tokens are signed with, where auth is on.
pub const SECRET: &str = "command-api-test-secret-of-32-bytes+";

pub struct TestApp {
    pub base: String,
    /// The ops address: `/metrics`, `/health/*` with reasons.
    pub ops: String,
    pub client: Client,
    pub pool: PgPool,
}

/// Settings of the tests: auth off (every request an administrator), a small
/// body limit, many attempts; `env` adds to them or overrides them.
fn config(env: &[(&str, &str)]) -> Config {
    let defaults = [
        ("COMMAND_HTTP_ADDR", "127.0.0.1:0"),
        ("COMMAND_OPS_ADDR", "127.0.0.1:0"),
        ("HTTP_BODY_LIMIT", "4096"),
        ("COMMAND_MAX_ATTEMPTS", "20"),
        ("AUTH_MODE", "off"),
    ];
    Config::from_source(&service_kit::config::Vars(&settings(&defaults, env))).unwrap()
}

/// Starts the app, runs `test`, stops the app; the database goes with it.
pub async fn with_app<F, Fut>(test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    with_app_env(&[], test).await;
}

/// [`with_app`] with settings of the test's own (`("AUTH_MODE", "jwt")`, ...).
pub async fn with_app_env<F, Fut>(env: &[(&str, &str)], test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    service_kit::telemetry::init_for_tests();
    let config = config(env);
    migrations::testing::with_database(12, |pool| async move {
        let app = App::build_with_pool(config, pool.clone()).await.unwrap();
        let (base, ops) = (format!("http://{}", app.local_addr()), format!("http://{}", app.ops_addr()));
        let (stop, shutdown) = Shutdown::new();
        let server = tokio::spawn(app.run_until(shutdown));
        test(TestApp { base, ops, client: Client::new(), pool }).await;
        stop.fire();
        server.await.unwrap().unwrap();
    })
    .await;
}

impl TestApp {
    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// A POST with a bearer token.
    pub async fn post_as(&self, token: Option<&str>, path: &str, body: Value) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn post_raw(&self, path: &str, body: &str, content_type: Option<&str>) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(format!("{}{path}", self.base)).send().await.unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM es_events").fetch_one(&self.pool).await.unwrap()
    }

    pub async fn stored_metadata(&self, stream_id: &str) -> Vec<Value> {
        sqlx::query_scalar("SELECT metadata FROM es_events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(stream_id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    pub async fn place_order(&self) -> String {
        let response = self.post("/v1/orders", order()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().to_owned()
    }
}

pub fn order() -> Value {
    order_of("c-42")
}

pub fn order_of(customer_id: &str) -> Value {
    json!({"customer_id": customer_id, "currency": "EUR", "payment_token": "tok_visa",
           "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]})
}

/// Asserts a problem+json answer with this status, and returns its body.
pub async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string(), "{body}");
    body
}

/// The test's database, as a URL a process of its own can use.
pub fn database_url(pool: &PgPool) -> String {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let server = std::env::var("DATABASE_URL").unwrap();
    format!("{}/{database}", server.rsplit_once('/').unwrap().0)
}
