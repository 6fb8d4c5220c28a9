//! The inventory aggregate: stock of one sku, and which orders hold part of it.
//! Stream: `inventory-<sku>`.

mod events;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

pub use events::InventoryEvent;

use crate::rules::{self, Problems};
use crate::{Aggregate, DomainError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// `POST /v1/inventory/{sku}/receipts`; creates the item on first receipt.
    Receive { sku: String, quantity: i64 },
    /// From the saga; idempotent per order.
    Reserve { sku: String, order_id: Uuid, quantity: i64 },
    /// From the saga, when the order is rejected or cancelled; idempotent per order.
    Release { sku: String, order_id: Uuid },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryState {
    pub on_hand: u64,
    pub reserved: u64,
    /// Quantity held per order.
    pub holds: BTreeMap<Uuid, u32>,
    /// Orders that were refused or have released their hold: nothing more is reserved for them.
    pub closed: BTreeSet<Uuid>,
}

impl InventoryState {
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }
}

pub struct Inventory;

impl Aggregate for Inventory {
    const CATEGORY: &'static str = "inventory";
    type State = InventoryState;
    type Command = InventoryCommand;
    type Event = InventoryEvent;

    fn decide(state: &InventoryState, command: InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
        match command {
            InventoryCommand::Receive { sku, quantity } => {
                let mut problems = Problems::default();
                rules::check_sku(&mut problems, "sku", &sku);
                rules::check_quantity(&mut problems, "quantity", quantity, rules::MAX_RECEIPT_QUANTITY);
                problems.into_result()?;
                let quantity = quantity as u64;
                if state.on_hand + quantity > rules::MAX_ON_HAND {
                    return Err(DomainError::conflict(format!(
                        "an item holds at most {} units; {} are on hand",
                        rules::MAX_ON_HAND,
                        state.on_hand
                    )));
                }
                Ok(vec![InventoryEvent::StockReceived { sku, quantity }])
            }
            InventoryCommand::Reserve { sku, order_id, quantity } => {
                let mut problems = Problems::default();
                rules::check_sku(&mut problems, "sku", &sku);
                rules::check_quantity(&mut problems, "quantity", quantity, rules::MAX_LINE_QUANTITY);
                problems.into_result()?;
                if state.holds.contains_key(&order_id) || state.closed.contains(&order_id) {
                    return Ok(vec![]);
                }
                let requested = quantity as u32;
                Ok(vec![if state.available() >= u64::from(requested) {
                    InventoryEvent::StockReserved { sku, order_id, quantity: requested }
                } else {
                    InventoryEvent::StockReservationRejected { sku, order_id, requested, available: state.available() }
                }])
            }
            InventoryCommand::Release { sku, order_id } => {
                let mut problems = Problems::default();
                rules::check_sku(&mut problems, "sku", &sku);
                problems.into_result()?;
                if state.closed.contains(&order_id) && !state.holds.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                let quantity = state.holds.get(&order_id).copied().unwrap_or(0);
                Ok(vec![InventoryEvent::StockReleased { sku, order_id, quantity }])
            }
        }
    }

    fn evolve(mut state: InventoryState, event: &InventoryEvent) -> InventoryState {
        match event {
            InventoryEvent::StockReceived { quantity, .. } => state.on_hand += quantity,
            InventoryEvent::StockReserved { order_id, quantity, .. } => {
                state.reserved += u64::from(*quantity);
                state.holds.insert(*order_id, *quantity);
            }
            InventoryEvent::StockReservationRejected { order_id, .. } => {
                state.closed.insert(*order_id);
            }
            InventoryEvent::StockReleased { order_id, .. } => {
                if let Some(held) = state.holds.remove(order_id) {
                    state.reserved -= u64::from(held);
                }
                state.closed.insert(*order_id);
            }
        }
        state
    }
}
