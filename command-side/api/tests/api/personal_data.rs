//! Personal data (ADR 0014): an order's contact address is checked, stored
//! only sealed under its customer's key, and erased by destroying the key.

use reqwest::StatusCode;
use serde_json::{json, Value};
use service_kit::personal_data::{MasterKeys, Opened, Vault};
use uuid::Uuid;

use crate::helpers::{order_of, problem, with_app};

fn with_contact(customer_id: &str, email: &str) -> Value {
    let mut order = order_of(customer_id);
    order["contact_email"] = json!(email);
    order
}

/// The sealed contact of the order `order_id`, as its event carries it.
async fn sealed_contact(pool: &sqlx::PgPool, order_id: &str) -> (Uuid, String) {
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM es_events WHERE stream_id = $1 AND stream_version = 1")
            .bind(format!("order-{order_id}"))
            .fetch_one(pool)
            .await
            .unwrap();
    let contact = &payload["contact_email"];
    (contact["key_id"].as_str().unwrap().parse().unwrap(), contact["sealed"].as_str().unwrap().to_owned())
}

async fn place(app: &crate::helpers::TestApp, body: Value) -> String {
    let response = app.post("/v1/orders", body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_contact_address_is_stored_sealed_and_erasing_the_customer_destroys_it() {
    with_app(|app| async move {
        let ada = place(&app, with_contact("c-ada", "ada@example.com")).await;
        let ada_again = place(&app, with_contact("c-ada", "ada.l@example.org")).await;
        let bob = place(&app, with_contact("c-bob", "bob@example.com")).await;
        let anonymous = place(&app, order_of("c-anon")).await;

        // Nowhere in clear: not in the events, not in any table.
        let clear: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM es_events WHERE payload::text LIKE '%example.%') \
                  + (SELECT count(*) FROM http_idempotency_keys WHERE outcome::text LIKE '%example.%')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(clear, 0);
        let no_contact: Value = sqlx::query_scalar("SELECT payload FROM es_events WHERE stream_id = $1")
            .bind(format!("order-{anonymous}"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert!(no_contact.get("contact_email").is_none(), "{no_contact}");

        // One key per customer; each address opens with it.
        let vault = Vault::new(app.pool.clone(), MasterKeys::development());
        let (ada_key, ada_sealed) = sealed_contact(&app.pool, &ada).await;
        let (ada_key_again, ada_sealed_again) = sealed_contact(&app.pool, &ada_again).await;
        let (bob_key, bob_sealed) = sealed_contact(&app.pool, &bob).await;
        assert_eq!(ada_key, ada_key_again);
        assert_ne!(ada_key, bob_key);
        assert_eq!(vault.open(ada_key, &ada_sealed).await.unwrap(), Opened::Clear("ada@example.com".into()));
        assert_eq!(vault.open(bob_key, &bob_sealed).await.unwrap(), Opened::Clear("bob@example.com".into()));

        // Erased: every address of hers is gone, his is intact; asking again is harmless.
        let erased = app.delete("/v1/customers/c-ada/personal-data").await;
        assert_eq!(erased.status(), StatusCode::ACCEPTED);
        assert_eq!(erased.json::<Value>().await.unwrap(), json!({"customer_id": "c-ada", "keys_destroyed": 1}));
        assert_eq!(vault.open(ada_key, &ada_sealed).await.unwrap(), Opened::Erased);
        assert_eq!(vault.open(ada_key, &ada_sealed_again).await.unwrap(), Opened::Erased);
        assert_eq!(vault.open(bob_key, &bob_sealed).await.unwrap(), Opened::Clear("bob@example.com".into()));
        let again = app.delete("/v1/customers/c-ada/personal-data").await;
        assert_eq!(again.json::<Value>().await.unwrap()["keys_destroyed"], 0);
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped_key FROM personal_data_keys WHERE key_id = $1")
                .bind(ada_key)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(wrapped, None, "the key itself is gone");

        // A new order with a new address after the erasure is new data, under a new key.
        let later = place(&app, with_contact("c-ada", "ada@new.example")).await;
        let (new_key, new_sealed) = sealed_contact(&app.pool, &later).await;
        assert_ne!(new_key, ada_key);
        assert_eq!(vault.open(new_key, &new_sealed).await.unwrap(), Opened::Clear("ada@new.example".into()));
    })
    .await;
}

#[tokio::test]
async fn a_bad_contact_address_is_refused_with_every_other_problem_and_leaves_no_key() {
    with_app(|app| async move {
        let mut bad = with_contact("c-ada", "not an address");
        bad["currency"] = json!("euro");
        let body = problem(app.post("/v1/orders", bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let fields: Vec<&str> =
            body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&"contact_email") && fields.contains(&"currency"), "{body}");
        // A good address on an order that breaks another rule makes no key either.
        let mut bad = with_contact("c-ada", "ada@example.com");
        bad["lines"] = json!([]);
        problem(app.post("/v1/orders", bad).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let keys: i64 =
            sqlx::query_scalar("SELECT count(*) FROM personal_data_keys").fetch_one(&app.pool).await.unwrap();
        assert_eq!((keys, app.event_count().await), (0, 0));

        let nobody = problem(app.delete("/v1/customers/%20%0A/personal-data").await, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(nobody.await["errors"][0]["field"], "customer_id");
    })
    .await;
}

/// A rotation: with the new master key current and the old one previous,
/// everything opens; after `reseal_all` the new key alone opens it all.
#[tokio::test]
async fn a_rotated_master_key_keeps_every_address_readable() {
    with_app(|app| async move {
        use service_kit::personal_data::{MasterKey, VaultError};
        let order_id = place(&app, with_contact("c-ada", "ada@example.com")).await;
        let (key_id, sealed) = sealed_contact(&app.pool, &order_id).await;
        let (old, new) = (MasterKey::development(), MasterKey::new([9; 32]));
        let rotated = Vault::new(app.pool.clone(), MasterKeys { current: new.clone(), previous: vec![old.clone()] });
        assert_eq!(rotated.open(key_id, &sealed).await.unwrap(), Opened::Clear("ada@example.com".into()));
        assert_eq!(rotated.reseal_all(10).await.unwrap(), 1);
        assert_eq!(rotated.reseal_all(10).await.unwrap(), 0, "done");
        let new_only = Vault::new(app.pool.clone(), MasterKeys { current: new, previous: vec![] });
        assert_eq!(new_only.open(key_id, &sealed).await.unwrap(), Opened::Clear("ada@example.com".into()));
        let old_only = Vault::new(app.pool.clone(), MasterKeys { current: old, previous: vec![] });
        assert!(matches!(old_only.open(key_id, &sealed).await, Err(VaultError::WrongMasterKey(_))));
    })
    .await;
}
