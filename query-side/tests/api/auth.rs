//! Bearer tokens at the query API: a customer reads its own orders and
//! payments only, the admin routes need `admin`, and nothing answers without
//! a valid token (but health and metrics).

use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{with_app_env, SECRET};

fn token(sub: &str, scope: &str) -> String {
    service_kit::testing::token(SECRET, sub, scope)
}

const JWT: [(&str, &str); 2] = [("AUTH_MODE", "jwt"), ("JWT_SECRET", SECRET)];

async fn insert_order(pool: &sqlx::PgPool, customer_id: &str) -> Uuid {
    let order_id = Uuid::new_v4();
    insert_order_row(pool, order_id, customer_id).await;
    insert_payment_row(pool, order_id).await;
    order_id
}

async fn insert_order_row(pool: &sqlx::PgPool, order_id: Uuid, customer_id: &str) {
    sqlx::query(
        "INSERT INTO rm_orders (order_id, customer_id, status, payment_status, currency, total_cents, lines, \
                                version, created_at, updated_at) \
         VALUES ($1, $2, 'confirmed', 'captured', 'EUR', 100, '[]', 5, now(), now())",
    )
    .bind(order_id)
    .bind(customer_id)
    .execute(pool)
    .await
    .unwrap();
}

async fn insert_payment_row(pool: &sqlx::PgPool, order_id: Uuid) {
    sqlx::query(
        "INSERT INTO rm_payments (order_id, status, amount_cents, currency, provider_ref, version, updated_at) \
         VALUES ($1, 'captured', 100, 'EUR', 'ch_1', 2, now())",
    )
    .bind(order_id)
    .execute(pool)
    .await
    .unwrap();
}

/// Where a projection's checkpoint stands, as the projector would leave it.
async fn checkpoint(pool: &sqlx::PgPool, name: &str, position: i64) {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, commit_id, position) VALUES ($1, 1, $2) \
         ON CONFLICT (name) DO UPDATE SET commit_id = 1, position = $2",
    )
    .bind(name)
    .bind(position)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('projection_progress', $1)").bind(name).execute(pool).await.unwrap();
}

/// The payments read model shows the payment before the orders read model
/// shows its order: the owner still reads it (the answer waits for the
/// orders read model to catch up), and another customer still may not.
#[tokio::test]
async fn an_owner_reads_its_payment_while_the_orders_read_model_lags() {
    with_app_env(&[JWT[0], JWT[1], ("MIN_POSITION_WAIT", "5s")], |app| async move {
        let pool = app.pool.clone();
        let order_id = Uuid::new_v4();
        insert_payment_row(&pool, order_id).await;
        checkpoint(&pool, "payments", 10).await;
        checkpoint(&pool, "orders", 5).await;
        let app = std::sync::Arc::new(app);
        let read = |customer: &str| {
            let (app, token) = (app.clone(), token(customer, "orders:read"));
            async move { app.get_as(Some(&token), &format!("/v1/payments/{order_id}")).await.status() }
        };
        let owner = tokio::spawn(read("c-1"));
        let other = tokio::spawn(read("c-2"));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!owner.is_finished(), "answered before the orders read model caught up");
        insert_order_row(&pool, order_id, "c-1").await;
        checkpoint(&pool, "orders", 10).await;
        assert_eq!(owner.await.unwrap(), StatusCode::OK);
        assert_eq!(other.await.unwrap(), StatusCode::FORBIDDEN);
    })
    .await;
}

