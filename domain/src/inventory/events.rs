//! The facts of an inventory item's life: stock received, reserved for an
//! order, refused to an order, released by an order, shipped with an order,
//! and a reservation skipped because its order was released first.

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
    /// The order's hold ends (`quantity` back to available), or, with
    /// nothing held, the order ended before or without its reservation.
    StockReleased {
        sku: String,
        order_id: Uuid,
        quantity: u32,
    },
    /// The order shipped: its held stock leaves (on hand and reserved drop).
    StockShipped {
        sku: String,
        order_id: Uuid,
        quantity: u32,
    },
    /// The order's reservation came after its release: nothing is reserved.
    StockReservationSkipped {
        sku: String,
        order_id: Uuid,
    },
}

event_payload!(
    InventoryEvent {
        StockReceived,
        StockReserved,
        StockReservationRejected,
        StockReleased,
        StockShipped,
        StockReservationSkipped
    },
    versions: {},
    upcast: no_upcast
);
