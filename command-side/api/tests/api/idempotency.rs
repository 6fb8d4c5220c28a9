//! `Idempotency-Key`: a retry answers as the first time and changes nothing.

use std::time::Duration;

use application::idempotency::{self, Key, NextAction, Saved};
use application::EventIds;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::helpers::{order, problem, with_app, with_app_env};

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
        let again = app.post_with("/v1/inventory/SKU-1/receipts", bad, &key).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let again = problem(again, StatusCode::UNPROCESSABLE_ENTITY).await;
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
    let forgotten = idempotency::forget_expired(pool, Duration::from_secs(24 * 3600)).await.unwrap();
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
    let fingerprint = idempotency::fingerprint("POST", path, serde_json::to_string(body).unwrap().as_bytes());
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
    with_app_env(&[("HTTP_REQUEST_TIMEOUT", "2s")], |app| async move {
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
    migrations::testing::with_database(2, |pool| async move {
        let wait = Duration::from_secs(1);
        let key = Key { key: "k".into(), fingerprint: b"request".to_vec() };
        let claim = |wait| {
            let (pool, key) = (pool.clone(), key.clone());
            async move { idempotency::try_processing::<Value>(&pool, "p", &key, wait).await }
        };
        let Ok(NextAction::StartProcessing(first)) = claim(wait).await else { panic!("the first claims") };
        assert!(matches!(first.ids, EventIds::DerivedAt(..)), "a key claimed now derives ids in time order");
        // The first request outlives its lease; a retry takes the key over.
        sqlx::query("UPDATE http_idempotency_keys SET lease_until = now() - interval '1 second'")
            .execute(&pool)
            .await
            .unwrap();
        let Ok(NextAction::StartProcessing(second)) = claim(wait).await else { panic!("a retry takes over") };
        assert_eq!(second.ids, first.ids, "a takeover derives the same ids");

        let answer = |n: u64| Saved::Accepted(json!({ "n": n }));
        assert!(!idempotency::release(&pool, "p", &key, &first).await.unwrap(), "the first may not give it back");
        assert!(!idempotency::save(&pool, "p", &key, &first, &answer(1)).await.unwrap(), "nor save its outcome");
        assert!(matches!(claim(Duration::ZERO).await, Err(idempotency::KeyError::Busy)));
        assert!(idempotency::save(&pool, "p", &key, &second, &answer(2)).await.unwrap());
        match claim(wait).await {
            Ok(NextAction::ReturnSaved(saved)) => assert_eq!(saved, answer(2)),
            other => panic!("expected the holder's outcome, got {other:?}"),
        }
    })
    .await;
}

/// A key claimed before its generation was drawn in time order (a v4), its
/// first request dead: the retry derives the ids the first one did (v5), so
/// whatever the first one appended is recognised.
#[tokio::test]
async fn a_key_claimed_before_ids_in_time_order_derives_them_as_before() {
    migrations::testing::with_database(2, |pool| async move {
        let key = Key { key: "k".into(), fingerprint: b"request".to_vec() };
        sqlx::query(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, lease_until, generation) \
             VALUES ('p', 'k', $1, now() - interval '1 second', gen_random_uuid())",
        )
        .bind(&key.fingerprint)
        .execute(&pool)
        .await
        .unwrap();
        let taken = idempotency::try_processing::<Value>(&pool, "p", &key, Duration::from_secs(1)).await;
        let Ok(NextAction::StartProcessing(taken)) = taken else { panic!("the retry takes the key over") };
        assert!(matches!(taken.ids, EventIds::Derived(_)), "{:?}", taken.ids);
    })
    .await;
}

#[tokio::test]
async fn a_contended_request_is_not_remembered_under_its_idempotency_key() {
    with_app_env(&[("COMMAND_MAX_ATTEMPTS", "1")], |app| async move {
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

/// A transaction of the events' database holds the log's read horizon back
/// while it runs (ADR 0013): the janitor forgets any number of expired keys
/// in transactions of at most `FORGET_BATCH` keys each, and keeps the rest.
#[tokio::test]
async fn the_janitor_forgets_many_keys_in_short_transactions() {
    with_app(|app| async move {
        let pool = &app.pool;
        let expired = 2 * idempotency::FORGET_BATCH + 500;
        sqlx::query(
            "INSERT INTO http_idempotency_keys (principal, key, fingerprint, requested_at, lease_until) \
             SELECT 'sub:c-1', 'k-' || n, '\\x00', now() - interval '2 days', now() - interval '2 days' \
             FROM generate_series(1, $1) AS n",
        )
        .bind(expired)
        .execute(pool)
        .await
        .unwrap();
        assert_eq!(app.post_with("/v1/orders", order(), &[("idempotency-key", "fresh")]).await.status(), 202);
        // Every DELETE statement notes its transaction and how many keys it removed.
        sqlx::raw_sql(
            "CREATE TABLE forgotten (xid xid8, keys bigint); \
             CREATE FUNCTION note_forgotten() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 INSERT INTO forgotten SELECT pg_current_xact_id(), count(*) FROM gone; RETURN NULL; END $$; \
             CREATE TRIGGER note_forgotten AFTER DELETE ON http_idempotency_keys \
                 REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION note_forgotten();",
        )
        .execute(pool)
        .await
        .unwrap();

        let forgotten = idempotency::forget_expired(pool, Duration::from_secs(24 * 3600)).await.unwrap();
        assert_eq!(forgotten, expired as u64);
        let per_transaction: Vec<i64> =
            sqlx::query_scalar("SELECT sum(keys)::bigint FROM forgotten GROUP BY xid::text ORDER BY 1 DESC")
                .fetch_all(pool)
                .await
                .unwrap();
        assert!(per_transaction.len() >= 3, "{per_transaction:?}");
        assert!(per_transaction.iter().all(|keys| *keys <= idempotency::FORGET_BATCH), "{per_transaction:?}");
        let left: Vec<String> =
            sqlx::query_scalar("SELECT key FROM http_idempotency_keys").fetch_all(pool).await.unwrap();
        assert_eq!(left, ["fresh"], "the key in use is kept");
    })
    .await;
}
