//! Bearer tokens at the command API: who may send which command. (The token
//! checks themselves, alg `none`, HS/RS confusion, issuer, audience, expiry
//! and the rest, are tested beside the verifier in `service-kit`.)

use command_side::{App, Config};
use migrations::testing::with_database;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use service_kit::auth::{self, Algorithm, Claims};
use tokio::sync::oneshot;

const SECRET: &str = "command-auth-test-secret-of-32-bytes+";

fn token(sub: &str, scope: &str, exp: u64) -> String {
    let claims = Claims {
        sub: sub.into(),
        iss: "order-system".into(),
        aud: "order-system".into(),
        exp,
        nbf: None,
        scope: scope.into(),
    };
    auth::mint(Algorithm::HS256, SECRET.as_bytes(), &claims).unwrap()
}

fn customer(sub: &str) -> String {
    token(sub, "orders:write orders:read", auth::now() + 600)
}

fn admin() -> String {
    token("ops", "admin orders:write inventory:write", auth::now() + 600)
}

fn order(customer_id: &str) -> Value {
    json!({"customer_id": customer_id, "currency": "EUR", "payment_token": "tok_visa",
           "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]})
}

#[tokio::test]
async fn commands_need_a_token_with_the_scope_and_act_only_for_its_customer() {
    service_kit::telemetry::init_for_tests();
    with_database(5, |pool| async move {
        let env = [("COMMAND_HTTP_ADDR", "127.0.0.1:0"), ("JWT_SECRET", SECRET)];
        let app =
            App::build_with_pool(Config::from_source(&service_kit::config::Vars(&env)).unwrap(), pool).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        let http = Client::new();
        let post = |path: &str, token: Option<String>, body: Value| {
            let mut request = http.post(format!("{base}{path}")).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move { request.send().await.unwrap() }
        };

        // No token, an expired one, one signed with another secret: 401.
        let unauthorized = post("/v1/orders", None, order("c-1")).await;
        assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(unauthorized.headers()["www-authenticate"], "Bearer");
        let expired = token("c-1", "orders:write", auth::now() - 3600);
        assert_eq!(post("/v1/orders", Some(expired), order("c-1")).await.status(), StatusCode::UNAUTHORIZED);
        let claims = Claims {
            sub: "c-1".into(),
            iss: "order-system".into(),
            aud: "order-system".into(),
            exp: auth::now() + 600,
            nbf: None,
            scope: "orders:write".into(),
        };
        let forged = auth::mint(Algorithm::HS256, b"not-the-secret-not-the-secret-xx", &claims).unwrap();
        assert_eq!(post("/v1/orders", Some(forged), order("c-1")).await.status(), StatusCode::UNAUTHORIZED);

        // A missing scope is 403, before the body is even read.
        let reader = token("c-1", "orders:read", auth::now() + 600);
        assert_eq!(post("/v1/orders", Some(reader), json!("not an order")).await.status(), StatusCode::FORBIDDEN);
        let receipt = json!({"quantity": 5});
        assert_eq!(
            post("/v1/inventory/SKU-1/receipts", Some(customer("c-1")), receipt.clone()).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(post("/v1/inventory/SKU-1/receipts", Some(admin()), receipt).await.status(), StatusCode::ACCEPTED);

        // A customer places and cancels its own orders only.
        assert_eq!(post("/v1/orders", Some(customer("c-1")), order("c-2")).await.status(), StatusCode::FORBIDDEN);
        let placed = post("/v1/orders", Some(customer("c-1")), order("c-1")).await;
        assert_eq!(placed.status(), StatusCode::ACCEPTED);
        let order_id = placed.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
        let cancel = format!("/v1/orders/{order_id}/cancel");
        let reason = json!({"reason": "not mine"});
        assert_eq!(post(&cancel, Some(customer("c-2")), reason.clone()).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(post(&cancel, Some(customer("c-1")), reason).await.status(), StatusCode::ACCEPTED);

        // Health and metrics need no token.
        for path in ["/health/live", "/health/ready", "/metrics"] {
            assert!(http.get(format!("{base}{path}")).send().await.unwrap().status().is_success(), "{path}");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await;
}
