//! `/v1/admin/streams/{stream_id}`: a stream's events a page at a time, and
//! time travel (the aggregate's state at any version, folded by the domain).

use domain::inventory::InventoryEvent;
use domain::order::OrderEvent;
use projections::testing::placed;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{problem, with_app};

#[tokio::test]
async fn a_stream_reads_a_page_at_a_time_and_its_state_at_any_version() {
    with_app(|app| async move {
        let receipts: Vec<InventoryEvent> =
            (1..=5).map(|n| InventoryEvent::StockReceived { sku: "SKU-T".into(), quantity: n * 10 }).collect();
        app.append("inventory-SKU-T", &receipts).await;

        let first = app.json("/v1/admin/streams/inventory-SKU-T/events?limit=2").await;
        let versions: Vec<u64> =
            first["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
        assert_eq!((versions, &first["next_version"]), (vec![1, 2], &Value::from(3)));
        assert_eq!(first["events"][0]["type"], "StockReceived");
        assert_eq!(first["events"][1]["payload"]["quantity"], 20);
        assert!(first["events"][0]["position"].as_u64().unwrap() > 0);
        let last = app.json("/v1/admin/streams/inventory-SKU-T/events?from_version=5&limit=2").await;
        assert_eq!((last["events"].as_array().unwrap().len(), &last["next_version"]), (1, &Value::Null));

        // 10 + 20 + 30 received by version 3; 150 by the end.
        let at_three = app.json("/v1/admin/streams/inventory-SKU-T/state?version=3").await;
        assert_eq!((at_three["version"].as_u64(), &at_three["state"]["on_hand"]), (Some(3), &Value::from(60)));
        let now = app.json("/v1/admin/streams/inventory-SKU-T/state").await;
        assert_eq!((now["version"].as_u64(), &now["state"]["on_hand"]), (Some(5), &Value::from(150)));
        let beyond = app.json("/v1/admin/streams/inventory-SKU-T/state?version=99").await;
        assert_eq!(beyond["version"], 5);

        let order_id = Uuid::new_v4();
        let stream = format!("order-{order_id}");
        app.append(&stream, &[placed(order_id, "c-1", 0)]).await;
        app.append(&stream, &[OrderEvent::OrderRejected { reason: "no stock".into(), sku: "SKU-1".into() }]).await;
        let pending = app.json(&format!("/v1/admin/streams/{stream}/state?version=1")).await;
        assert_eq!(
            (&pending["state"]["state"], &pending["state"]["status"]),
            (&Value::from("placed"), &Value::from("pending"))
        );
        let rejected = app.json(&format!("/v1/admin/streams/{stream}/state")).await;
        assert_eq!(rejected["state"]["status"], "rejected");
        assert_eq!(rejected["state"]["customer_id"], "c-1");

        problem(app.get(&format!("/v1/admin/streams/order-{}/events", Uuid::new_v4())).await, StatusCode::NOT_FOUND)
            .await;
        problem(app.get(&format!("/v1/admin/streams/payment-{}/state", Uuid::new_v4())).await, StatusCode::NOT_FOUND)
            .await;
        for bad in [
            "order-42/events",
            "shipment-1/events",
            "inventory-/state",
            "inventory-SKU-T/events?limit=0",
            "inventory-SKU-T/state?version=0",
            "inventory-SKU-T/events?from_version=0",
        ] {
            problem(app.get(&format!("/v1/admin/streams/{bad}")).await, StatusCode::BAD_REQUEST).await;
        }
    })
    .await;
}
