//! The sagas end to end: the command API, the relay, the participants and the
//! payment gateway simulator over real HTTP, a real PostgreSQL and a real NATS
//! JetStream. Each test has its own database, streams and consumers.

mod shop;
mod takeover;
mod together;

use std::time::Duration;

use async_nats::jetstream::consumer;
use domain::order::{CancelledBy, OrderStatus};
use domain::payment::PaymentStatus;
use event_store::testing::eventually;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent};
use futures_util::StreamExt;
use payment_gateway::Faults;
use saga::consumer::{DEAD_LETTER_CONSUMER, DEAD_LETTER_ERROR};
use saga::gateway::BreakerState;
use serde_json::json;
use shop::{with_shop, Setup, Shop};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

fn is_final(status: OrderStatus) -> impl Fn(&domain::order::PlacedOrder) -> bool {
    move |order| order.status == status
}

/// Waits until the order is in `status` and the saga has nothing left to do
/// for it: its payment settled and its stock held or released accordingly.
async fn settled(shop: &Shop, order_id: Uuid, status: OrderStatus) -> domain::order::PlacedOrder {
    let order = shop.until_order(order_id, WITHIN, is_final(status)).await;
    eventually(WITHIN, "stock and payment settle", || async {
        for line in &order.lines {
            let inventory = shop.inventory(&line.sku).await;
            let held = inventory.holds.contains_key(&order_id);
            if held != (status == OrderStatus::Confirmed) {
                return None;
            }
            // An ended order is forgotten by the item once both its messages came (ADR 0011).
            if status.is_final() && inventory.awaiting.contains_key(&order_id) {
                return None;
            }
        }
        let payment = shop.payment(order_id).await.status;
        let settled = match status {
            OrderStatus::Confirmed | OrderStatus::Shipped => payment == PaymentStatus::Captured,
            OrderStatus::Rejected => payment == PaymentStatus::NotRequested,
            OrderStatus::Cancelled => {
                matches!(
                    payment,
                    PaymentStatus::Refunded
                        | PaymentStatus::Voided
                        | PaymentStatus::Declined
                        | PaymentStatus::NotRequested
                )
            }
            OrderStatus::Pending => true,
        };
        settled.then_some(())
    })
    .await;
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_stock_and_a_good_card_is_confirmed() {
    with_shop(Setup::default(), |shop| async move {
        shop.receive("SKU-A", 10).await;
        shop.receive("SKU-B", 5).await;
        let order_id =
            shop.place_correlated(&[("SKU-A", 2, 1000), ("SKU-B", 1, 500)], "tok_visa", Some("corr-happy")).await;

        let order = settled(&shop, order_id, OrderStatus::Confirmed).await;
        assert!(order.ready_for_payment);
        let (a, b) = (shop.inventory("SKU-A").await, shop.inventory("SKU-B").await);
        assert_eq!((a.on_hand, a.reserved, b.on_hand, b.reserved), (10, 2, 5, 1));
        let payment = shop.payment(order_id).await;
        assert_eq!((payment.status, payment.captured_cents), (PaymentStatus::Captured, 2500));
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_captured, ledger.captured_cents, ledger.refunds), (1, 2500, 0));

        // One correlation id from the POST through every participant's events.
        let order_events = shop.events(&format!("order-{order_id}")).await;
        let payment_events = shop.events(&format!("payment-{order_id}")).await;
        for event in order_events.iter().chain(&payment_events) {
            assert_eq!(event.metadata.correlation_id, "corr-happy", "{}", event.event_type);
        }
        assert_eq!(payment_events[0].metadata.actor, "saga:payment");
        let ready = order_events.iter().find(|e| e.event_type == "OrderReadyForPayment").unwrap();
        assert_eq!(payment_events[0].metadata.causation_id, ready.event_id.to_string());

        // Every id in time order: the order's fresh (v7), the rest derived
        // from it by the saga (v8), each no earlier than the event it reacts to.
        let reserved = shop.events("inventory-SKU-A").await.into_iter().filter(|e| e.event_type == "StockReserved");
        let chain: Vec<_> = order_events.iter().chain(&payment_events).cloned().chain(reserved).collect();
        assert_eq!(order_events[0].event_id.get_version_num(), 7);
        for event in &chain[1..] {
            assert_eq!(event.event_id.get_version_num(), 8, "{} {}", event.event_type, event.event_id);
        }
        let by_id: std::collections::HashMap<_, _> = chain.iter().map(|e| (e.event_id.to_string(), e)).collect();
        for event in &chain[1..] {
            let cause = by_id.get(&event.metadata.causation_id).map_or(order_events[0].event_id, |c| c.event_id);
            assert!(event.event_id.as_u128() >> 80 >= cause.as_u128() >> 80, "{} {}", event.event_type, event.event_id);
        }
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_short_of_stock_on_one_line_is_rejected_and_the_other_line_released() {
    with_shop(Setup::default(), |shop| async move {
        shop.receive("SKU-A", 10).await;
        shop.receive("SKU-B", 1).await;
        let order_id = shop.place(&[("SKU-A", 2, 1000), ("SKU-B", 3, 500)], "tok_visa").await;

        let order = settled(&shop, order_id, OrderStatus::Rejected).await;
        assert!(!order.ready_for_payment);
        let (a, b) = (shop.inventory("SKU-A").await, shop.inventory("SKU-B").await);
        assert_eq!((a.reserved, a.available(), b.reserved, b.available()), (0, 10, 0, 1));
        assert!(shop.types(&format!("payment-{order_id}")).await.is_empty(), "no payment is taken");
        assert_eq!(shop.ledger().await, payment_gateway::Totals::default());
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_card_cancels_the_order_and_releases_the_stock() {
    with_shop(Setup::default(), |shop| async move {
        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 4, 1000)], "tok_declined").await;

        settled(&shop, order_id, OrderStatus::Cancelled).await;
        assert_eq!(shop.cancelled_by(order_id).await, Some(CancelledBy::PaymentDeclined));
        assert_eq!(shop.payment(order_id).await.status, PaymentStatus::Declined);
        assert_eq!(shop.inventory("SKU-A").await.available(), 10);
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_declined, ledger.captured_cents), (1, 0));
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shipped_order_takes_its_stock_and_can_no_longer_be_cancelled() {
    with_shop(Setup::default(), |shop| async move {
        shop.receive("SKU-A", 10).await;
        shop.receive("SKU-B", 4).await;
        let order_id = shop.place(&[("SKU-A", 3, 700), ("SKU-B", 1, 100)], "tok_visa").await;
        settled(&shop, order_id, OrderStatus::Confirmed).await;

        shop.post(&format!("/v1/orders/{order_id}/ship"), json!({}), None).await;
        settled(&shop, order_id, OrderStatus::Shipped).await;
        let (a, b) = (shop.inventory("SKU-A").await, shop.inventory("SKU-B").await);
        assert_eq!((a.on_hand, a.reserved, b.on_hand, b.reserved), (7, 0, 3, 0));
        assert!(a.holds.is_empty() && a.awaiting.is_empty(), "the item forgot the shipped order: {a:?}");
        let cancel = shop
            .http
            .post(format!("{}/v1/orders/{order_id}/cancel", shop.api))
            .json(&json!({"reason": "too late"}))
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), 409);
        let payment = shop.payment(order_id).await;
        assert_eq!((payment.status, payment.refunded_cents), (PaymentStatus::Captured, 0));
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_confirmed_order_refunds_the_payment_and_releases_the_stock() {
    with_shop(Setup::default(), |shop| async move {
        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 3, 700)], "tok_visa").await;
        settled(&shop, order_id, OrderStatus::Confirmed).await;

        shop.cancel(order_id).await;
        settled(&shop, order_id, OrderStatus::Cancelled).await;
        let payment = shop.payment(order_id).await;
        assert_eq!(
            (payment.status, payment.captured_cents, payment.refunded_cents),
            (PaymentStatus::Refunded, 2100, 2100)
        );
        assert_eq!(shop.inventory("SKU-A").await.available(), 10);
        let ledger = eventually(WITHIN, "the gateway refunds", || async {
            let ledger = shop.ledger().await;
            (ledger.refunds == 1).then_some(ledger)
        })
        .await;
        assert_eq!((ledger.captured_cents, ledger.refunded_cents), (2100, 2100));
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_past_its_deadline_is_cancelled_and_its_stock_released() {
    // The gateway is down, so the order cannot complete before its deadline.
    let setup = Setup { order_deadline: "2s", faults: Faults { down: true, ..Faults::default() }, ..Setup::default() };
    with_shop(setup, |shop| async move {
        // An overdue deadline the watcher cannot expire (no such order) comes
        // first at every poll: it must not hold up the real one.
        sqlx::query(
            "INSERT INTO saga_deadlines (order_id, deadline, due_at) \
             VALUES ($1, now() - interval '1 hour', now() - interval '1 hour')",
        )
        .bind(Uuid::new_v4())
        .execute(&shop.pool)
        .await
        .unwrap();
        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 1, 100)], "tok_visa").await;
        eventually(WITHIN, "the order is ready for payment", || async {
            shop.order(order_id).await.ready_for_payment.then_some(())
        })
        .await;

        settled(&shop, order_id, OrderStatus::Cancelled).await;
        assert_eq!(shop.cancelled_by(order_id).await, Some(CancelledBy::Deadline));
        assert_eq!(shop.payment(order_id).await.status, PaymentStatus::Voided);
        assert_eq!(shop.inventory("SKU-A").await.available(), 10);

        // The gateway returns; the voided payment is never charged.
        shop.set_faults(Faults::default()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(shop.ledger().await.captured_cents, 0);
        assert_eq!(shop.payment(order_id).await.status, PaymentStatus::Voided);
        shop.stop().await;
    })
    .await;
}

/// The gateway charges the card, but its answer is lost (a 503 after it
/// acted). Before the retry gets an answer, the order ends: cancelled by
/// the customer, or by its deadline. The payment is voided, yet the money
/// was taken: the gateway, asked under the charge's key, tells, and the
/// charge is refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_whose_answer_was_lost_is_refunded_when_the_order_ends_first() {
    let lost = Faults { lost_answer_rate: 1.0, ..Faults::default() };
    let setup = Setup { order_deadline: "3s", faults: lost, ..Setup::default() };
    with_shop(setup, |shop| async move {
        shop.receive("SKU-A", 10).await;
        let by_customer = shop.place(&[("SKU-A", 1, 700)], "tok_visa").await;
        let by_deadline = shop.place(&[("SKU-A", 2, 900)], "tok_visa").await;
        eventually(WITHIN, "the gateway charges both cards", || async {
            (shop.ledger().await.charges_captured == 2).then_some(())
        })
        .await;
        shop.cancel(by_customer).await;
        shop.until_order(by_deadline, WITHIN, is_final(OrderStatus::Cancelled)).await;
        assert_eq!(shop.cancelled_by(by_deadline).await, Some(CancelledBy::Deadline));
        for order_id in [by_customer, by_deadline] {
            eventually(WITHIN, "the payment is voided", || async {
                (shop.payment(order_id).await.status == PaymentStatus::Voided).then_some(())
            })
            .await;
        }

        shop.set_faults(Faults::default()).await;
        for (order_id, total) in [(by_customer, 700), (by_deadline, 1800)] {
            settled(&shop, order_id, OrderStatus::Cancelled).await;
            let payment = eventually(WITHIN, "the lost capture is recorded and refunded", || async {
                let payment = shop.payment(order_id).await;
                (payment.status == PaymentStatus::Refunded).then_some(payment)
            })
            .await;
            assert_eq!((payment.captured_cents, payment.refunded_cents), (total, total));
        }
        let ledger = eventually(WITHIN, "the gateway refunds both", || async {
            let ledger = shop.ledger().await;
            (ledger.refunds == 2).then_some(ledger)
        })
        .await;
        assert_eq!((ledger.captured_cents, ledger.refunded_cents), (2500, 2500), "{ledger:?}");
        shop.stop().await;
    })
    .await;
}

/// An order ends while its charge's answer is still outstanding, and the
/// charge never reached the gateway: its key is closed there, so a charge
/// still on its way takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_that_ends_before_its_charge_arrives_is_never_charged() {
    let setup = Setup { faults: Faults { down: true, ..Faults::default() }, ..Setup::default() };
    with_shop(setup, |shop| async move {
        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 1, 700)], "tok_visa").await;
        eventually(WITHIN, "the payment is requested and its charge refused", || async {
            let requested = shop.payment(order_id).await.status == PaymentStatus::Requested;
            (requested && shop.gateway.breaker_state() == BreakerState::Open).then_some(())
        })
        .await;
        shop.cancel(order_id).await;
        eventually(WITHIN, "the payment is voided", || async {
            (shop.payment(order_id).await.status == PaymentStatus::Voided).then_some(())
        })
        .await;
        // No charge is on its way any more (a retry would find the payment voided).
        tokio::time::sleep(Duration::from_millis(500)).await;
        shop.set_faults(Faults::default()).await;
        eventually(WITHIN, "the key is closed at the gateway", || async {
            (shop.ledger().await.voids == 1).then_some(())
        })
        .await;
        settled(&shop, order_id, OrderStatus::Cancelled).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_captured, ledger.refunds), (0, 0), "{ledger:?}");
        assert_eq!(shop.payment(order_id).await.status, PaymentStatus::Voided);
        shop.stop().await;
    })
    .await;
}

