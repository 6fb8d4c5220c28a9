//! `/v1/webhooks`: merchants' endpoints registered, listed, deleted, and
//! their deliveries listed (ADR 0015). Sending is the notifier's (its tests).

use reqwest::StatusCode;
use serde_json::{json, Value};
use service_kit::testing::token;
use uuid::Uuid;

use crate::helpers::{problem, with_app, with_app_env, SECRET};

#[tokio::test]
async fn an_endpoint_is_registered_with_a_secret_shown_once_listed_and_deleted() {
    with_app(|app| async move {
        let body = json!({"url": "http://127.0.0.1:9/hooks", "events": ["order.confirmed", "order.cancelled", "order.confirmed"],
                          "description": "books"});
        let created = app.post("/v1/webhooks", body).await;
        assert_eq!(created.status(), StatusCode::CREATED);
        assert_eq!(created.headers()["cache-control"], "no-store");
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = created.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/v1/webhooks/{id}"));
        assert_eq!(created["events"], json!(["order.cancelled", "order.confirmed"]));
        assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));

        let listed: Value = app.get("/v1/webhooks").await.json().await.unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        assert_eq!(listed["items"][0]["id"], id.as_str());
        assert_eq!(listed["items"][0]["description"], "books");
        assert!(listed["items"][0].get("secret").is_none(), "the secret is shown once: {listed}");

        let deliveries: Value = app.get(&format!("/v1/webhooks/{id}/deliveries")).await.json().await.unwrap();
        assert_eq!(deliveries, json!({"items": []}));
        let bad_limit = app.get(&format!("/v1/webhooks/{id}/deliveries?limit=0")).await;
        problem(bad_limit, StatusCode::BAD_REQUEST).await;

        assert_eq!(app.delete(&format!("/v1/webhooks/{id}")).await.status(), StatusCode::NO_CONTENT);
        problem(app.delete(&format!("/v1/webhooks/{id}")).await, StatusCode::NOT_FOUND).await;
        let listed: Value = app.get("/v1/webhooks").await.json().await.unwrap();
        assert_eq!(listed, json!({"items": []}));
        // A deleted endpoint is gone from the API (its rows stay until NOTIFY_KEEP, for operators).
        problem(app.get(&format!("/v1/webhooks/{id}/deliveries")).await, StatusCode::NOT_FOUND).await;
        let unknown = app.get(&format!("/v1/webhooks/{}/deliveries", Uuid::new_v4())).await;
        problem(unknown, StatusCode::NOT_FOUND).await;
        problem(app.delete("/v1/webhooks/not-a-uuid").await, StatusCode::BAD_REQUEST).await;
    })
    .await;
}

#[tokio::test]
async fn bad_endpoints_are_refused_and_change_nothing() {
    with_app_env(&[("WEBHOOK_ALLOW_PRIVATE", "false")], |app| async move {
        for (body, field) in [
            (json!({"url": "ftp://merchant.example/x", "events": ["order.confirmed"]}), "url"),
            (json!({"url": "http://169.254.169.254/latest/meta-data", "events": ["order.confirmed"]}), "url"),
            (json!({"url": "http://localhost:9104/metrics", "events": ["order.confirmed"]}), "url"),
            (json!({"url": "https://merchant.example/x", "events": []}), "events"),
            (json!({"url": "https://merchant.example/x", "events": ["order.placed"]}), "events"),
            (
                json!({"url": "https://merchant.example/x", "events": ["order.shipped"], "description": "a\nb"}),
                "description",
            ),
        ] {
            let refused = problem(app.post("/v1/webhooks", body.clone()).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(refused["errors"][0]["field"], field, "{body}: {refused}");
        }
        problem(app.post("/v1/webhooks", json!({"url": "https://m.example/x"})).await, StatusCode::BAD_REQUEST).await;
        let text = app.post_raw("/v1/webhooks", "url=x", Some("text/plain")).await;
        problem(text, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM webhook_endpoints").fetch_one(&app.pool).await.unwrap();
        assert_eq!(count, 0);
        // A public one is taken.
        let ok =
            app.post("/v1/webhooks", json!({"url": "https://merchant.example/x", "events": ["order.shipped"]})).await;
        assert_eq!(ok.status(), StatusCode::CREATED);
    })
    .await;
}

#[tokio::test]
async fn webhooks_are_for_administrators_only() {
    with_app_env(&[("AUTH_MODE", "jwt"), ("JWT_SECRET", SECRET)], |app| async move {
        let body = json!({"url": "http://127.0.0.1:9/hooks", "events": ["order.confirmed"]});
        let customer = token(SECRET, "c-1", "orders:write orders:read");
        assert_eq!(app.post_as(None, "/v1/webhooks", body.clone()).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(app.post_as(Some(&customer), "/v1/webhooks", body.clone()).await.status(), StatusCode::FORBIDDEN);
        let list = app.client.get(format!("{}/v1/webhooks", app.base)).bearer_auth(&customer).send().await.unwrap();
        assert_eq!(list.status(), StatusCode::FORBIDDEN);
        let admin = token(SECRET, "ops", "admin");
        assert_eq!(app.post_as(Some(&admin), "/v1/webhooks", body).await.status(), StatusCode::CREATED);
        let list = app.client.get(format!("{}/v1/webhooks", app.base)).bearer_auth(&admin).send().await.unwrap();
        assert_eq!(list.status(), StatusCode::OK);
    })
    .await;
}
