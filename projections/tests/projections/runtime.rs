//! The projector runtime against a real database: read models, crash safety,
//! hot standby, failures.

use std::time::Duration;

use crate::helpers::{by_name, eventually, processed, start, Running};
use domain::inventory::InventoryEvent;
use domain::order::{CancelledBy, OrderEvent};
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use migrations::testing::with_database;
use projections::{status, RunError};
use serde_json::json;
use uuid::Uuid;

fn new_event(event: &impl EventPayload) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.to_payload(),
        metadata: Metadata::default(),
    }
}

async fn append(store: &PgEventStore, stream: &str, events: &[impl EventPayload]) {
    let batch = events.iter().map(new_event).collect();
    store.append(stream, ExpectedVersion::Any, batch).await.unwrap();
}

fn placed(order_id: Uuid) -> OrderEvent {
    projections::testing::placed(order_id, "c-42", 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_follow_an_orders_life() {
    with_database(10, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let order_id = Uuid::new_v4();
        let order = format!("order-{order_id}");
        append(&store, "inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 10 }]).await;
        append(&store, &order, &[placed(order_id)]).await;
        append(
            &store,
            "inventory-SKU-1",
            &[InventoryEvent::StockReserved { sku: "SKU-1".into(), order_id, quantity: 2 }],
        )
        .await;
        append(&store, &order, &[OrderEvent::OrderLineReserved { sku: "SKU-1".into() }]).await;
        let payment = format!("payment-{order_id}");
        append(
            &store,
            &payment,
            &[
                PaymentEvent::PaymentRequested {
                    order_id,
                    amount_cents: 3998,
                    currency: "EUR".into(),
                    payment_token: "tok_visa".into(),
                },
                PaymentEvent::PaymentCaptured { order_id, amount_cents: 3998, provider_ref: "pay_1".into() },
            ],
        )
        .await;
        append(&store, &order, &[OrderEvent::OrderConfirmed { provider_ref: "pay_1".into() }]).await;
        append(
            &store,
            &order,
            &[OrderEvent::OrderCancelled {
                reason: "changed my mind".into(),
                by: CancelledBy::Customer,
                payment_refund_due: true,
            }],
        )
        .await;
        append(
            &store,
            &payment,
            &[PaymentEvent::PaymentRefunded { order_id, amount_cents: 3998, reason: "cancelled".into() }],
        )
        .await;
        append(
            &store,
            "inventory-SKU-1",
            &[InventoryEvent::StockReleased { sku: "SKU-1".into(), order_id, quantity: 2 }],
        )
        .await;

        let running: Vec<Running> = projections::all().into_iter().map(|p| start(p, &store, &pool)).collect();
        eventually("all events applied", || async {
            processed(&pool, "orders").await == 10
                && processed(&pool, "inventory").await == 10
                && processed(&pool, "payments").await == 10
        })
        .await;

        let (status, payment_status, reason, total, version, lines): (
            String,
            String,
            Option<String>,
            i64,
            i64,
            serde_json::Value,
        ) = sqlx::query_as(
            "SELECT status, payment_status, reason, total_cents, version, lines FROM rm_orders WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((status.as_str(), payment_status.as_str()), ("cancelled", "refunded"));
        assert_eq!(reason.as_deref(), Some("changed my mind"));
        assert_eq!((total, version), (3998, 4));
        assert_eq!(lines, json!([{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}]));
        let stock: (i64, i64, i64) =
            sqlx::query_as("SELECT on_hand, reserved, version FROM rm_inventory WHERE sku = 'SKU-1'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stock, (10, 0, 3));
        let payment: (String, i64, String, Option<String>) =
            sqlx::query_as("SELECT status, amount_cents, currency, provider_ref FROM rm_payments WHERE order_id = $1")
                .bind(order_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(payment, ("refunded".into(), 3998, "EUR".into(), Some("pay_1".into())));
        for projector in running {
            projector.stop().await.unwrap();
        }
    })
    .await;
}

/// Killed again and again while events arrive, the projector neither loses
/// nor doubles one: every unit received is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_at_any_point_neither_loses_nor_doubles_an_event() {
    with_database(12, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300u64 {
                    let sku = format!("SKU-{}", i % 3);
                    append(&store, &format!("inventory-{sku}"), &[InventoryEvent::StockReceived { sku, quantity: 1 }])
                        .await;
                    if i % 25 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        };
        for round in 0..8u64 {
            let running = start(by_name("inventory"), &store, &pool);
            tokio::time::sleep(Duration::from_millis(30 + round * 17)).await;
            running.task.abort(); // a crash: whatever was in flight is rolled back
            let _ = running.task.await;
        }
        writer.await.unwrap();
        let running = start(by_name("inventory"), &store, &pool);
        eventually("caught up", || async { processed(&pool, "inventory").await == 300 }).await;
        let on_hand: i64 =
            sqlx::query_scalar("SELECT sum(on_hand)::bigint FROM rm_inventory").fetch_one(&pool).await.unwrap();
        assert_eq!(on_hand, 300);
        running.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_and_takes_over_when_the_first_dies() {
    with_database(12, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let receive = |n: u64| InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: n };
        let first = start(by_name("inventory"), &store, &pool);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = start(by_name("inventory"), &store, &pool);
        append(&store, "inventory-SKU-1", &[receive(1)]).await;
        eventually("the first applies", || async { processed(&pool, "inventory").await == 1 }).await;

        first.task.abort();
        let _ = first.task.await;
        append(&store, "inventory-SKU-1", &[receive(2)]).await;
        eventually("the standby takes over", || async { processed(&pool, "inventory").await == 2 }).await;
        let on_hand: i64 =
            sqlx::query_scalar("SELECT on_hand FROM rm_inventory WHERE sku = 'SKU-1'").fetch_one(&pool).await.unwrap();
        assert_eq!(on_hand, 3);
        second.stop().await.unwrap();
    })
    .await;
}

/// An event the orders projection cannot read stops it, with the event and
/// the error recorded; what came before it is kept, and the others run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_fails_on_an_event_stops_and_reports_it_while_the_others_run() {
    with_database(10, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        let good = Uuid::new_v4();
        append(&store, &format!("order-{good}"), &[placed(good)]).await;
        let broken = NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            payload: json!({"order_id": "not even a uuid"}),
            metadata: Metadata::default(),
        };
        store
            .append(&format!("order-{}", Uuid::new_v4()), ExpectedVersion::NoStream, vec![broken.clone()])
            .await
            .unwrap();
        append(&store, "inventory-SKU-1", &[InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 4 }]).await;

        let orders = start(by_name("orders"), &store, &pool);
        let inventory = start(by_name("inventory"), &store, &pool);
        let outcome = tokio::time::timeout(Duration::from_secs(20), orders.task).await.unwrap().unwrap();
        match outcome {
            Err(RunError::Failed { event_id, .. }) => assert_eq!(event_id, broken.event_id),
            other => panic!("expected the orders projection to stop, got {other:?}"),
        }
        let report = status(&pool, "orders").await.unwrap().unwrap();
        assert_eq!(report.state, "failed");
        assert_eq!(report.events_processed, 1, "the event before the bad one is kept");
        let failure = report.failure.unwrap();
        assert_eq!(failure["event_id"], json!(broken.event_id));
        assert!(failure["error"].as_str().unwrap().contains("decode"), "{failure}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_orders").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 1);

        eventually("inventory runs on", || async { processed(&pool, "inventory").await == 3 }).await;
        inventory.stop().await.unwrap();
    })
    .await;
}

