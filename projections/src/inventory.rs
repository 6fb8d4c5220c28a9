//! The `rm_inventory` read model: stock on hand and reserved, per sku.

use async_trait::async_trait;
use domain::inventory::InventoryEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use sqlx::PgConnection;

use crate::{ApplyError, Projection};

pub struct InventoryProjection;

#[async_trait]
impl Projection for InventoryProjection {
    fn name(&self) -> &'static str {
        "inventory"
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.category() != "inventory" {
            return Ok(());
        }
        let decoded = InventoryEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
        let (sku, on_hand, reserved) = match &decoded {
            InventoryEvent::StockReceived { sku, quantity } => (sku, *quantity as i64, 0),
            InventoryEvent::StockReserved { sku, quantity, .. } => (sku, 0, i64::from(*quantity)),
            InventoryEvent::StockReleased { sku, quantity, .. } => (sku, 0, -i64::from(*quantity)),
            InventoryEvent::StockReservationRejected { sku, .. } => (sku, 0, 0),
        };
        sqlx::query(
            "INSERT INTO rm_inventory AS i (sku, on_hand, reserved, version, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = i.on_hand + $2, reserved = i.reserved + $3, \
                                             version = $4, updated_at = $5 \
             WHERE i.version < $4",
        )
        .bind(sku)
        .bind(on_hand)
        .bind(reserved)
        .bind(event.stream_version as i64)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