/// The gateway charges, then answers 200 with a body that is not its
/// answer. That is an answer lost, not a refusal: the charge is asked
/// again under its key (never dead-lettered), and the order confirmed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_answer_is_asked_again_and_never_dead_lettered() {
    let setup = Setup { faults: Faults { garbled_answer_rate: 1.0, ..Faults::default() }, ..Setup::default() };
    with_shop(setup, |shop| async move {
        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 1, 700)], "tok_visa").await;
        eventually(WITHIN, "the gateway charges", || async {
            (shop.ledger().await.charges_captured == 1).then_some(())
        })
        .await;
        // Longer than the bounded deliveries of a failing message take here.
        tokio::time::sleep(Duration::from_secs(2)).await;
        shop.set_faults(Faults::default()).await;
        settled(&shop, order_id, OrderStatus::Confirmed).await;
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_captured, ledger.captured_cents, ledger.refunds), (1, 700, 0));
        let dead_letters =
            shop.js.get_stream(&shop.config.deliveries.dead_letter_stream).await.unwrap().get_info().await.unwrap();
        assert_eq!(dead_letters.state.messages, 0);
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_the_gateway_is_down_the_breaker_opens_and_orders_wait_then_all_complete() {
    let setup = Setup { faults: Faults { down: true, ..Faults::default() }, ..Setup::default() };
    with_shop(setup, |shop| async move {
        shop.receive("SKU-A", 100).await;
        let mut orders = Vec::new();
        for _ in 0..5 {
            orders.push(shop.place(&[("SKU-A", 1, 100)], "tok_visa").await);
        }
        eventually(WITHIN, "the breaker opens", || async {
            (shop.gateway.breaker_state() == BreakerState::Open).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for order_id in &orders {
            let order = shop.order(*order_id).await;
            assert_eq!(order.status, OrderStatus::Pending, "orders wait while the gateway is down");
        }
        assert_eq!(shop.ledger().await.charges_captured, 0);

        shop.set_faults(Faults::default()).await;
        for order_id in &orders {
            settled(&shop, *order_id, OrderStatus::Confirmed).await;
        }
        assert_ne!(shop.gateway.breaker_state(), BreakerState::Open);
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_captured, ledger.captured_cents), (5, 500), "each order charged once");
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_delivered_twice_changes_no_outcome() {
    with_shop(Setup { redeliver_once: true, ..Setup::default() }, |shop| async move {
        shop.receive("SKU-A", 10).await;
        shop.receive("SKU-B", 1).await;
        let confirmed = shop.place(&[("SKU-A", 2, 1000), ("SKU-B", 1, 500)], "tok_visa").await;
        // The next order wants SKU-B too: it must come second to be the one refused.
        settled(&shop, confirmed, OrderStatus::Confirmed).await;
        let declined = shop.place(&[("SKU-A", 1, 100)], "tok_declined").await;
        let rejected = shop.place(&[("SKU-A", 1, 100), ("SKU-B", 1, 100)], "tok_visa").await;
        settled(&shop, declined, OrderStatus::Cancelled).await;
        settled(&shop, rejected, OrderStatus::Rejected).await;
        let refunded = shop.place(&[("SKU-A", 1, 300)], "tok_visa").await;
        settled(&shop, refunded, OrderStatus::Confirmed).await;
        shop.cancel(refunded).await;
        settled(&shop, refunded, OrderStatus::Cancelled).await;
        shop.post(&format!("/v1/orders/{confirmed}/ship"), json!({}), None).await;
        settled(&shop, confirmed, OrderStatus::Shipped).await;
        // Let the second deliveries of the last messages run too.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let order = |id: Uuid| format!("order-{id}");
        let payment = |id: Uuid| format!("payment-{id}");
        assert_eq!(
            shop.types(&order(confirmed)).await,
            [
                "OrderPlaced",
                "OrderLineReserved",
                "OrderLineReserved",
                "OrderReadyForPayment",
                "OrderConfirmed",
                "OrderShipped"
            ]
        );
        assert_eq!(shop.types(&payment(confirmed)).await, ["PaymentRequested", "PaymentCaptured"]);
        assert_eq!(
            shop.types(&order(declined)).await,
            ["OrderPlaced", "OrderLineReserved", "OrderReadyForPayment", "OrderCancelled"]
        );
        assert_eq!(shop.types(&payment(declined)).await, ["PaymentRequested", "PaymentDeclined"]);
        assert_eq!(shop.types(&order(rejected)).await.last().map(String::as_str), Some("OrderRejected"));
        assert!(shop.types(&payment(rejected)).await.is_empty());
        assert_eq!(shop.types(&payment(refunded)).await, ["PaymentRequested", "PaymentCaptured", "PaymentRefunded"]);
        // SKU-A: 4 reservations, 3 releases (declined, rejected, refunded), 1 shipment;
        // SKU-B: 1 reservation, shipped; 1 refused, whose release ends the item's memory of it.
        let a = shop.types("inventory-SKU-A").await;
        assert_eq!(a.iter().filter(|t| *t == "StockReserved").count(), 4, "{a:?}");
        assert_eq!(a.iter().filter(|t| *t == "StockReleased").count(), 3, "{a:?}");
        assert_eq!(a.iter().filter(|t| *t == "StockShipped").count(), 1, "{a:?}");
        let b = shop.types("inventory-SKU-B").await;
        assert_eq!(
            b,
            ["StockReceived", "StockReserved", "StockReservationRejected", "StockReleased", "StockShipped"],
            "{b:?}"
        );
        let (a, b) = (shop.inventory("SKU-A").await, shop.inventory("SKU-B").await);
        assert_eq!((a.on_hand, a.reserved, b.on_hand, b.reserved), (8, 0, 0, 0));
        assert!(a.holds.is_empty() && a.awaiting.is_empty() && b.holds.is_empty() && b.awaiting.is_empty());
        let ledger = shop.ledger().await;
        assert_eq!((ledger.charges_captured, ledger.charges_declined, ledger.refunds), (2, 1, 1));
        assert_eq!((ledger.captured_cents, ledger.refunded_cents), (2800, 300));
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_keeps_failing_is_dead_lettered_and_blocks_nothing_behind_it() {
    with_shop(Setup::default(), |shop| async move {
        // A reservation for an order that does not exist: the order
        // participant fails on it at every delivery.
        let ghost = Uuid::new_v4();
        let reserved = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "StockReserved".into(),
            schema_version: 1,
            payload: json!({"sku": "SKU-G", "order_id": ghost, "quantity": 1}),
            metadata: Metadata { correlation_id: "corr-ghost".into(), ..Metadata::default() },
        };
        shop.store.append("inventory-SKU-G", ExpectedVersion::Any, vec![reserved]).await.unwrap();
        // And a message that is not an event at all.
        let subject = format!("{}.payment.PaymentCaptured", shop.config.deliveries.events.subject_prefix);
        shop.js.publish(subject, "{not json".into()).await.unwrap().await.unwrap();

        shop.receive("SKU-A", 10).await;
        let order_id = shop.place(&[("SKU-A", 1, 100)], "tok_visa").await;
        settled(&shop, order_id, OrderStatus::Confirmed).await;

        let stream = shop.js.get_stream(&shop.config.deliveries.dead_letter_stream).await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::Config { ack_policy: consumer::AckPolicy::None, ..Default::default() })
            .await
            .unwrap();
        let mut letters = Vec::new();
        while letters.len() < 2 {
            let mut batch = consumer
                .fetch()
                .max_messages(2)
                .expires(Duration::from_secs(WITHIN.as_secs()))
                .messages()
                .await
                .unwrap();
            while let Some(message) = batch.next().await {
                let headers = message.unwrap().headers.clone().unwrap_or_default();
                let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
                letters.push((get(DEAD_LETTER_CONSUMER), get(DEAD_LETTER_ERROR), get("Dead-Letter-Deliveries")));
            }
        }
        letters.sort();
        assert_eq!(letters[0].0, "order-PaymentCaptured");
        assert!(letters[0].1.contains("malformed"), "{}", letters[0].1);
        assert_eq!(letters[0].2, "1", "a message that cannot be read is dead-lettered at once");
        assert_eq!(letters[1].0, "order-StockReserved");
        assert!(letters[1].1.contains("order not found"), "{}", letters[1].1);
        assert_eq!(letters[1].2, "3", "dead-lettered after the bounded number of deliveries");
        shop.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restarted_in_the_middle_of_200_orders_loses_and_doubles_nothing() {
    let mut nats = service_kit::testing::NatsServer::start();
    let setup = Setup { nats_url: nats.url(), ..Setup::default() };
    let nats = &mut nats;
    with_shop(setup, |shop| async move {
        const SKUS: usize = 10;
        for sku in 0..SKUS {
            shop.receive(&format!("SKU-{sku}"), 15).await;
        }
        // 200 orders of one or two lines over 10 skus: more demand than
        // stock, so some are rejected; every seventh card is declined.
        let order = |n: usize| {
            let mut lines = vec![(format!("SKU-{}", n % SKUS), (n % 2 + 1) as u32, 100 + n as u64)];
            if n % 3 == 0 {
                lines.push((format!("SKU-{}", (n + 1) % SKUS), 1, 50));
            }
            (lines, if n % 7 == 0 { "tok_declined" } else { "tok_visa" })
        };
        let mut orders = Vec::new();
        let mut stopped_at = std::time::Instant::now();
        for n in 0..200 {
            if n == 80 {
                nats.stop();
                stopped_at = std::time::Instant::now();
            }
            if n == 140 {
                // Down for longer than a publish acknowledgement is awaited (5 s), so
                // the relay fails and starts again, and every client reconnects.
                tokio::time::sleep(Duration::from_secs(7).saturating_sub(stopped_at.elapsed())).await;
                nats.restart();
            }
            let (lines, token) = order(n);
            let lines: Vec<(&str, u32, u64)> = lines.iter().map(|(s, q, p)| (s.as_str(), *q, *p)).collect();
            orders.push(shop.place(&lines, token).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let skus: Vec<String> = (0..SKUS).map(|sku| format!("SKU-{sku}")).collect();
        books_balance(&shop, &orders, &skus, 15).await;
        shop.stop().await;
    })
    .await;
}

/// Waits until every order has ended and the saga is done with it, then
/// checks the books: each item (received `received` units) holds exactly
/// what its confirmed orders bought, and each confirmed order was charged
/// once, nothing else kept. Some orders must be confirmed and some not.
async fn books_balance(shop: &Shop, orders: &[Uuid], skus: &[String], received: u64) {
    let mut confirmed = Vec::new();
    for order_id in orders {
        let order = shop.until_order(*order_id, Duration::from_secs(120), |o| o.status != OrderStatus::Pending).await;
        let order = settled(shop, *order_id, order.status).await;
        if order.status == OrderStatus::Confirmed {
            confirmed.push(order);
        }
    }
    assert!(!confirmed.is_empty() && confirmed.len() < orders.len(), "{} confirmed", confirmed.len());
    for sku in skus {
        let inventory = shop.inventory(sku).await;
        let bought: u64 = confirmed
            .iter()
            .flat_map(|o| o.lines.iter().filter(|l| &l.sku == sku).map(|l| u64::from(l.quantity)))
            .sum();
        assert_eq!((inventory.on_hand, inventory.reserved), (received, bought), "{sku}");
    }
    let ledger = shop.ledger().await;
    let total: u64 = confirmed.iter().map(|o| o.total_cents).sum();
    assert_eq!(ledger.charges_captured, confirmed.len() as u64, "{ledger:?}");
    assert_eq!(ledger.captured_cents - ledger.refunded_cents, total, "{ledger:?}");
    for order in &confirmed {
        assert_eq!(shop.types(&format!("payment-{}", order.order_id)).await, ["PaymentRequested", "PaymentCaptured"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_saga_instances_selling_two_items_at_once_keep_the_books() {
    // Two processes' worth of participants on the same consumers: each
    // item's reservations and releases come from both, queue and join in
    // each, and the two race for the item's versions.
    with_shop(Setup { saga_instances: 2, ..Setup::default() }, |shop| async move {
        let skus = ["SKU-A".to_string(), "SKU-B".to_string()];
        for sku in &skus {
            shop.receive(sku, 100).await;
        }
        // 160 orders, 40 at a time, of one or two lines over the two items:
        // more demand than stock, so some are rejected; every fifth card is declined.
        let order = |n: usize| {
            let mut lines = vec![(skus[n % 2].as_str(), (n % 3 + 1) as u32, 100 + n as u64)];
            if n % 2 == 0 {
                lines.push((skus[1].as_str(), 1, 40));
            }
            (lines, if n % 5 == 0 { "tok_declined" } else { "tok_visa" })
        };
        let mut orders = Vec::new();
        for wave in 0..4 {
            let placing = (wave * 40..wave * 40 + 40).map(|n| {
                let (lines, token) = order(n);
                let shop = &shop;
                async move { shop.place(&lines, token).await }
            });
            orders.extend(futures_util::future::join_all(placing).await);
        }
        books_balance(&shop, &orders, &skus, 100).await;
        shop.stop().await;
    })
    .await;
}

/// Places an order straight through the command path, deadline `deadline` from now.
async fn place_directly(store: &event_store::PgEventStore, deadline: chrono::Duration) -> Uuid {
    use application::commands::{execute, EventIds, Invocation};
    use domain::order::{LineInput, Order, OrderCommand, PlaceOrder};
    use domain::Aggregate;
    let order_id = Uuid::now_v7(); // as the API draws them
    let now = chrono::Utc::now();
    let place = OrderCommand::Place(PlaceOrder {
        order_id,
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
        lines: vec![LineInput { sku: "SKU-A".into(), quantity: 1, unit_price_cents: 100 }],
        placed_at: now,
        deadline: now + deadline,
        contact_email: None,
    });
    let invocation =
        Invocation { metadata: Metadata::default(), ids: EventIds::Random, expected_version: None, max_attempts: 5 };
    execute::<Order>(store, &Order::stream_id(order_id), &invocation, place).await.unwrap();
    order_id
}

/// Arms the order's deadline as the deadline participant does, due at `due`.
async fn arm(pool: &sqlx::PgPool, order_id: Uuid, due: &str) {
    let sql = format!("INSERT INTO saga_deadlines (order_id, deadline, due_at) VALUES ($1, {due}, {due})");
    sqlx::query(&sql).bind(order_id).execute(pool).await.unwrap();
}

async fn armed(pool: &sqlx::PgPool, order_id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saga_deadlines WHERE order_id = $1)")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn status_of(store: &event_store::PgEventStore, order_id: Uuid) -> OrderStatus {
    use domain::order::{Order, OrderState};
    use domain::Aggregate;
    match application::commands::load::<Order>(store, &Order::stream_id(order_id)).await.unwrap() {
        OrderState::Placed(order) => order.status,
        OrderState::NotPlaced => panic!("no order {order_id}"),
    }
}

/// The database's clock is an hour ahead of this host's: the order's
/// deadline (30 minutes, by the host that placed it) has passed by the
/// database's clock, which picks the due rows. The same clock must decide
/// the expiry, or the order is found due, not expired, and forgotten.
#[tokio::test]
async fn the_database_clock_that_finds_a_deadline_due_also_expires_the_order() {
    use saga::deadline::expire_due;
    migrations::testing::with_database(4, |pool| async move {
        let store = event_store::PgEventStore::new(pool.clone());
        let order_id = place_directly(&store, chrono::Duration::minutes(30)).await;
        let placed: (chrono::DateTime<chrono::Utc>,) =
            sqlx::query_as("SELECT (payload->>'deadline')::timestamptz FROM es_events WHERE stream_id = $1")
                .bind(format!("order-{order_id}"))
                .fetch_one(&pool)
                .await
                .unwrap();
        sqlx::query("INSERT INTO saga_deadlines (order_id, deadline, due_at) VALUES ($1, $2, $2)")
            .bind(order_id)
            .bind(placed.0)
            .execute(&pool)
            .await
            .unwrap();
        // A connection whose now() runs an hour ahead: the database's clock, skewed.
        sqlx::query(
            "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql STABLE \
             AS $$ SELECT pg_catalog.now() + interval '1 hour' $$",
        )
        .execute(&pool)
        .await
        .unwrap();
        let skewed = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(pool.connect_options().as_ref().clone().options([("search_path", "public,pg_catalog")]))
            .await
            .unwrap();

        assert_eq!(expire_due(&app_over(&store, &pool), &skewed).await.unwrap(), 1);
        assert_eq!(status_of(&store, order_id).await, OrderStatus::Cancelled);
        assert!(!armed(&pool, order_id).await);
        // The expiry's id is in time order, as of the order's deadline.
        let cancelled = store.read_stream(&format!("order-{order_id}"), 2).await.unwrap();
        let id = cancelled[0].event_id;
        assert_eq!((id.get_version_num(), id.as_u128() >> 80), (8, placed.0.timestamp_millis() as u128));
        skewed.close().await;
    })
    .await;
}

/// A row due before the order's own deadline (armed from an older event, or
/// by a clock that ran ahead) expires nothing, and stays until the order is
/// no longer pending.
#[tokio::test]
async fn a_deadline_row_stays_while_its_order_is_pending() {
    use saga::deadline::expire_due;
    migrations::testing::with_database(4, |pool| async move {
        let store = event_store::PgEventStore::new(pool.clone());
        let order_id = place_directly(&store, chrono::Duration::hours(1)).await;
        arm(&pool, order_id, "now() - interval '1 minute'").await;

        assert_eq!(expire_due(&app_over(&store, &pool), &pool).await.unwrap(), 0);
        assert_eq!(status_of(&store, order_id).await, OrderStatus::Pending);
        assert!(armed(&pool, order_id).await, "the pending order's deadline was forgotten");
        let due_later: bool = sqlx::query_scalar("SELECT due_at > now() FROM saga_deadlines WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(due_later, "the row is due at the order's own deadline");
    })
    .await;
}

/// The watcher counts what it ends: a pending order past its deadline is
/// expired and counted once; a row left for an order that had ended already
/// (armed again when its `OrderPlaced` was delivered again after its final
/// event's disarm, which counted its end) is removed and counted as
/// neither.
#[tokio::test]
async fn the_watcher_counts_only_the_orders_it_expires() {
    use application::commands::{execute, EventIds, Invocation};
    use domain::order::{Order, OrderCommand};
    use domain::Aggregate;
    use saga::deadline::expire_due;
    let counters = service_kit::metrics::Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    migrations::testing::with_database(4, |pool| async move {
        let store = event_store::PgEventStore::new(pool.clone());
        let due = place_directly(&store, chrono::Duration::milliseconds(1)).await;
        let ended = place_directly(&store, chrono::Duration::milliseconds(1)).await;
        let cancel = OrderCommand::Cancel { reason: "changed my mind".into(), by: CancelledBy::Customer };
        let invocation = Invocation {
            metadata: Metadata::default(),
            ids: EventIds::Random,
            expected_version: None,
            max_attempts: 5,
        };
        execute::<Order>(&store, &Order::stream_id(ended), &invocation, cancel).await.unwrap();
        for order_id in [due, ended] {
            arm(&pool, order_id, "now()").await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;

        assert_eq!(expire_due(&app_over(&store, &pool), &pool).await.unwrap(), 1);
        assert_eq!(status_of(&store, due).await, OrderStatus::Cancelled);
        assert!(!armed(&pool, due).await && !armed(&pool, ended).await, "both rows removed");
    })
    .await;
    assert_eq!(counters.get("saga_deadlines_expired_total", &[]), 1);
    assert_eq!(counters.get("saga_orders_finished_total", &[("outcome", "cancelled")]), 1);
}

/// Two saga instances' watchers polling at once: each due order is
/// expired by one of them, and counted once.
#[tokio::test]
async fn two_watchers_expire_each_due_order_once() {
    use saga::deadline::expire_due;
    let counters = service_kit::metrics::Counters::default();
    let _recorder = metrics::set_default_local_recorder(&counters);
    migrations::testing::with_database(8, |pool| async move {
        let store = event_store::PgEventStore::new(pool.clone());
        let mut orders = Vec::new();
        for _ in 0..60 {
            let order_id = place_directly(&store, chrono::Duration::milliseconds(1)).await;
            arm(&pool, order_id, "now()").await;
            orders.push(order_id);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Each watcher with a store and kept states of its own, as in two processes.
        let (app, other) = (app_over(&store, &pool), app_over(&event_store::PgEventStore::new(pool.clone()), &pool));
        let (one, two) = tokio::join!(expire_due(&app, &pool), expire_due(&other, &pool));
        assert_eq!(one.unwrap() + two.unwrap(), orders.len(), "each order expired by one watcher");
        for order_id in orders {
            assert_eq!(status_of(&store, order_id).await, OrderStatus::Cancelled);
            assert!(!armed(&pool, order_id).await);
        }
    })
    .await;
    assert_eq!(counters.get("saga_deadlines_expired_total", &[]), 60);
}

/// More rows that keep failing than one poll looks at come first: the
/// order due after them is still expired.
#[tokio::test]
async fn rows_that_keep_failing_do_not_starve_the_deadlines_behind_them() {
    use saga::deadline::expire_due;
    migrations::testing::with_database(4, |pool| async move {
        let store = event_store::PgEventStore::new(pool.clone());
        for _ in 0..600 {
            // An order whose stream cannot be read: every expiry of it fails.
            let broken = Uuid::new_v4();
            let unreadable = NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "OrderPlaced".into(),
                schema_version: 2,
                payload: json!({"order_id": "not a uuid"}),
                metadata: Metadata::default(),
            };
            store.append(&format!("order-{broken}"), ExpectedVersion::NoStream, vec![unreadable]).await.unwrap();
            arm(&pool, broken, "now() - interval '1 hour'").await;
        }
        let order_id = place_directly(&store, chrono::Duration::milliseconds(1)).await;
        arm(&pool, order_id, "now()").await;
        tokio::time::sleep(Duration::from_millis(10)).await;

        for _ in 0..2 {
            expire_due(&app_over(&store, &pool), &pool).await.unwrap();
        }
        assert_eq!(status_of(&store, order_id).await, OrderStatus::Cancelled);
        assert!(!armed(&pool, order_id).await);
        let failing: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_deadlines WHERE attempts > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(failing, 600, "the failing rows stay, to be tried again later");
    })
    .await;
}

/// The application layer over the test's store, as the saga process builds it.
fn app_over(store: &event_store::PgEventStore, pool: &sqlx::PgPool) -> application::Application {
    application::Application::new(std::sync::Arc::new(store.clone()), pool.clone(), application::Settings::default())
}
