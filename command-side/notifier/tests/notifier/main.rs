//! The notifier against real PostgreSQL, JetStream, an SMTP sink and a
//! webhook receiver: what customers and merchants receive, once.

mod office;

use std::time::Duration;

use application::webhooks::message_id;
use application::webhooks::Registry;
use domain::order::{CancelledBy, OrderEvent};
use notifier::dispatch::{DispatchConfig, Dispatcher};
use notifier::outbox;
use notifier::record::{webhook_delivery_id, ERASED};
use notifier::send::{Sent, WebhookSender};
use notifier::sign;
use office::{local_policy, with_office, Hooks, Office};
use serde_json::Value;
use service_kit::personal_data::{MasterKeys, Vault};
use uuid::Uuid;

const CONFIRMED: &str = "order.confirmed";
const CANCELLED: &str = "order.cancelled";

async fn confirm(office: &Office, order_id: Uuid) -> Uuid {
    office.append(order_id, OrderEvent::OrderConfirmed { provider_ref: "ch_42".into() }).await
}

#[tokio::test]
async fn a_confirmed_order_is_mailed_and_posted_once_signed_even_when_its_event_comes_twice() {
    with_office(&[], |office| async move {
        let endpoint = office.register("merchant", &[CONFIRMED, CANCELLED]).await;
        let order_id = office.place("c-ada", Some("ada@example.com")).await;
        let event_id = confirm(&office, order_id).await;

        let mail = office.eventually("the e-mail", async || office.smtp.received().into_iter().next()).await;
        assert_eq!(mail.rcpt_to, ["ada@example.com"]);
        assert_eq!(mail.mail_from, "orders@shop.test");
        assert_eq!(mail.header("To").as_deref(), Some("ada@example.com"));
        assert_eq!(mail.header("From").as_deref(), Some("Shop <orders@shop.test>"));
        let short = &order_id.simple().to_string()[..8];
        assert_eq!(mail.header("Subject"), Some(format!("Your order {short} is confirmed")));
        assert_eq!(mail.header("Auto-Submitted").as_deref(), Some("auto-generated"));
        assert_eq!(mail.header("X-Order-Id"), Some(order_id.to_string()));
        assert!(mail.header("Message-ID").expect("a Message-ID").ends_with("@notifier.order-system>"));
        let body = mail.body();
        assert!(body.contains("your order is confirmed and paid"), "{body}");
        assert!(body.contains("2 x SKU-1  39.98 EUR"), "{body}");
        assert!(body.contains("Payment reference: ch_42"), "{body}");

        let hook =
            office.eventually("the webhook", async || office.hooks.received("merchant").into_iter().next()).await;
        let id = hook.header("webhook-id");
        assert_eq!(id, message_id(webhook_delivery_id(event_id, endpoint.endpoint.id)));
        let timestamp: i64 = hook.header("webhook-timestamp").parse().unwrap();
        assert!(sign::verify(&endpoint.secret, &id, timestamp, &hook.body, &hook.header("webhook-signature")));
        assert!(!sign::verify(&endpoint.secret, &id, timestamp + 1, &hook.body, &hook.header("webhook-signature")));
        assert_eq!(hook.header("content-type"), "application/json");
        assert_eq!(hook.header("correlation-id"), format!("corr-{order_id}"));
        let body: Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(body["type"], CONFIRMED);
        assert_eq!(body["data"]["order_id"], order_id.to_string());
        assert_eq!(body["data"]["status"], "confirmed");
        assert_eq!(body["data"]["total_cents"], 3998);
        assert!(!hook.body.contains("ada@"), "a webhook carries no address: {}", hook.body);

        // The same event again (a redelivery): nothing is sent twice.
        office.publish_again(order_id, event_id).await;
        office.eventually("the repeat to be handled", async || repeat_handled(&office).await.then_some(())).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(office.smtp.received().len(), 1);
        assert_eq!(office.hooks.received("merchant").len(), 1);

        let listed = office.registry.deliveries(endpoint.endpoint.id, 10).await.unwrap().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].status.as_str(), listed[0].attempts.len()), ("delivered", 1));
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].attempts[0].status_code, Some(200));
        assert_eq!(office.deliveries(order_id, "email").await, [("delivered".to_owned(), 1, None)]);
        office.stop().await;
    })
    .await;
}

