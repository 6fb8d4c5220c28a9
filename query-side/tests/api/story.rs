//! `GET /v1/admin/orders/{order_id}/story`: every event of the order's
//! correlation ids across streams, in log order, timed; nothing of others.

use domain::inventory::InventoryEvent;
use domain::order::{CancelledBy, OrderEvent};
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent};
use projections::testing::placed;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::helpers::{problem, with_app, TestApp};

async fn append(app: &TestApp, stream: &str, correlation_id: &str, event: impl EventPayload) -> u64 {
    let new = NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        payload: event.to_payload(),
        metadata: Metadata { correlation_id: correlation_id.into(), actor: "test".into(), ..Metadata::default() },
    };
    app.store.append(stream, ExpectedVersion::Any, vec![new]).await.unwrap().log_position.position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_story_is_every_event_of_its_correlations_in_log_order() {
    with_app(|app| async move {
        let (order, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sku = "SKU-S";
        let stock = format!("inventory-{sku}");
        append(&app, &stock, "corr-stock", InventoryEvent::StockReceived { sku: sku.into(), quantity: 9 }).await;
        append(&app, &format!("order-{order}"), "corr-A", placed(order, "c-1", 0)).await;
        append(&app, &format!("order-{other}"), "corr-B", placed(other, "c-2", 0)).await;
        append(&app, &stock, "corr-B", InventoryEvent::StockReserved { sku: sku.into(), order_id: other, quantity: 1 })
            .await;
        append(&app, &stock, "corr-A", InventoryEvent::StockReserved { sku: sku.into(), order_id: order, quantity: 2 })
            .await;
        let request = PaymentEvent::PaymentRequested {
            order_id: order,
            amount_cents: 100,
            currency: "EUR".into(),
            payment_token: "tok".into(),
        };
        append(&app, &format!("payment-{order}"), "corr-A", request).await;
        let cancel =
            OrderEvent::OrderCancelled { reason: "no".into(), by: CancelledBy::Customer, payment_refund_due: false };
        append(&app, &format!("order-{order}"), "corr-C", cancel).await;
        let last = append(
            &app,
            &stock,
            "corr-C",
            InventoryEvent::StockReleased { sku: sku.into(), order_id: order, quantity: 2 },
        )
        .await;
        let _projecting = app.project();
        let mut caught_up = false;
        for _ in 0..200 {
            let admin = app.json("/v1/admin/projections").await;
            if admin["projections"].as_array().unwrap().iter().any(|p| p["name"] == "story" && p["checkpoint"] == last)
            {
                caught_up = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(caught_up, "the story projection did not catch up");

        let story = app.json(&format!("/v1/admin/orders/{order}/story")).await;
        assert_eq!(story["correlation_ids"], serde_json::json!(["corr-A", "corr-C"]));
        let steps = story["steps"].as_array().unwrap();
        let told: Vec<(&str, &str)> =
            steps.iter().map(|s| (s["type"].as_str().unwrap(), s["stream_id"].as_str().unwrap())).collect();
        let (order_stream, payment_stream) = (format!("order-{order}"), format!("payment-{order}"));
        assert_eq!(
            told,
            [
                ("OrderPlaced", order_stream.as_str()),
                ("StockReserved", stock.as_str()),
                ("PaymentRequested", payment_stream.as_str()),
                ("OrderCancelled", order_stream.as_str()),
                ("StockReleased", stock.as_str()),
            ]
        );
        let positions: Vec<i64> = steps.iter().map(|s| s["position"].as_i64().unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        assert_eq!(steps[0]["since_previous_ms"], 0);
        assert!(steps.iter().all(|s| s["since_start_ms"].as_i64().unwrap() >= 0));
        assert_eq!(story["dead_letters"], serde_json::json!([]));

        problem(app.get(&format!("/v1/admin/orders/{}/story", Uuid::new_v4())).await, StatusCode::NOT_FOUND).await;
        problem(app.get("/v1/admin/orders/nope/story").await, StatusCode::BAD_REQUEST).await;
    })
    .await;
}
