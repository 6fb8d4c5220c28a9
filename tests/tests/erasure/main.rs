//! The right to be forgotten across the whole shop (ADR 0014): two
//! customers give their e-mail addresses with their orders, one is erased
//! midway, orders go on; then every projection is rebuilt from the log. Her
//! addresses read as erased everywhere, his are intact, and no address is in
//! clear anywhere: not in any table of PostgreSQL, not in any message of the
//! JetStream streams (their raw bytes searched). New notifications to her
//! are not sent; his are.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::system::{Settings, System};

const ADA: &str = "ada.lovelace@example.com";
const BOB: &str = "bob.babbage@example.org";

async fn place(system: &System, customer_id: &str, email: Option<&str>) -> String {
    let client = &system.client;
    let mut body = json!({"customer_id": customer_id, "currency": "EUR", "payment_token": "tok_visa",
                          "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 500}]});
    if let Some(email) = email {
        body["contact_email"] = json!(email);
    }
    let response = client
        .http
        .post(format!("{}/v1/orders", client.api))
        .bearer_auth(&client.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_customer_is_erased_everywhere_and_the_others_are_intact() {
    let mut system = System::start(Settings::default()).await;
    let client = system.client.clone();
    let receipt = client
        .http
        .post(format!("{}/v1/inventory/SKU-1/receipts", client.api))
        .bearer_auth(&client.token)
        .json(&json!({"quantity": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.status(), 202);

    let mut ada_orders = vec![place(&system, "c-ada", Some(ADA)).await, place(&system, "c-ada", Some(ADA)).await];
    let mut bob_orders = vec![place(&system, "c-bob", Some(BOB)).await];
    let shown = system.client.order_in(&ada_orders[0], &["confirmed", "shipped"]).await;
    assert_eq!(shown["contact_email"], ADA, "{shown}");

    let erased = client
        .http
        .delete(format!("{}/v1/customers/c-ada/personal-data", client.api))
        .bearer_auth(&client.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 202);
    // Orders go on: hers without an address now, his with one.
    ada_orders.push(place(&system, "c-ada", None).await);
    bob_orders.push(place(&system, "c-bob", Some(BOB)).await);
    for order_id in ada_orders.iter().chain(&bob_orders) {
        system.client.order_in(order_id, &["confirmed", "shipped"]).await;
    }
    // New notifications to her are not sent: his shipment is mailed, hers is not.
    for order_id in [&ada_orders[0], &bob_orders[0]] {
        let shipped = client
            .http
            .post(format!("{}/v1/orders/{order_id}/ship", client.api))
            .bearer_auth(&client.token)
            .send()
            .await
            .unwrap();
        assert_eq!(shipped.status(), 202);
    }
    let shipped_mail = |smtp: &service_kit::testing::smtp::SmtpSink, to: &str| {
        smtp.received()
            .into_iter()
            .any(|m| m.rcpt_to == [to] && m.header("Subject").is_some_and(|s| s.ends_with("has shipped")))
    };
    let pool = system.pool().await;
    let started = Instant::now();
    loop {
        let (skipped,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM notification_deliveries WHERE channel = 'email' AND status = 'skipped'
             AND event_type = 'order.shipped' AND order_id = $1::uuid",
        )
        .bind(&ada_orders[0])
        .fetch_one(&pool)
        .await
        .unwrap();
        if skipped == 1 && shipped_mail(&system.smtp, BOB) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "his shipment mailed, hers skipped: not yet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!shipped_mail(&system.smtp, ADA), "her shipment was mailed after the erasure");

    for name in ["orders", "inventory", "payments", "story"] {
        assert!(system.rebuild_from_the_command_line(name).await, "projections rebuild {name}");
    }
    for order_id in &ada_orders[..2] {
        let order = system.client.order_in(order_id, &["confirmed", "shipped"]).await;
        assert_eq!((&order["contact_email"], &order["contact_email_erased"]), (&Value::Null, &json!(true)), "{order}");
    }
    let order = system.client.order_in(&ada_orders[2], &["confirmed", "shipped"]).await;
    assert_eq!((&order["contact_email"], &order["contact_email_erased"]), (&Value::Null, &json!(false)), "{order}");
    for order_id in &bob_orders {
        let order = system.client.order_in(order_id, &["confirmed", "shipped"]).await;
        assert_eq!((&order["contact_email"], &order["contact_email_erased"]), (&json!(BOB), &json!(false)), "{order}");
    }

    // No address in clear in any table of the shop's database...
    let pool = system.pool().await;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|(_, table)| table == "es_events") && tables.len() > 5, "{tables:?}");
    for (schema, table) in &tables {
        for email in [ADA, BOB] {
            let sql = format!("SELECT count(*) FROM \"{schema}\".\"{table}\" AS t WHERE t::text LIKE $1");
            let found: i64 = sqlx::query_scalar(&sql).bind(format!("%{email}%")).fetch_one(&pool).await.unwrap();
            assert_eq!(found, 0, "{email} in clear in {schema}.{table}");
        }
    }
    // ... nor in any message the relay published, or a participant dead-lettered.
    let nats = async_nats::connect(system.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut searched = 0;
    for name in [&system.stream, &system.dead_letter_stream] {
        let Ok(mut stream) = js.get_stream(name).await else { continue };
        let last = stream.info().await.unwrap().state.last_sequence;
        for sequence in 1..=last {
            let Ok(message) = stream.get_raw_message(sequence).await else { continue };
            let raw = [message.payload.as_ref(), format!("{:?}", message.headers).as_bytes()].concat();
            for email in [ADA, BOB] {
                assert!(!raw.windows(email.len()).any(|w| w == email.as_bytes()), "{email} in {name} #{sequence}");
            }
            searched += 1;
        }
    }
    assert!(searched >= 20, "the stream holds the orders' events: {searched}");
    system.stop(false);
}