/// Both messages of the event were consumed (the original and the repeat).
async fn repeat_handled(office: &Office) -> bool {
    let mut handled = 0;
    for name in ["notifications-OrderConfirmed"] {
        let stream = office.js.get_stream(&office.events.stream).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream.get_consumer(name).await.unwrap();
        let info = consumer.info().await.unwrap();
        handled += info.ack_floor.stream_sequence;
    }
    // OrderPlaced, OrderConfirmed, the repeat: the consumer acknowledged up to the third message.
    handled >= 3
}

#[tokio::test]
async fn failing_endpoints_are_retried_with_the_same_id_and_dead_ones_end_as_dead_letters() {
    let env = [("NOTIFY_RETRY_FOR", "3s"), ("NOTIFY_BREAKER_FAILURES", "2"), ("NOTIFY_BREAKER_OPEN", "1500ms")];
    with_office(&env, |office| async move {
        office.hooks.script("flaky", &[500, 503, 429]);
        let flaky = office.register("flaky", &[CANCELLED]).await;
        let healthy = office.register("healthy", &[CANCELLED]).await;
        // Nothing listens there: every attempt fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dead = office
            .registry
            .register(&format!("http://127.0.0.1:{closed}/gone"), &[CANCELLED.into()], "")
            .await
            .unwrap();

        let order_id = office.place("c-bob", None).await;
        let reason = "changed my mind".to_owned();
        office
            .append(
                order_id,
                OrderEvent::OrderCancelled { reason, by: CancelledBy::Customer, payment_refund_due: false },
            )
            .await;

        let hooks = office
            .eventually("the flaky endpoint's 4th attempt", async || {
                let hooks = office.hooks.received("flaky");
                (hooks.len() == 4).then_some(hooks)
            })
            .await;
        let ids: Vec<String> = hooks.iter().map(|h| h.header("webhook-id")).collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "every attempt carries the same webhook-id: {ids:?}");
        assert!(hooks.iter().all(|h| h.body == hooks[0].body));
        assert_eq!(office.hooks.received("healthy").len(), 1);

        let listed = office
            .eventually("the flaky endpoint's delivery", async || {
                let listed = office.registry.deliveries(flaky.endpoint.id, 10).await.unwrap().unwrap();
                (listed[0].status == "delivered").then_some(listed)
            })
            .await;
        let statuses: Vec<Option<i32>> = listed[0].attempts.iter().map(|a| a.status_code).collect();
        assert_eq!(statuses, [Some(500), Some(503), Some(429), Some(200)]);
        assert!(listed[0].attempts.windows(2).all(|w| w[0].attempted_at < w[1].attempted_at));
        let healthy_listed = office.registry.deliveries(healthy.endpoint.id, 10).await.unwrap().unwrap();
        assert_eq!(healthy_listed[0].attempts.len(), 1);

        let gone = office
            .eventually("the dead endpoint's delivery to be given up", async || {
                let listed = office.registry.deliveries(dead.endpoint.id, 10).await.unwrap().unwrap();
                (listed[0].status == "dead").then_some(listed)
            })
            .await;
        let last_error = gone[0].last_error.clone().unwrap();
        assert!(last_error.contains("could not connect") && last_error.contains("NOTIFY_RETRY_FOR"), "{last_error}");
        assert!(gone[0].attempts.iter().all(|a| a.status_code.is_none() && a.error.is_some()));
        // Two failures open the endpoint's breaker for 1.5 s: after those, one
        // attempt per opening (without it, 50-400 ms pauses over 3 s made ten or more).
        let attempts = gone[0].attempts.len();
        assert!((2..=4).contains(&attempts), "{:?}", gone[0].attempts);
        office.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_that_answers_too_late_is_tried_again() {
    with_office(&[("WEBHOOK_TIMEOUT", "300ms")], |office| async move {
        office.hooks.script("slow", &[office::SLOW]);
        let endpoint = office.register("slow", &[CONFIRMED]).await;
        let order_id = office.place("c-1", None).await;
        confirm(&office, order_id).await;
        let listed = office
            .eventually("the second attempt", async || {
                let listed = office.registry.deliveries(endpoint.endpoint.id, 10).await.unwrap().unwrap();
                (listed.first()?.status == "delivered").then_some(listed)
            })
            .await;
        let attempts = &listed[0].attempts;
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!((attempts[0].status_code, attempts[1].status_code), (None, Some(200)));
        assert!(attempts[0].error.as_deref().unwrap().starts_with("timed out"), "{attempts:?}");
        assert!(attempts[0].latency_ms >= 300.0, "{attempts:?}");
        office.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_erased_customer_is_not_mailed_but_the_merchant_still_hears() {
    with_office(&[], |office| async move {
        office.register("merchant", &[CANCELLED]).await;
        let kept = office.place("c-kept", Some("kept@example.com")).await;
        let erased = office.place("c-gone", Some("gone@example.com")).await;
        office.vault.erase("c-gone").await.unwrap();
        for order_id in [erased, kept] {
            let cancelled = OrderEvent::OrderCancelled {
                reason: "payment declined: insufficient funds".into(),
                by: CancelledBy::PaymentDeclined,
                payment_refund_due: false,
            };
            office.append(order_id, cancelled).await;
        }
        let mails = office
            .eventually("the kept customer's e-mail", async || {
                let mails = office.smtp.received();
                (!mails.is_empty()).then_some(mails)
            })
            .await;
        office.eventually("both webhooks", async || (office.hooks.received("merchant").len() == 2).then_some(())).await;
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].rcpt_to, ["kept@example.com"]);
        assert!(mails[0].body().contains("payment declined: insufficient funds"));
        assert_eq!(office.deliveries(erased, "email").await, [("skipped".to_owned(), 0, Some(ERASED.to_owned()))]);
        // No clear address anywhere in the deliveries' table.
        let (clear,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM notification_deliveries d WHERE d::text LIKE '%@example.com%'")
                .fetch_one(&office.pool)
                .await
                .unwrap();
        assert_eq!(clear, 0);
        office.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_mailbox_refused_for_good_is_not_asked_again_and_a_busy_server_is() {
    with_office(&[], |office| async move {
        office.smtp.refuse("nobody@example.com");
        office.smtp.busy(2);
        let busy = office.place("c-busy", Some("busy@example.com")).await;
        confirm(&office, busy).await;
        office
            .eventually("the mail after the server was busy twice", async || {
                (office.deliveries(busy, "email").await.first()?.0 == "delivered").then_some(())
            })
            .await;
        assert_eq!(office.deliveries(busy, "email").await[0].1, 3);
        assert_eq!(office.smtp.received().len(), 1);

        let refused = office.place("c-nobody", Some("nobody@example.com")).await;
        confirm(&office, refused).await;
        let (status, attempts, error) = office
            .eventually("the refused mail to be dead", async || {
                office.deliveries(refused, "email").await.into_iter().find(|d| d.0 == "dead")
            })
            .await;
        assert_eq!((status.as_str(), attempts), ("dead", 1));
        assert!(error.unwrap().contains("550"));
        office.stop().await;
    })
    .await;
}

#[tokio::test]
async fn internal_addresses_are_refused_outside_development() {
    with_office(&[("WEBHOOK_ALLOW_PRIVATE", "false")], |office| async move {
        // Registration refuses it...
        let refused = office.registry.register(&office.hooks.url("inside"), &[CONFIRMED.into()], "").await;
        assert!(refused.unwrap_err().to_string().contains("loopback or private"));
        // ...and one registered before the policy changed is not called.
        let id: (Uuid,) = sqlx::query_as(
            "INSERT INTO webhook_endpoints (endpoint_id, url, event_types, secret)
             VALUES (gen_random_uuid(), $1, ARRAY['order.confirmed'], 'whsec_c2VjcmV0') RETURNING endpoint_id",
        )
        .bind(office.hooks.url("inside"))
        .fetch_one(&office.pool)
        .await
        .unwrap();
        let order_id = office.place("c-1", None).await;
        confirm(&office, order_id).await;
        let listed = office
            .eventually("the refusal", async || {
                let listed = office.registry.deliveries(id.0, 10).await.unwrap().unwrap();
                (listed.first()?.status == "dead").then_some(listed)
            })
            .await;
        assert!(listed[0].last_error.as_deref().unwrap().contains("refused by the URL policy"), "{listed:?}");
        assert!(office.hooks.received("inside").is_empty());
        office.stop().await;
    })
    .await;
}

/// A notifier that sent a webhook and died before recording it: the
/// delivery is sent again once its lease is over, with the same id and
/// body, so the receiver can drop it. At most one duplicate.
#[tokio::test]
async fn a_crash_between_sending_and_recording_sends_one_duplicate_with_the_same_id() {
    service_kit::telemetry::init_for_tests();
    migrations::testing::with_database(5, |pool| async move {
        let hooks = Hooks::start().await;
        let registry = Registry::new(pool.clone(), local_policy());
        let endpoint = registry.register(&hooks.url("merchant"), &[CONFIRMED.into()], "").await.unwrap();
        let delivery_id = webhook_delivery_id(Uuid::new_v4(), endpoint.endpoint.id);
        let delivery = outbox::NewDelivery {
            delivery_id,
            channel: outbox::Channel::Webhook,
            endpoint_id: Some(endpoint.endpoint.id),
            event_id: Uuid::new_v4(),
            event_type: CONFIRMED,
            order_id: Uuid::new_v4(),
            correlation_id: "corr-1".into(),
            body: r#"{"type":"order.confirmed"}"#.into(),
            subject: None,
            recipient: None,
            skipped: None,
        };
        assert_eq!(outbox::record(&pool, std::slice::from_ref(&delivery)).await.unwrap(), 1);
        assert_eq!(outbox::record(&pool, &[delivery]).await.unwrap(), 0, "recorded once");

        // The notifier that dies: it takes the delivery, sends it, and is gone.
        let sender = WebhookSender::new(local_policy(), Duration::from_secs(2));
        let claimed = outbox::claim(&pool, 10, &[], Duration::from_millis(300)).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(matches!(sender.send(&claimed[0]).await, Sent::Taken { status_code: Some(200) }));
        assert!(outbox::claim(&pool, 10, &[], Duration::from_secs(1)).await.unwrap().is_empty(), "leased");

        // The next notifier sends it again once the lease is over, and records it.
        let config = DispatchConfig { poll: Duration::from_millis(50), ..DispatchConfig::default() };
        let vault = Vault::new(pool.clone(), MasterKeys::development());
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let dispatcher = std::sync::Arc::new(Dispatcher::new(pool.clone(), vault, sender, None, config, wake));
        let (stop, shutdown) = service_kit::Shutdown::new();
        let running = tokio::spawn(dispatcher.run(shutdown));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let listed = loop {
            let listed = registry.deliveries(endpoint.endpoint.id, 10).await.unwrap().unwrap();
            if listed[0].status == "delivered" {
                break listed;
            }
            assert!(std::time::Instant::now() < deadline, "not delivered again: {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.fire();
        running.await.unwrap();
        let received = hooks.received("merchant");
        assert_eq!(received.len(), 2, "one duplicate, no more");
        assert_eq!(received[0].header("webhook-id"), message_id(delivery_id));
        assert_eq!(received[1].header("webhook-id"), message_id(delivery_id));
        assert_eq!(received[0].body, received[1].body);
        assert_eq!(listed[0].attempts.len(), 1, "the lost attempt was never recorded");
    })
    .await;
}
