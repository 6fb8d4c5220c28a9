//! The command API over real HTTP, against a fresh database per test.

use std::future::Future;
use std::time::Duration;

use command_side::{App, Config};
use migrations::testing::with_database;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::oneshot;

struct TestApp {
    base: String,
    client: Client,
    pool: PgPool,
}

fn test_config(max_attempts: &str) -> Config {
    let env = [
        ("COMMAND_HTTP_ADDR", "127.0.0.1:0"),
        ("HTTP_BODY_LIMIT", "4096"),
        ("COMMAND_MAX_ATTEMPTS", max_attempts),
        ("AUTH_MODE", "off"),
    ];
    Config::from_source(&service_kit::config::Vars(&env)).unwrap()
}

/// Starts the app on a random port against a new database, runs `test`, stops the app.
async fn with_app<F, Fut>(test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    with_app_config(test_config("20"), test).await;
}

async fn with_app_config<F, Fut>(config: Config, test: F)
where
    F: FnOnce(TestApp) -> Fut,
    Fut: Future<Output = ()>,
{
    service_kit::telemetry::init_for_tests();
    with_database(12, |pool| async move {
        let app = App::build_with_pool(config, pool.clone()).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        test(TestApp { base, client: Client::new(), pool }).await;
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await;
}

impl TestApp {
    async fn post(&self, path: &str, body: Value) -> Response {
        self.post_with(path, body, &[]).await
    }

    async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn post_raw(&self, path: &str, body: &str, content_type: Option<&str>) -> Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.unwrap()
    }

    async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM es_events").fetch_one(&self.pool).await.unwrap()
    }

    async fn stored_metadata(&self, stream_id: &str) -> Vec<Value> {
        sqlx::query_scalar("SELECT metadata FROM es_events WHERE stream_id = $1 ORDER BY stream_version")
            .bind(stream_id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn place_order(&self) -> String {
        let response = self.post("/v1/orders", order()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().to_owned()
    }
}

fn order() -> Value {
    json!({"customer_id": "c-42", "currency": "EUR", "payment_token": "tok_visa",
           "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]})
}

/// Asserts a problem+json answer with this status, and returns its body.
async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn placing_an_order_answers_202_with_its_id_version_position_and_location() {
    with_app(|app| async move {
        let response = app.post("/v1/orders", order()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(response.headers()["etag"], "\"1\"");
        let body: Value = response.json().await.unwrap();
        let order_id = body["order_id"].as_str().unwrap();
        assert_eq!(location, format!("/v1/orders/{order_id}"));
        assert_eq!(body["version"], 1);
        assert!(body["position"].as_u64().unwrap() >= 1);
        let (event_type, payload): (String, Value) =
            sqlx::query_as("SELECT event_type, payload FROM es_events WHERE stream_id = $1")
                .bind(format!("order-{order_id}"))
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(event_type, "OrderPlaced");
        assert_eq!(payload["total_cents"], 3998);
        assert_eq!(payload["customer_id"], "c-42");
    })
    .await;
}

#[tokio::test]
async fn receipts_create_the_item_and_add_up() {
    with_app(|app| async move {
        for version in 1..=2 {
            let response = app.post("/v1/inventory/SKU-9/receipts", json!({"quantity": 50})).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            assert_eq!(response.headers()["location"], "/v1/inventory/SKU-9");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["sku"], "SKU-9");
            assert_eq!(body["version"], version);
        }
        assert_eq!(app.event_count().await, 2);
    })
    .await;
}

#[tokio::test]
async fn a_customer_cancels_an_order_once() {
    with_app(|app| async move {
        let order_id = app.place_order().await;
        let path = format!("/v1/orders/{order_id}/cancel");
        let response = app.post(&path, json!({"reason": "changed my mind"})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["version"], 2);
        let again = problem(app.post(&path, json!({"reason": "again"})).await, StatusCode::CONFLICT).await;
        assert!(again["detail"].as_str().unwrap().contains("already cancelled"));
        assert_eq!(app.event_count().await, 2);
    })
    .await;
}

#[tokio::test]
async fn cancelling_an_unknown_order_is_404() {
    with_app(|app| async move {
        let path = format!("/v1/orders/{}/cancel", uuid::Uuid::new_v4());
        problem(app.post(&path, json!({"reason": "why not"})).await, StatusCode::NOT_FOUND).await;
        assert_eq!(app.event_count().await, 0);
    })
    .await;
}

#[tokio::test]
async fn broken_rules_are_422_listing_every_field_and_append_nothing() {
    with_app(|app| async move {
        let bad = json!({"customer_id": "", "currency": "eur", "payment_token": "tok_visa",
            "lines": [{"sku": "SKU 1", "quantity": 0, "unit_price_cents": -1},
                      {"sku": "SKU-2", "quantity": 10001, "unit_price_cents": 1000000001}]});
        let body = problem(app.post("/v1/orders", bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "customer_id",
                "currency",
                "lines[0].sku",
                "lines[0].quantity",
                "lines[0].unit_price_cents",
                "lines[1].quantity",
                "lines[1].unit_price_cents"
            ]
        );
        let duplicate = json!({"customer_id": "c", "currency": "EUR", "payment_token": "t",
            "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}, {"sku": "A", "quantity": 1, "unit_price_cents": 1}]});
        problem(app.post("/v1/orders", duplicate).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let no_lines = json!({"customer_id": "c", "currency": "EUR", "payment_token": "t", "lines": []});
        problem(app.post("/v1/orders", no_lines).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        problem(app.post("/v1/inventory/SKU-1/receipts", json!({"quantity": 0})).await, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
        problem(app.post("/v1/inventory/bad%20sku/receipts", json!({"quantity": 1})).await, StatusCode::UNPROCESSABLE_ENTITY)
            .await;
        let order_id = app.place_order().await;
        let empty_reason = app.post(&format!("/v1/orders/{order_id}/cancel"), json!({"reason": ""})).await;
        problem(empty_reason, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(app.event_count().await, 1, "only the valid order was appended");
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_are_4xx_never_500_and_append_nothing() {
    with_app(|app| async move {
        let json = Some("application/json");
        let receipts = "/v1/inventory/SKU-1/receipts";
        problem(app.post_raw(receipts, "{\"quantity\": ", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{\"quantity\": \"two\"}", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{\"quantity\": 1.5}", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{\"quantity\": 1e30}", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{\"quantity\": 99999999999999999999}", json).await, StatusCode::BAD_REQUEST)
            .await;
        problem(app.post_raw(receipts, "{\"quantity\": 1, \"sku\": \"x\"}", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{}", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "[1]", json).await, StatusCode::BAD_REQUEST).await;
        problem(app.post_raw(receipts, "{\"quantity\": 1}", None).await, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        problem(
            app.post_raw(receipts, "{\"quantity\": 1}", Some("text/plain")).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        let huge = format!("{{\"quantity\": 1, \"pad\": \"{}\"}}", "x".repeat(10_000));
        problem(app.post_raw(receipts, &huge, json).await, StatusCode::PAYLOAD_TOO_LARGE).await;
        problem(app.post("/v1/orders/not-a-uuid/cancel", json!({"reason": "x"})).await, StatusCode::BAD_REQUEST).await;
        let too_long_sku = format!("/v1/inventory/{}/receipts", "S".repeat(65));
        problem(app.post(&too_long_sku, json!({"quantity": 1})).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        problem(app.post("/v1/nothing-here", json!({})).await, StatusCode::NOT_FOUND).await;
        let get = app.client.get(format!("{}/v1/orders", app.base)).send().await.unwrap();
        problem(get, StatusCode::METHOD_NOT_ALLOWED).await;
        assert_eq!(app.event_count().await, 0);
    })
    .await;
}

#[tokio::test]
async fn if_match_pins_the_version_and_a_mismatch_is_412_without_retry() {
    with_app(|app| async move {
        let order_id = app.place_order().await;
        let path = format!("/v1/orders/{order_id}/cancel");
        let stale = app.post_with(&path, json!({"reason": "r"}), &[("if-match", "\"7\"")]).await;
        let body = problem(stale, StatusCode::PRECONDITION_FAILED).await;
        assert!(body["detail"].as_str().unwrap().contains("current version is 1"), "{body}");
        assert_eq!(app.event_count().await, 1);
        problem(app.post_with(&path, json!({"reason": "r"}), &[("if-match", "soon")]).await, StatusCode::BAD_REQUEST)
            .await;
        let current = app.post_with(&path, json!({"reason": "r"}), &[("if-match", "\"1\"")]).await;
        assert_eq!(current.status(), StatusCode::ACCEPTED);
        assert_eq!(app.event_count().await, 2);
    })
    .await;
}

#[tokio::test]
async fn concurrent_commands_on_one_stream_are_decided_again_and_all_land() {
    with_app(|app| async move {
        let requests = (0..10).map(|_| app.post("/v1/inventory/SKU-7/receipts", json!({"quantity": 1})));
        for response in futures_util::future::join_all(requests).await {
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT stream_version FROM es_events WHERE stream_id = 'inventory-SKU-7' ORDER BY 1")
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=10).collect::<Vec<i64>>());
    })
    .await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_first_response_and_appends_nothing() {
    with_app(|app| async move {
        let key = [("idempotency-key", "place-0001")];
        let first = app.post_with("/v1/orders", order(), &key).await;
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        let location = first.headers()["location"].clone();
        let first_body: Value = first.json().await.unwrap();
        let again = app.post_with("/v1/orders", order(), &key).await;
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        assert_eq!(again.headers()["location"], location);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first_body);
        assert_eq!(app.event_count().await, 1);

        // A rejected request is answered the same way again, too.
        let bad = json!({"quantity": 0});
        let key = [("idempotency-key", "receipt-bad")];
        let first = problem(
            app.post_with("/v1/inventory/SKU-1/receipts", bad.clone(), &key).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let again =
            problem(app.post_with("/v1/inventory/SKU-1/receipts", bad, &key).await, StatusCode::UNPROCESSABLE_ENTITY)
                .await;
        assert_eq!(first, again);
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_422() {
    with_app(|app| async move {
        let key = [("idempotency-key", "k-1")];
        let first = app.post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 5}), &key).await;
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        let other = app.post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 6}), &key).await;
        problem(other, StatusCode::UNPROCESSABLE_ENTITY).await;
        let elsewhere = app.post_with("/v1/inventory/SKU-2/receipts", json!({"quantity": 5}), &key).await;
        problem(elsewhere, StatusCode::UNPROCESSABLE_ENTITY).await;
        problem(app.post_with("/v1/orders", order(), &[("idempotency-key", "")]).await, StatusCode::BAD_REQUEST).await;
        assert_eq!(app.event_count().await, 1);
    })
    .await;
}

/// Ages every remembered key past `IDEMPOTENCY_KEY_TTL` and lets the janitor forget them.
async fn forget_every_key(pool: &PgPool) {
    sqlx::query("UPDATE http_idempotency_keys SET requested_at = now() - interval '2 days'")
        .execute(pool)
        .await
        .unwrap();
    let forgotten = command_side::idempotency::forget_expired(pool, Duration::from_secs(24 * 3600)).await.unwrap();
    assert!(forgotten > 0);
}

#[tokio::test]
async fn a_key_used_again_after_it_was_forgotten_is_a_new_request() {
    with_app(|app| async move {
        let key = [("idempotency-key", "receipt-2026-12-01")];
        let first = app.post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 5}), &key).await;
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        forget_every_key(&app.pool).await;

        let again = app.post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 7}), &key).await;
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        assert!(!again.headers().contains_key("idempotent-replayed"));
        assert_eq!(again.json::<Value>().await.unwrap()["version"], 2);
        let received: i64 = sqlx::query_scalar(
            "SELECT sum((payload->>'quantity')::bigint)::bigint FROM es_events WHERE stream_id = 'inventory-SKU-1'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(received, 12, "both receipts are on hand");
        // Remembered again under its new generation: a retry is a replay.
        let retry = app.post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 7}), &key).await;
        assert_eq!(retry.headers()["idempotent-replayed"], "true");

        // A forgotten key used for another resource derives other ids too.
        let key = [("idempotency-key", "k-reused")];
        assert_eq!(app.post_with("/v1/orders", order(), &key).await.status(), StatusCode::ACCEPTED);
        forget_every_key(&app.pool).await;
        let elsewhere = app.post_with("/v1/inventory/SKU-2/receipts", json!({"quantity": 3}), &key).await;
        assert_eq!(elsewhere.status(), StatusCode::ACCEPTED, "{}", elsewhere.text().await.unwrap());
        assert_eq!(app.event_count().await, 4);
    })
    .await;
}

/// A first request with this key and body has claimed it and is still running.
async fn claim_held_by_another_request(pool: &PgPool, path: &str, body: &Value, key: &str) {
    let fingerprint =
        command_side::idempotency::fingerprint("POST", path, serde_json::to_string(body).unwrap().as_bytes());
    sqlx::query(
        "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until) \
         VALUES ('admin:developer', $1, $2, now() + interval '1 minute')",
    )
    .bind(key)
    .bind(&fingerprint)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_request_waiting_on_its_key_answers_409_before_the_request_timeout() {
    let env = [("COMMAND_HTTP_ADDR", "127.0.0.1:0"), ("HTTP_REQUEST_TIMEOUT", "2s"), ("AUTH_MODE", "off")];
    let config = Config::from_source(&service_kit::config::Vars(&env)).unwrap();
    with_app_config(config, |app| async move {
        let body = json!({"quantity": 5});
        claim_held_by_another_request(&app.pool, "/v1/inventory/SKU-1/receipts", &body, "slow-1").await;
        let started = std::time::Instant::now();
        let waiting = app.post_with("/v1/inventory/SKU-1/receipts", body, &[("idempotency-key", "slow-1")]).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(waiting.headers()["retry-after"], "1");
        let body = problem(waiting, StatusCode::CONFLICT).await;
        assert!(body["detail"].as_str().unwrap().contains("still being processed"), "{body}");
        assert_eq!(app.event_count().await, 0);
    })
    .await;
}

#[tokio::test]
async fn only_the_holder_of_a_claim_records_or_releases_it() {
    use command_side::idempotency::{claim, complete, release, Claim, StoredResponse};
    with_database(2, |pool| async move {
        let wait = Duration::from_secs(1);
        let fingerprint = b"request".to_vec();
        let Claim::Run(first) = claim(&pool, "p", "k", &fingerprint, wait).await.unwrap() else { panic!() };
        // The first request outlives its lease; a retry takes the key over.
        sqlx::query("UPDATE http_idempotency_keys SET lease_until = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
        let Claim::Run(second) = claim(&pool, "p", "k", &fingerprint, wait).await.unwrap() else { panic!() };
        assert_eq!(second.namespace, first.namespace, "a takeover derives the same ids");

        let answer = |status| StoredResponse { status, body: json!({"n": status}), location: None };
        assert!(!release(&pool, "p", "k", &first).await.unwrap(), "the first may not give the key back");
        assert!(!complete(&pool, "p", "k", &first, &answer(500)).await.unwrap(), "nor record its answer");
        assert!(matches!(claim(&pool, "p", "k", &fingerprint, Duration::ZERO).await.unwrap(), Claim::StillRunning));
        assert!(complete(&pool, "p", "k", &second, &answer(202)).await.unwrap());
        match claim(&pool, "p", "k", &fingerprint, wait).await.unwrap() {
            Claim::Replay(stored) => assert_eq!(stored, answer(202)),
            other => panic!("expected the holder's answer, got {other:?}"),
        }
    })
    .await;
}

/// Contention is transient: its 409 carries Retry-After and is not
/// remembered under the key, so the client's retry with the key runs again.
#[tokio::test]
async fn a_contended_request_is_not_remembered_under_its_idempotency_key() {
    with_app_config(test_config("1"), |app| async move {
        let mut contended = Vec::new();
        for round in 0..20 {
            let keys: Vec<String> = (0..8).map(|i| format!("r{round}-{i}")).collect();
            let headers: Vec<[(&str, &str); 1]> = keys.iter().map(|key| [("idempotency-key", key.as_str())]).collect();
            let requests =
                headers.iter().map(|h| app.post_with("/v1/inventory/SKU-3/receipts", json!({"quantity": 1}), h));
            for (key, response) in keys.iter().zip(futures_util::future::join_all(requests).await) {
                if response.status() == StatusCode::CONFLICT {
                    assert_eq!(response.headers()["retry-after"], "1");
                    contended.push(key.clone());
                } else {
                    assert_eq!(response.status(), StatusCode::ACCEPTED);
                }
            }
            if !contended.is_empty() {
                break;
            }
        }
        assert!(!contended.is_empty(), "no request met contention with one attempt each");
        for key in &contended {
            let retry = app
                .post_with("/v1/inventory/SKU-3/receipts", json!({"quantity": 1}), &[("idempotency-key", key)])
                .await;
            assert_eq!(retry.status(), StatusCode::ACCEPTED, "key {key}");
            assert!(!retry.headers().contains_key("idempotent-replayed"));
        }
    })
    .await;
}

#[tokio::test]
async fn twenty_racing_identical_requests_place_one_order() {
    with_app(|app| async move {
        let key = [("idempotency-key", "race-1")];
        let requests = (0..20).map(|_| app.post_with("/v1/orders", order(), &key));
        let mut bodies = Vec::new();
        for response in futures_util::future::join_all(requests).await {
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            bodies.push(response.json::<Value>().await.unwrap());
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
        assert_eq!(app.event_count().await, 1);
    })
    .await;
}

#[tokio::test]
async fn every_response_has_a_request_id_and_the_correlation_id_reaches_the_events() {
    with_app(|app| async move {
        let response = app
            .post_with("/v1/inventory/SKU-1/receipts", json!({"quantity": 5}), &[("x-correlation-id", "corr-abc")])
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(response.headers()["x-correlation-id"], "corr-abc");
        let metadata = app.stored_metadata("inventory-SKU-1").await;
        assert_eq!(metadata[0]["correlation_id"], "corr-abc");
        assert_eq!(metadata[0]["causation_id"], request_id.as_str());
        assert_eq!(metadata[0]["actor"], "admin:developer");

        // Without one, a correlation id is made, returned and stored.
        let response = app.post("/v1/inventory/SKU-1/receipts", json!({"quantity": 5})).await;
        let made = response.headers()["x-correlation-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&made).is_ok());
        assert_eq!(app.stored_metadata("inventory-SKU-1").await[1]["correlation_id"], made.as_str());

        let missing = app.client.get(format!("{}/nowhere", app.base)).send().await.unwrap();
        assert!(missing.headers().contains_key("x-request-id"));
        let live = app.client.get(format!("{}/health/live", app.base)).send().await.unwrap();
        assert!(live.status().is_success() && live.headers().contains_key("x-request-id"));
        let ready = app.client.get(format!("{}/health/ready", app.base)).send().await.unwrap();
        assert!(ready.status().is_success());
    })
    .await;
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_command-side"))
        .env("COMMAND_HTTP_ADDR", "localhost:http")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("COMMAND_HTTP_ADDR"), "{stderr}");
}

/// Starts the binary against the test's database; returns it and its base URL once it answers.
async fn spawn_binary(pool: &PgPool) -> (std::process::Child, String) {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let base = std::env::var("DATABASE_URL").unwrap();
    let database_url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_command-side"))
        .env("DATABASE_URL", &database_url)
        .env("COMMAND_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("AUTH_MODE", "off")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/health/live")).send().await.is_ok_and(|r| r.status().is_success()) {
            return (child, base);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the service did not start");
}

async fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still running 10 s after SIGTERM");
}

fn sigterm(child: &std::process::Child) {
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    with_database(4, |pool| async move {
        let (mut child, _) = spawn_binary(&pool).await;
        sigterm(&child);
        let status = wait_for_exit(&mut child).await;
        assert!(status.success(), "{status}");
    })
    .await;
}

/// A request in flight when SIGTERM arrives is answered before the process
/// exits. (The request is held in flight by an idempotency key whose first
/// request has not answered yet; the test then stores that answer.)
#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish() {
    with_database(4, |pool| async move {
        let (mut child, base) = spawn_binary(&pool).await;
        let body = json!({"quantity": 5});
        let fingerprint = command_side::idempotency::fingerprint(
            "POST",
            "/v1/inventory/SKU-1/receipts",
            serde_json::to_string(&body).unwrap().as_bytes(),
        );
        sqlx::query(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until) \
             VALUES ('admin:developer', 'in-flight', $1, now() + interval '1 minute')",
        )
        .bind(&fingerprint)
        .execute(&pool)
        .await
        .unwrap();
        let request = tokio::spawn(
            Client::new()
                .post(format!("{base}/v1/inventory/SKU-1/receipts"))
                .header("idempotency-key", "in-flight")
                .json(&body)
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigterm(&child);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(child.try_wait().unwrap().is_none(), "exited with a request in flight");
        sqlx::query(
            "UPDATE http_idempotency_keys SET status = 202, body = '{\"sku\": \"SKU-1\", \"version\": 1}' \
             WHERE key = 'in-flight'",
        )
        .execute(&pool)
        .await
        .unwrap();
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.json::<Value>().await.unwrap()["version"], 1);
        let status = wait_for_exit(&mut child).await;
        assert!(status.success(), "{status}");
    })
    .await;
}

/// The committed copy of the OpenAPI document (`docs/openapi/command-api.json`)
/// is what the code generates, so API changes show in review.
/// `UPDATE_OPENAPI=1 cargo nextest run -p command-side openapi` rewrites it.
#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi/command-api.json");
    if let Err(difference) = service_kit::openapi::check_committed_copy(&command_side::openapi(), path) {
        panic!("{difference}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_and_the_document_and_swagger_ui_are_too() {
    with_app(|app| async move {
        let served: Value =
            app.client.get(format!("{}/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(served, serde_json::to_value(command_side::openapi()).unwrap());
        assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = served["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 6, "{:?}", paths.keys()); // 3 of them the operations routes
        for (path, operations) in paths {
            let concrete = path.replace("{order_id}", &uuid::Uuid::new_v4().to_string()).replace("{sku}", "SKU-1");
            for method in operations.as_object().unwrap().keys() {
                let response = app
                    .client
                    .request(method.to_uppercase().parse().unwrap(), format!("{}{concrete}", app.base))
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such route"),
                    "{method} {path}: {status} {body}"
                );
            }
        }
        let docs = app.client.get(format!("{}/docs/", app.base)).send().await.unwrap();
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().contains("swagger-ui"));
    })
    .await;
}