/// A deadlock, a serialization failure, too many connections, an admin
/// shutdown or a failover's read-only transaction is passing trouble, not
/// the event's fault: the projection is interrupted (its supervisor starts it
/// again), never recorded as failed, and applies the event once it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_database_error_interrupts_a_projection_and_never_fails_it() {
    with_database(10, |pool| async move {
        let store = PgEventStore::new(pool.clone());
        for (n, code) in ["40P01", "40001", "53300", "57P01", "25006"].into_iter().enumerate() {
            // The real server raises the error, on the projection's own write.
            let raise = format!(
                "CREATE OR REPLACE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
            );
            sqlx::query(&raise).execute(&pool).await.unwrap();
            sqlx::query(
                "CREATE TRIGGER fail_once BEFORE INSERT ON rm_orders FOR EACH ROW EXECUTE FUNCTION fail_once()",
            )
            .execute(&pool)
            .await
            .unwrap();
            let order_id = Uuid::new_v4();
            append(&store, &format!("order-{order_id}"), &[placed(order_id)]).await;

            let mut interrupted = start(by_name("orders"), &store, &pool);
            match tokio::time::timeout(Duration::from_secs(20), &mut interrupted.task).await.unwrap().unwrap() {
                Err(RunError::Interrupted { .. }) => {}
                other => panic!("{code}: expected an interruption, got {other:?}"),
            }
            let report = status(&pool, "orders").await.unwrap();
            assert!(report.as_ref().is_none_or(|r| r.state != "failed" && r.failure.is_none()), "{code}: {report:?}");

            sqlx::query("DROP TRIGGER fail_once ON rm_orders").execute(&pool).await.unwrap();
            let running = start(by_name("orders"), &store, &pool);
            eventually(&format!("{code}: the order is applied once the trouble passed"), || async {
                processed(&pool, "orders").await == n as u64 + 1
            })
            .await;
            running.stop().await.unwrap();
        }
    })
    .await;
}
