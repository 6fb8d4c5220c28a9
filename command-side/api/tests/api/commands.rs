//! Commands over HTTP: what is accepted, what is refused and how.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{order, problem, with_app, TestApp};

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

/// What the saga does to an order whose stock and payment came through.
async fn confirm(app: &TestApp, order_id: &str) {
    use domain::order::{Order, OrderCommand};
    let store = event_store::PgEventStore::new(app.pool.clone());
    let stream = format!("order-{order_id}");
    let invocation = application::Invocation {
        metadata: event_store::Metadata::default(),
        ids: application::EventIds::Random,
        expected_version: None,
        max_attempts: 5,
    };
    for command in [
        OrderCommand::RecordLineReserved { sku: "SKU-1".into() },
        OrderCommand::Confirm { provider_ref: "pay_1".into() },
    ] {
        application::commands::execute::<Order>(&store, &stream, &invocation, command).await.unwrap();
    }
}

#[tokio::test]
async fn only_a_confirmed_order_ships_once_and_a_shipped_one_is_not_cancelled() {
    with_app(|app| async move {
        let order_id = app.place_order().await;
        let ship = format!("/v1/orders/{order_id}/ship");
        let pending = problem(app.post(&ship, json!({})).await, StatusCode::CONFLICT).await;
        assert!(pending["detail"].as_str().unwrap().contains("not confirmed"), "{pending}");
        confirm(&app, &order_id).await;

        // No body needed; the answer is the order's new version.
        let shipped = app.client.post(format!("{}{ship}", app.base)).send().await.unwrap();
        assert_eq!(shipped.status(), StatusCode::ACCEPTED);
        let body: Value = shipped.json().await.unwrap();
        assert_eq!(body["version"], 5);
        let again = problem(app.post(&ship, json!({})).await, StatusCode::CONFLICT).await;
        assert!(again["detail"].as_str().unwrap().contains("shipped already"), "{again}");
        let cancel = format!("/v1/orders/{order_id}/cancel");
        let refused = problem(app.post(&cancel, json!({"reason": "too late"})).await, StatusCode::CONFLICT).await;
        assert!(refused["detail"].as_str().unwrap().contains("shipped"), "{refused}");
        assert_eq!(app.event_count().await, 5);

        let unknown = format!("/v1/orders/{}/ship", uuid::Uuid::new_v4());
        problem(app.post(&unknown, json!({})).await, StatusCode::NOT_FOUND).await;
    })
    .await;
}

#[tokio::test]
async fn shipping_is_idempotent_under_a_key() {
    with_app(|app| async move {
        let order_id = app.place_order().await;
        confirm(&app, &order_id).await;
        let ship = format!("/v1/orders/{order_id}/ship");
        let first = app.post_with(&ship, json!({}), &[("idempotency-key", "ship-1")]).await;
        assert_eq!(first.status(), StatusCode::ACCEPTED);
        let first: Value = first.json().await.unwrap();
        let again = app.post_with(&ship, json!({}), &[("idempotency-key", "ship-1")]).await;
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
        assert_eq!(app.event_count().await, 5);
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