#[tokio::test]
async fn a_customer_reads_only_its_own_orders_and_never_the_admin_routes() {
    with_app_env(&JWT, |app| async move {
        let mine = insert_order(&app.pool, "c-1").await;
        let theirs = insert_order(&app.pool, "c-2").await;
        let get = |path: String, token: Option<String>| {
            let app = &app;
            async move { app.get_as(token.as_deref(), &path).await }
        };
        let customer = Some(token("c-1", "orders:read"));

        assert_eq!(get(format!("/v1/orders/{mine}"), None).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(get(format!("/v1/orders/{mine}"), customer.clone()).await.status(), StatusCode::OK);
        assert_eq!(get(format!("/v1/orders/{theirs}"), customer.clone()).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(get(format!("/v1/payments/{mine}"), customer.clone()).await.status(), StatusCode::OK);
        assert_eq!(get(format!("/v1/payments/{theirs}"), customer.clone()).await.status(), StatusCode::FORBIDDEN);
        // The list holds the customer's own orders; asking for another's is refused.
        let page: Value = get("/v1/orders".into(), customer.clone()).await.json().await.unwrap();
        let ids: Vec<&str> =
            page["items"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap()).collect();
        assert_eq!(ids, [mine.to_string()]);
        assert_eq!(get("/v1/orders?customer_id=c-2".into(), customer.clone()).await.status(), StatusCode::FORBIDDEN);
        // Scopes: no inventory:read, no admin.
        assert_eq!(get("/v1/inventory/SKU-1".into(), customer.clone()).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(get("/v1/admin/projections".into(), customer).await.status(), StatusCode::FORBIDDEN);
        let admin = Some(token("ops", "admin orders:read"));
        assert_eq!(get("/v1/admin/projections".into(), admin.clone()).await.status(), StatusCode::OK);
        assert_eq!(get(format!("/v1/orders/{theirs}"), admin).await.status(), StatusCode::OK);
        for path in ["/health/live", "/health/ready"] {
            assert!(get(path.into(), None).await.status().is_success(), "{path}");
        }
        assert_eq!(get("/metrics".into(), None).await.status(), StatusCode::NOT_FOUND);
        for path in ["/health/live", "/health/ready", "/metrics"] {
            let response = app.client.get(format!("{}{path}", app.ops)).send().await.unwrap();
            assert!(response.status().is_success(), "{path}");
        }
    })
    .await;
}

/// Another customer's order or payment asked with a position the read
/// models may never reach is refused at once, not after the wait.
#[tokio::test]
async fn another_customers_order_is_refused_before_any_wait_for_a_position() {
    with_app_env(&[JWT[0], JWT[1], ("MIN_POSITION_WAIT", "5s")], |app| async move {
        let order_id = insert_order(&app.pool, "c-1").await;
        let stranger = token("c-2", "orders:read");
        for path in [format!("/v1/orders/{order_id}"), format!("/v1/payments/{order_id}")] {
            let started = std::time::Instant::now();
            let response = app.get_as(Some(&stranger), &format!("{path}?min_position=999999999")).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "{path}: {:?}", started.elapsed());
        }
    })
    .await;
}

/// Queries waiting for a position are bounded: per client (429) and in all
/// (503), both with `Retry-After` and at once, never after a wait; a client
/// whose waits ended may wait again.
#[tokio::test]
async fn waits_for_a_position_are_bounded_per_client_and_in_all() {
    let limits = [("MIN_POSITION_WAITERS", "3"), ("MIN_POSITION_WAITERS_PER_CLIENT", "2"), ("MIN_POSITION_WAIT", "3s")];
    with_app_env(&[JWT[0], JWT[1], limits[0], limits[1], limits[2]], |app| async move {
        let app = std::sync::Arc::new(app);
        let unreachable = "/v1/inventory/SKU-1?min_position=999999999";
        let wait = |client: &str| {
            let (app, token) = (app.clone(), token(client, "inventory:read"));
            tokio::spawn(async move { app.get_as(Some(&token), unreachable).await.status() })
        };
        let waiting = [wait("a"), wait("a"), wait("b")];
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;

        let refused_at_once = |client: &'static str, expected: StatusCode| {
            let (app, token) = (app.clone(), token(client, "inventory:read"));
            async move {
                let started = std::time::Instant::now();
                let response = app.get_as(Some(&token), unreachable).await;
                assert_eq!(response.status(), expected, "{client}");
                assert_eq!(response.headers()["retry-after"], "1");
                assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
                response.json::<Value>().await.unwrap()["detail"].as_str().unwrap().to_owned()
            }
        };
        let detail = refused_at_once("a", StatusCode::TOO_MANY_REQUESTS).await;
        assert!(detail.contains("already waits for 2 positions"), "{detail}");
        let detail = refused_at_once("c", StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(detail.contains("3 queries wait"), "{detail}");
        // Without min_position nothing waits, and nothing is refused.
        let plain = app.get_as(Some(&token("c", "inventory:read")), "/v1/inventory/SKU-1").await;
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);

        for waited in waiting {
            assert_eq!(waited.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE, "the position is never reached");
        }
        let started = std::time::Instant::now();
        assert_eq!(wait("a").await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() >= std::time::Duration::from_secs(2), "admitted again, it waited");
    })
    .await;
}
