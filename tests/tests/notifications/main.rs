//! Notifications across the whole shop (ADR 0015): a merchant registers a
//! webhook through the API; customers who gave an address are mailed as
//! their orders are confirmed, shipped, cancelled (with the refund) and
//! rejected; the merchant hears the same milestones, signed. The notifier
//! is killed midway: nothing is lost, nothing is sent twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use system_tests::system::{Kind, Settings, System};

type Inbox = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn receiver() -> (String, Inbox) {
    let inbox: Inbox = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/hooks",
            axum::routing::post(|State(inbox): State<Inbox>, headers: HeaderMap, body: String| async move {
                inbox.lock().unwrap().push((headers, body));
            }),
        )
        .with_state(inbox.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

async fn place(system: &System, customer: &str, email: &str, quantity: u32) -> String {
    let body = json!({"customer_id": customer, "currency": "EUR", "payment_token": "tok_visa", "contact_email": email,
                      "lines": [{"sku": "SKU-N", "quantity": quantity, "unit_price_cents": 1250}]});
    system.client.command("POST", "/v1/orders", body).await["order_id"].as_str().unwrap().to_owned()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_and_merchants_hear_each_milestone_once() {
    let mut system = System::start(Settings::default()).await;
    let (url, inbox) = receiver().await;
    let events = ["order.confirmed", "order.shipped", "order.cancelled", "order.rejected"];
    let endpoint = system.client.command("POST", "/v1/webhooks", json!({"url": url, "events": events})).await;
    let (endpoint_id, secret) =
        (endpoint["id"].as_str().unwrap().to_owned(), endpoint["secret"].as_str().unwrap().to_owned());
    system.client.command("POST", "/v1/inventory/SKU-N/receipts", json!({"quantity": 10})).await;

    let shipped = place(&system, "c-ada", "ada@example.com", 2).await;
    system.client.order_in(&shipped, &["confirmed"]).await;
    system.client.command("POST", &format!("/v1/orders/{shipped}/ship"), Value::Null).await;
    system.client.order_in(&shipped, &["shipped"]).await;

    system.kill_and_restart(Kind::Notifier, Duration::from_millis(300)).await;

    let cancelled = place(&system, "c-bob", "bob@example.com", 1).await;
    system.client.order_in(&cancelled, &["confirmed"]).await;
    system
        .client
        .command("POST", &format!("/v1/orders/{cancelled}/cancel"), json!({"reason": "changed my mind"}))
        .await;
    system.client.order_in(&cancelled, &["cancelled"]).await;
    let rejected = place(&system, "c-cy", "cy@example.com", 50).await;
    system.client.order_in(&rejected, &["rejected"]).await;

    eventually("five e-mails", || system.smtp.received().len() >= 5).await;
    eventually("five webhooks", || inbox.lock().unwrap().len() >= 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = system.smtp.received();
    let mut told: Vec<(String, String)> =
        mails.iter().map(|m| (m.rcpt_to.join(","), m.header("Subject").unwrap_or_default())).collect();
    told.sort();
    let short = |id: &str| id.replace('-', "")[..8].to_owned();
    let mut expected = vec![
        ("ada@example.com".to_owned(), format!("Your order {} has shipped", short(&shipped))),
        ("ada@example.com".to_owned(), format!("Your order {} is confirmed", short(&shipped))),
        ("bob@example.com".to_owned(), format!("Your order {} is cancelled", short(&cancelled))),
        ("bob@example.com".to_owned(), format!("Your order {} is confirmed", short(&cancelled))),
        ("cy@example.com".to_owned(), format!("Your order {} could not be accepted", short(&rejected))),
    ];
    expected.sort();
    assert_eq!(told, expected, "each milestone mailed once");
    let refund = mails.iter().find(|m| m.header("Subject").unwrap().contains("cancelled")).unwrap().body();
    assert!(refund.contains("The 12.50 EUR you paid is refunded."), "{refund}");

    let hooks = inbox.lock().unwrap().clone();
    assert_eq!(hooks.len(), 5, "each milestone posted once");
    let mut types = Vec::new();
    for (headers, body) in &hooks {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        assert!(notifier::sign::verify(&secret, &header("webhook-id"), timestamp, body, &header("webhook-signature")));
        let body: Value = serde_json::from_str(body).unwrap();
        types.push(body["type"].as_str().unwrap().to_owned());
        if body["type"] == "order.cancelled" {
            assert_eq!(body["data"]["refund_cents"], 1250);
        }
    }
    types.sort();
    assert_eq!(types, ["order.cancelled", "order.confirmed", "order.confirmed", "order.rejected", "order.shipped"]);
    let deliveries = format!("{}/v1/webhooks/{endpoint_id}/deliveries", system.client.api);
    let listed = system.client.call("GET", &deliveries, Value::Null).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{listed}");
    assert!(items.iter().all(|d| d["status"] == "delivered"), "{listed}");
    system.stop(false);
}
