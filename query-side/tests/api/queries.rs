//! The query API over real HTTP, reading read models that the real
//! projections build from events in a fresh database.

use std::time::{Duration, Instant};

use domain::inventory::InventoryEvent;
use domain::payment::PaymentEvent;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use projections::testing::placed;

use crate::helpers::{problem, with_app, with_app_env, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_inventory_item_and_payment_read_as_the_api_says() {
    with_app(|app| async move {
        let order_id = Uuid::new_v4();
        app.append("inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 50 }]).await;
        app.append(&format!("order-{order_id}"), &[placed(order_id, "c-42", 0)]).await;
        app.append("inventory-SKU-1", &[InventoryEvent::StockReserved { sku: "SKU-1".into(), order_id, quantity: 2 }])
            .await;
        let last = app
            .append(
                &format!("payment-{order_id}"),
                &[PaymentEvent::PaymentRequested {
                    order_id,
                    amount_cents: 3998,
                    currency: "EUR".into(),
                    payment_token: "tok_visa".into(),
                }],
            )
            .await;
        let _projecting = app.project();

        let order = app.json(&format!("/v1/orders/{order_id}?min_position={last}")).await;
        assert_eq!(order["order_id"], json!(order_id));
        assert_eq!(order["customer_id"], "c-42");
        assert_eq!(order["status"], "pending");
        assert_eq!(order["payment_status"], "pending");
        assert_eq!(order["reason"], Value::Null);
        assert_eq!(order["currency"], "EUR");
        assert_eq!(order["total_cents"], 3998);
        assert_eq!(order["lines"], json!([{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]));
        assert_eq!(order["version"], 1);
        assert!(order["created_at"].is_string() && order["updated_at"].is_string());

        let item = app.json(&format!("/v1/inventory/SKU-1?min_position={last}")).await;
        assert_eq!(item, json!({"sku": "SKU-1", "on_hand": 50, "reserved": 2, "available": 48, "version": 2}));
        let payment = app.json(&format!("/v1/payments/{order_id}?min_position={last}")).await;
        assert_eq!(
            payment,
            json!({"order_id": order_id, "status": "pending", "amount_cents": 3998, "currency": "EUR", "provider_ref": null})
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_and_bad_parameters_400() {
    with_app(|app| async move {
        problem(app.get(&format!("/v1/orders/{}", Uuid::new_v4())).await, StatusCode::NOT_FOUND).await;
        problem(app.get("/v1/inventory/NOPE").await, StatusCode::NOT_FOUND).await;
        problem(app.get(&format!("/v1/payments/{}", Uuid::new_v4())).await, StatusCode::NOT_FOUND).await;
        for bad in [
            "/v1/orders/not-a-uuid",
            "/v1/payments/123",
            "/v1/orders?limit=0",
            "/v1/orders?limit=201",
            "/v1/orders?limit=ten",
            "/v1/orders?status=returned",
            "/v1/orders?cursor=zz",
            "/v1/orders?cursor=",
            "/v1/orders?colour=red",
            "/v1/inventory/SKU-1?min_position=soon",
            "/v1/inventory/SKU-1?min_position=-1",
        ] {
            let response = app.get(bad).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(response.headers()["content-type"], "application/problem+json", "{bad}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_list_filters_and_pages_newest_first_stably_under_inserts() {
    with_app(|app| async move {
        let mut mine = Vec::new();
        for minute in 0..5 {
            let id = Uuid::new_v4();
            app.append(&format!("order-{id}"), &[placed(id, "c-1", minute)]).await;
            mine.push(id);
        }
        let mut last = 0;
        for minute in 0..3 {
            let id = Uuid::new_v4();
            last = app.append(&format!("order-{id}"), &[placed(id, "c-2", minute)]).await;
        }
        let _projecting = app.project();
        app.json(&format!("/v1/orders/{}?min_position={last}", mine[0])).await;

        let first = app.json("/v1/orders?customer_id=c-1&limit=2").await;
        let ids = |page: &Value| -> Vec<Uuid> {
            page["items"].as_array().unwrap().iter().map(|o| o["order_id"].as_str().unwrap().parse().unwrap()).collect()
        };
        assert_eq!(ids(&first), [mine[4], mine[3]]);
        let cursor = first["next_cursor"].as_str().unwrap().to_owned();

        // A new order between two pages shows up on no later page.
        let newer = Uuid::new_v4();
        let position = app.append(&format!("order-{newer}"), &[placed(newer, "c-1", 30)]).await;
        app.json(&format!("/v1/orders/{newer}?min_position={position}")).await;

        let second = app.json(&format!("/v1/orders?customer_id=c-1&limit=2&cursor={cursor}")).await;
        assert_eq!(ids(&second), [mine[2], mine[1]]);
        let cursor = second["next_cursor"].as_str().unwrap().to_owned();
        let third = app.json(&format!("/v1/orders?customer_id=c-1&limit=2&cursor={cursor}")).await;
        assert_eq!(ids(&third), [mine[0]]);
        assert_eq!(third["next_cursor"], Value::Null);

        let everyone = app.json("/v1/orders").await;
        assert_eq!(everyone["items"].as_array().unwrap().len(), 9);
        let pending = app.json("/v1/orders?status=pending&customer_id=c-2").await;
        assert_eq!(pending["items"].as_array().unwrap().len(), 3);
        let none = app.json("/v1/orders?status=confirmed").await;
        assert_eq!(none, json!({"items": [], "next_cursor": null}));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_waits_for_the_read_model_then_answers_503_with_retry_after() {
    with_app(|app| async move {
        let position =
            app.append("inventory-SKU-5", &[InventoryEvent::StockReceived { sku: "SKU-5".into(), quantity: 5 }]).await;
        // No projection runs yet: the wait is bounded (2 s), then 503.
        let started = Instant::now();
        let response = app.get(&format!("/v1/inventory/SKU-5?min_position={position}")).await;
        assert_eq!(response.headers()["retry-after"], "1");
        problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(4));

        // With the projections running, the same query waits and answers.
        let _projecting = app.project();
        let item = app.json(&format!("/v1/inventory/SKU-5?min_position={position}")).await;
        assert_eq!(item["on_hand"], 5);

        // A write followed at once by a read of it: the read sees the write.
        for quantity in 1..=5u64 {
            let position =
                app.append("inventory-SKU-5", &[InventoryEvent::StockReceived { sku: "SKU-5".into(), quantity }]).await;
            let item = app.json(&format!("/v1/inventory/SKU-5?min_position={position}")).await;
            assert_eq!(item["version"], quantity + 1);
        }
    })
    .await;
}

/// A query whose position is applied already needs no wait, so it never
/// counts against the waiters' bounds: with a client's one place taken by a
/// wait that cannot end, its reads of applied positions are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_applied_already_is_answered_without_taking_a_waiters_place() {
    let limits = [("MIN_POSITION_WAITERS_PER_CLIENT", "1"), ("MIN_POSITION_WAITERS", "1"), ("MIN_POSITION_WAIT", "3s")];
    with_app_env(&limits, |app| async move {
        let position =
            app.append("inventory-SKU-5", &[InventoryEvent::StockReceived { sku: "SKU-5".into(), quantity: 5 }]).await;
        let _projecting = app.project();
        app.json(&format!("/v1/inventory/SKU-5?min_position={position}")).await;

        let app = std::sync::Arc::new(app);
        let stuck = {
            let app = app.clone();
            tokio::spawn(async move { app.get("/v1/inventory/SKU-5?min_position=999999999999").await.status() })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..5 {
            let item = app.json(&format!("/v1/inventory/SKU-5?min_position={position}")).await;
            assert_eq!(item["on_hand"], 5);
        }
        let refused = app.get("/v1/inventory/SKU-5?min_position=999999999998").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "a second wait of the same client");
        assert_eq!(stuck.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_each_projections_checkpoint_head_lag_and_state() {
    with_app(|app| async move {
        let mut last = 0;
        for quantity in 1..=3u64 {
            last =
                app.append("inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity }]).await;
        }
        let projecting = app.project();
        let mut caught_up = false;
        for _ in 0..200 {
            let admin = app.json("/v1/admin/projections").await;
            let projections = admin["projections"].as_array().unwrap();
            if projections.len() == 4
                && projections.iter().all(|p| p["checkpoint"] == last && p["lag"] == 0 && p["lag_seconds"] == 0.0)
            {
                caught_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(caught_up, "the projections did not catch up");
        projecting.fire();
        // Stopped: new events show up as lag.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let newest =
            app.append("inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 9 }]).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let admin = app.json("/v1/admin/projections").await;
        let projections = admin["projections"].as_array().unwrap();
        let names: Vec<&str> = projections.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["inventory", "orders", "payments", "story"]);
        for projection in projections {
            assert_eq!(projection["checkpoint"], last, "{projection}");
            assert_eq!(projection["head"], newest, "{projection}");
            assert_eq!(projection["lag"], 1, "{projection}");
            assert!(
                projection["lag_seconds"].as_f64().unwrap() >= 1.0,
                "the event waits since its commit: {projection}"
            );
            assert_eq!(projection["held_back_events"], 0, "{projection}");
            assert_eq!(projection["state"], "running");
            assert_eq!(projection["failure"], Value::Null);
        }

        // A session that writes and sits idle in its transaction holds the
        // log back: events committed after it count as lag, not as nothing.
        use sqlx::Connection;
        let mut idle = sqlx::PgConnection::connect_with(&app.pool.connect_options()).await.unwrap();
        for statement in ["BEGIN", "CREATE TEMP TABLE scratch (n int)", "SELECT pg_current_xact_id()"] {
            sqlx::query(statement).execute(&mut idle).await.unwrap();
        }
        app.append("inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 1 }]).await;
        let admin = app.json("/v1/admin/projections").await;
        for projection in admin["projections"].as_array().unwrap() {
            assert_eq!(projection["head"], newest, "the held-back event is not readable: {projection}");
            assert_eq!((&projection["lag"], &projection["held_back_events"]), (&json!(2), &json!(1)), "{projection}");
        }
        sqlx::query("ROLLBACK").execute(&mut idle).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_asked_for_on_the_admin_api_runs_in_the_projections_service_and_reports_progress() {
    with_app(|app| async move {
        use projections::testing::{event_count, shop_history, snapshot, write};
        let history = shop_history(300, 11);
        let events = event_count(&history) as u64;
        write(std::sync::Arc::new(app.store.clone()), history, 4).await;
        let projecting = app.project();
        let orders_caught_up = |admin: &Value| {
            admin["projections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "orders" && p["events_processed"] == events)
        };
        admin_until(&app, "the orders projection catches up", orders_caught_up).await;
        let built_live = snapshot(&app.pool, "rm_orders", "order_id").await;

        let unknown = app.client.post(format!("{}/v1/admin/projections/nope/rebuild", app.base)).send().await.unwrap();
        problem(unknown, StatusCode::NOT_FOUND).await;
        let accepted =
            app.client.post(format!("{}/v1/admin/projections/orders/rebuild", app.base)).send().await.unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        assert_eq!(accepted.headers()["location"], "/v1/admin/projections");
        let body: Value = accepted.json().await.unwrap();
        assert!(body["state"] == "requested" || body["state"] == "running", "{body}");

        let rebuilt = |admin: &Value| {
            admin["projections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "orders" && p["rebuild"]["state"] == "done")
        };
        let admin = admin_until(&app, "the rebuild is done", rebuilt).await;
        let orders = admin["projections"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap().clone();
        let rebuild = &orders["rebuild"];
        assert_eq!(rebuild["events_done"], events, "{rebuild}");
        assert_eq!(rebuild["events_total"], events, "{rebuild}");
        assert!(rebuild["events_per_second"].as_f64().unwrap() > 0.0, "{rebuild}");
        assert_eq!(rebuild["error"], Value::Null);
        assert_eq!((orders["state"].as_str(), orders["lag"].as_i64()), (Some("running"), Some(0)));
        assert_eq!(snapshot(&app.pool, "rm_orders", "order_id").await, built_live);
        let others = admin["projections"].as_array().unwrap().iter().filter(|p| p["name"] != "orders");
        assert!(others.into_iter().all(|p| p["rebuild"].is_null()));

        // Asked for again, it starts from nothing: no progress, times or
        // error of the last run show, and it counts the log once more.
        let again = app.client.post(format!("{}/v1/admin/projections/orders/rebuild", app.base)).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["finished_at"], Value::Null, "{body}");
        if body["state"] == "requested" {
            assert_eq!((body["events_done"].as_u64(), body["started_at"].as_str()), (Some(0), None), "{body}");
        }
        let rebuilt_again = |admin: &Value| {
            admin["projections"].as_array().unwrap().iter().any(|p| {
                p["name"] == "orders"
                    && p["rebuild"]["state"] == "done"
                    && p["rebuild"]["requested_at"] == body["requested_at"]
            })
        };
        let admin = admin_until(&app, "the second rebuild is done", rebuilt_again).await;
        let orders = admin["projections"].as_array().unwrap().iter().find(|p| p["name"] == "orders").unwrap().clone();
        assert_eq!(orders["rebuild"]["events_done"], events, "{orders}");
        projecting.fire();
    })
    .await;
}

/// Polls the admin API until `done` holds of it (20 s at most); returns it.
async fn admin_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let admin = app.json("/v1/admin/projections").await;
        if done(&admin) {
            return admin;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 20 s");
}

/// A projection that stopped on an event it cannot read shows on the
/// metrics, beside every projection's checkpoint, head and lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_report_each_projections_lag_and_a_failed_projection() {
    with_app(|app| async move {
        let order_id = Uuid::new_v4();
        app.append(&format!("order-{order_id}"), &[placed(order_id, "c-1", 0)]).await;
        let broken = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            payload: json!({"order_id": "not a uuid"}),
            metadata: Metadata::default(),
        };
        app.store.append(&format!("order-{}", Uuid::new_v4()), ExpectedVersion::NoStream, vec![broken]).await.unwrap();
        let head =
            app.append("inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 1 }]).await;
        let projecting = app.project();
        let failed = |admin: &Value| {
            admin["projections"].as_array().unwrap().iter().any(|p| p["name"] == "orders" && p["state"] == "failed")
        };
        admin_until(&app, "the orders projection stops", failed).await;
        let inventory_done = |admin: &Value| {
            admin["projections"].as_array().unwrap().iter().any(|p| p["name"] == "inventory" && p["lag"] == 0)
        };
        admin_until(&app, "the inventory projection catches up", inventory_done).await;

        // Computed in the background (every 5 s), rendered by the ops address.
        let expected = [
            "projection_failed{projection=\"orders\"} 1".to_owned(),
            "projection_failed{projection=\"inventory\"} 0".to_owned(),
            "projection_lag_events{projection=\"orders\"} 2".to_owned(),
            "projection_lag_events{projection=\"inventory\"} 0".to_owned(),
            format!("projection_head_position{{projection=\"orders\"}} {head}"),
            format!("projection_checkpoint_position{{projection=\"inventory\"}} {head}"),
        ];
        let scrape = || async {
            let response = app.client.get(format!("{}/metrics", app.ops)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
            response.text().await.unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = scrape().await;
            let missing: Vec<&String> = expected.iter().filter(|line| !text.lines().any(|l| l == *line)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{missing:?} are not in\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND, "not on the public address");
        projecting.fire();
    })
    .await;
}

/// The order list keeps to its indexes under generic plans (what a prepared
/// statement gets after five runs): each combination of filters, on a table
/// of 20,000 orders of 200 customers, reads through an index, never the
/// whole table, and a customer's page through the customer's index.
#[tokio::test]
async fn every_order_list_filter_reads_through_an_index_under_a_generic_plan() {
    use read_models::orders::{page_sql, Filter};
    with_app(|app| async move {
        sqlx::raw_sql(
            "INSERT INTO rm_orders (order_id, customer_id, status, payment_status, currency, total_cents, lines, \
                                    version, created_at, updated_at) \
             SELECT gen_random_uuid(), 'c-' || (g % 200), (ARRAY['pending', 'confirmed', 'shipped', 'cancelled'])[g % 4 + 1], \
                    'none', 'EUR', 100, '[]', 1, now() - g * interval '1 second', now() \
             FROM generate_series(1, 20000) g; \
             ANALYZE rm_orders;",
        )
        .execute(&app.pool)
        .await
        .unwrap();
        let mut conn = app.pool.acquire().await.unwrap();
        sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.unwrap();
        let after = Some((chrono::Utc::now(), uuid::Uuid::nil()));
        for (i, (customer, status, after)) in [
            (None, None, None),
            (Some("c-7"), None, None),
            (None, Some("shipped"), None),
            (Some("c-7"), Some("shipped"), None),
            (None, None, after),
            (Some("c-7"), None, after),
            (None, Some("shipped"), after),
            (Some("c-7"), Some("shipped"), after),
        ]
        .into_iter()
        .enumerate()
        {
            let filter = Filter { customer_id: customer.map(str::to_owned), status: status.map(str::to_owned), after };
            let mut arguments: Vec<String> = customer.iter().chain(&status).map(|v| format!("'{v}'")).collect();
            if after.is_some() {
                arguments.extend(["now()".to_owned(), format!("'{}'", uuid::Uuid::nil())]);
            }
            arguments.push("51".to_owned());
            sqlx::raw_sql(&format!("PREPARE list_{i} AS {}", page_sql(&filter))).execute(&mut *conn).await.unwrap();
            let explain = format!("EXPLAIN (FORMAT JSON) EXECUTE list_{i}({})", arguments.join(", "));
            let plan: Value = sqlx::query_scalar(&explain).fetch_one(&mut *conn).await.unwrap();
            let plan = plan.to_string();
            assert!(!plan.contains("Seq Scan"), "{filter:?} reads the whole table: {plan}");
            if customer.is_some() {
                assert!(plan.contains("rm_orders_customer"), "{filter:?} does not use the customer's index: {plan}");
            }
        }
    })
    .await;
}

/// Contact addresses are opened when the API answers, a page's all at once:
/// an erased customer's read as erased, the others' in clear (ADR 0014).
#[tokio::test]
async fn contact_addresses_are_opened_when_shown_and_an_erased_customers_read_as_erased() {
    use service_kit::personal_data::{MasterKeys, Vault};
    with_app(|app| async move {
        let vault = Vault::new(app.pool.clone(), MasterKeys::development());
        let mut expected = Vec::new();
        for (n, (customer, email)) in
            [("c-1", Some("one@example.com")), ("c-2", Some("two@example.com")), ("c-1", Some("uno@example.com")), ("c-3", None)]
                .into_iter()
                .enumerate()
        {
            let order_id = Uuid::new_v4();
            let sealed = match email {
                Some(email) => Some(vault.seal(customer, email).await.unwrap()),
                None => None,
            };
            sqlx::query(
                "INSERT INTO rm_orders (order_id, customer_id, status, payment_status, currency, total_cents, lines, \
                                        version, created_at, updated_at, contact_key_id, contact_email_sealed) \
                 VALUES ($1, $2, 'pending', 'none', 'EUR', 100, '[]', 1, now() - $3 * interval '1 second', now(), $4, $5)",
            )
            .bind(order_id)
            .bind(customer)
            .bind(n as f64)
            .bind(sealed.as_ref().map(|(key_id, _)| *key_id))
            .bind(sealed.as_ref().map(|(_, sealed)| sealed.clone()))
            .execute(&app.pool)
            .await
            .unwrap();
            expected.push((order_id, customer, email));
        }
        assert_eq!(vault.erase("c-1").await.unwrap(), 1);

        let page = app.json("/v1/orders?limit=10").await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 4);
        for (order_id, customer, email) in expected {
            let item = items.iter().find(|item| item["order_id"] == order_id.to_string()).unwrap();
            let (shown, erased) = match (customer, email) {
                ("c-1", _) => (Value::Null, true),
                (_, Some(email)) => (json!(email), false),
                (_, None) => (Value::Null, false),
            };
            assert_eq!((&item["contact_email"], &item["contact_email_erased"]), (&shown, &json!(erased)), "{item}");
            assert!(item.get("contact_email_sealed").is_none() && item.get("contact_key_id").is_none(), "{item}");
            let one = app.json(&format!("/v1/orders/{order_id}")).await;
            assert_eq!(&one["contact_email"], &shown);
        }
    })
    .await;
}

/// Browser clients: each row answers with an `ETag` (what the row is at) and
/// a short private `Cache-Control`; `If-None-Match` naming it is 304 without
/// a body, until the row moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_carry_an_etag_and_answer_304_until_they_change() {
    with_app(|app| async move {
        let order_id = Uuid::new_v4();
        app.append("inventory-SKU-E", &[InventoryEvent::StockReceived { sku: "SKU-E".into(), quantity: 5 }]).await;
        let last = app.append(&format!("order-{order_id}"), &[placed(order_id, "c-1", 0)]).await;
        let _projecting = app.project();
        let path = format!("/v1/orders/{order_id}?min_position={last}");
        let first = app.get(&path).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()["cache-control"], "private, max-age=5");
        assert_eq!(first.headers()["vary"], "authorization");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag, "\"1.0\"");
        let again = |tag: String| {
            let (app, path) = (&app, path.clone());
            async move { app.client.get(format!("{}{path}", app.base)).header("if-none-match", tag).send().await.unwrap() }
        };
        let unchanged = again(etag.clone()).await;
        assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(unchanged.headers()["etag"], etag.as_str());
        assert!(unchanged.bytes().await.unwrap().is_empty());
        assert_eq!(again(format!("W/\"0.0\", {etag}")).await.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again("\"0.0\"".into()).await.status(), StatusCode::OK);

        // The order moves on: the old tag no longer matches.
        let moved = app
            .append(&format!("order-{order_id}"), &[domain::order::OrderEvent::OrderRejected { reason: "x".into(), sku: "SKU-E".into() }])
            .await;
        let fresh = app.get(&format!("/v1/orders/{order_id}?min_position={moved}")).await;
        assert_eq!(fresh.headers()["etag"], "\"2.0\"");
        let path = format!("/v1/orders/{order_id}");
        let stale = app.client.get(format!("{}{path}", app.base)).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(stale.status(), StatusCode::OK);

        let item = app.get("/v1/inventory/SKU-E").await;
        assert_eq!(item.headers()["etag"], "\"1\"");
        let item_again =
            app.client.get(format!("{}/v1/inventory/SKU-E", app.base)).header("if-none-match", "\"1\"").send().await.unwrap();
        assert_eq!(item_again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(app.get("/v1/orders").await.headers()["cache-control"], "private, max-age=5");
    })
    .await;
}

#[tokio::test]
async fn cors_answers_the_configured_origins_only() {
    with_app_env(&[("CORS_ALLOWED_ORIGINS", "https://console.example")], |app| async move {
        let preflight = |origin: &'static str| {
            let app = &app;
            async move {
                app.client
                    .request(reqwest::Method::OPTIONS, format!("{}/v1/orders", app.base))
                    .header("origin", origin)
                    .header("access-control-request-method", "GET")
                    .header("access-control-request-headers", "authorization, if-none-match")
                    .send()
                    .await
                    .unwrap()
            }
        };
        let allowed = preflight("https://console.example").await;
        assert!(allowed.status().is_success(), "{}", allowed.status());
        assert_eq!(allowed.headers()["access-control-allow-origin"], "https://console.example");
        let refused = preflight("https://elsewhere.example").await;
        assert!(refused.headers().get("access-control-allow-origin").is_none());
        let read = app.client.get(format!("{}/v1/orders", app.base)).header("origin", "https://console.example");
        let read = read.send().await.unwrap();
        assert_eq!(read.headers()["access-control-allow-origin"], "https://console.example");
        assert!(read.headers()["access-control-expose-headers"].to_str().unwrap().contains("etag"));
    })
    .await;
    with_app(|app| async move {
        let read = app.client.get(format!("{}/v1/orders", app.base)).header("origin", "https://console.example");
        assert!(read.send().await.unwrap().headers().get("access-control-allow-origin").is_none(), "off by default");
    })
    .await;
}
