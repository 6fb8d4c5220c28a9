//! Bearer tokens at the command API: who may send which command. (The token
//! checks themselves, alg `none`, HS/RS confusion, issuer, audience, expiry
//! and the rest, are tested beside the verifier in `service-kit`.)

use reqwest::StatusCode;
use serde_json::{json, Value};
use service_kit::auth;
use service_kit::testing::{token, token_expiring};

use crate::helpers::{order_of, with_app_env, SECRET};

fn customer(sub: &str) -> String {
    token(SECRET, sub, "orders:write orders:read")
}

fn admin() -> String {
    token(SECRET, "ops", "admin orders:write inventory:write")
}

#[tokio::test]
async fn commands_need_a_token_with_the_scope_and_act_only_for_its_customer() {
    with_app_env(&[("AUTH_MODE", "jwt"), ("JWT_SECRET", SECRET)], |app| async move {
        let post = |path: &str, token: Option<String>, body: Value| {
            let app = &app;
            let path = path.to_owned();
            async move { app.post_as(token.as_deref(), &path, body).await }
        };

        // No token, an expired one, one signed with another secret: 401.
        let unauthorized = post("/v1/orders", None, order_of("c-1")).await;
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(unauthorized.headers()["www-authenticate"], "Bearer");
        let expired = token_expiring(SECRET, "c-1", "orders:write", auth::now() - 3600);
        assert_eq!(post("/v1/orders", Some(expired), order_of("c-1")).await.status(), StatusCode::UNAUTHORIZED);
        let forged = token("not-the-secret-not-the-secret-xx", "c-1", "orders:write");
        assert_eq!(post("/v1/orders", Some(forged), order_of("c-1")).await.status(), StatusCode::UNAUTHORIZED);

        // A missing scope is 403, before the body is even read.
        let reader = token(SECRET, "c-1", "orders:read");
        assert_eq!(post("/v1/orders", Some(reader), json!("not an order")).await.status(), StatusCode::FORBIDDEN);
        let receipt = json!({"quantity": 5});
        assert_eq!(
            post("/v1/inventory/SKU-1/receipts", Some(customer("c-1")), receipt.clone()).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(post("/v1/inventory/SKU-1/receipts", Some(admin()), receipt).await.status(), StatusCode::ACCEPTED);

        // A customer places and cancels its own orders only.
        assert_eq!(post("/v1/orders", Some(customer("c-1")), order_of("c-2")).await.status(), StatusCode::FORBIDDEN);
        let placed = post("/v1/orders", Some(customer("c-1")), order_of("c-1")).await;
        assert_eq!(placed.status(), StatusCode::ACCEPTED);
        let order_id = placed.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
        let cancel = format!("/v1/orders/{order_id}/cancel");
        let reason = json!({"reason": "not mine"});
        assert_eq!(post(&cancel, Some(customer("c-2")), reason.clone()).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(post(&cancel, Some(customer("c-1")), reason).await.status(), StatusCode::ACCEPTED);

        // Shipping needs orders:fulfil or admin; a customer may not ship, even its own order.
        let ship = format!("/v1/orders/{order_id}/ship");
        assert_eq!(post(&ship, Some(customer("c-1")), json!({})).await.status(), StatusCode::FORBIDDEN);
        let warehouse = token(SECRET, "warehouse-1", "orders:fulfil");
        for shipper in [warehouse, admin()] {
            // Cancelled above: the scope lets it through to the order's state.
            assert_eq!(post(&ship, Some(shipper), json!({})).await.status(), StatusCode::CONFLICT);
        }

        // Health needs no token; metrics are on the ops address only, with no token either.
        for path in ["/health/live", "/health/ready"] {
            assert!(app.get(path).await.status().is_success(), "{path}");
        }
        assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
        for path in ["/health/live", "/health/ready", "/metrics"] {
            let response = app.client.get(format!("{}{path}", app.ops)).send().await.unwrap();
            assert!(response.status().is_success(), "{path}");
        }
        // The orders above were appended on a connection the store keeps out of the pool.
        let metrics = app.client.get(format!("{}/metrics", app.ops)).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("event_store_kept_connections"), "{metrics}");
    })
    .await;
}
