//! The facts of an inventory item's life: stock received, reserved for an
//! order, refused to an order, released by an order.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{event_payload, no_upcast};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    StockReceived {
        sku: String,
        quantity: u64,
    },
    StockReserved {
        sku: String,
        order_id: Uuid,
        quantity: u32,
    },
    /// Not enough stock: the order will be rejected.
    StockReservationRejected {
        sku: String,
        order_id: Uuid,
        requested: u32,
        available: u64,
    },
    /// The compensation of a reservation. `quantity` 0 records that the order
    /// ended before it held anything here, so a late reservation is refused.
    StockReleased {
        sku: String,
        order_id: Uuid,
        quantity: u32,
    },
}

event_payload!(
    InventoryEvent { StockReceived, StockReserved, StockReservationRejected, StockReleased },
    versions: {},
    upcast: no_upcast
);
