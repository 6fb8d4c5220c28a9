//! The inventory aggregate: stock of one sku, and which orders hold part of it.
//! Stream: `inventory-<sku>`.

mod events;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use events::InventoryEvent;

use crate::rules::{self, Problems};
use crate::{Aggregate, DomainError, SnapshotPolicy};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    Receive {
        sku: String,
        quantity: i64,
    },
    Reserve {
        sku: String,
        order_id: Uuid,
        quantity: i64,
    },
    Release {
        sku: String,
        order_id: Uuid,
    },
    /// The order shipped: what it holds leaves the warehouse.
    Ship {
        sku: String,
        order_id: Uuid,
    },
}

/// An item's stock, and the orders it is still in touch with: those holding
/// stock (pending, or confirmed and not shipped), and those that have had
/// one of their two messages but not the other (see [`Awaiting`]). Ended
/// orders are forgotten, so the state is as large as the open orders, not
/// as the item's history. A reservation or release delivered again after
/// its order is forgotten is recognised by the event store instead: its
/// events' ids are derived from the message, and the store answers a
/// repeated append with the stored result (ADR 0011).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryState {
    pub on_hand: u64,
    pub reserved: u64,
    /// What each open order holds.
    pub holds: BTreeMap<Uuid, u32>,
    /// Orders that had one of their two messages (a reservation, and a
    /// release or shipment) but nothing to hold: each waits for the other one.
    pub awaiting: BTreeMap<Uuid, Awaiting>,
}

/// Each order meets an item twice: its reservation, then its release or
/// shipment. With nothing held in between, the item remembers which of the
/// two it still expects, until it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Awaiting {
    /// The reservation was refused: the order's release will come.
    Release,
    /// The order was released before its reservation came: the reservation,
    /// when it comes, reserves nothing.
    Reservation,
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

    /// A best-selling item's stream grows by an order's reservation and
    /// release or shipment, for years; its state stays as small as its open orders.
    const SNAPSHOTS: Option<SnapshotPolicy> = Some(SnapshotPolicy { schema_version: 1, every: 100 });

    fn encode_state(state: &InventoryState) -> serde_json::Value {
        serde_json::to_value(state).expect("an inventory state serialises")
    }

    fn decode_state(state: serde_json::Value) -> Option<InventoryState> {
        serde_json::from_value(state).ok()
    }

    fn state_size(state: &InventoryState) -> u64 {
        (state.holds.len() + state.awaiting.len()) as u64
    }

    fn decide(state: &InventoryState, command: InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
        match command {
            InventoryCommand::Receive { sku, quantity } => receive(state, sku, quantity),
            InventoryCommand::Reserve { sku, order_id, quantity } => reserve(state, sku, order_id, quantity),
            InventoryCommand::Release { sku, order_id } => {
                check_sku(&sku)?;
                let quantity = match (state.holds.get(&order_id), state.awaiting.get(&order_id)) {
                    (Some(held), _) => *held,
                    // The early release delivered again.
                    (None, Some(Awaiting::Reservation)) => return Ok(vec![]),
                    // After a refusal, or before the reservation: nothing held.
                    (None, Some(Awaiting::Release) | None) => 0,
                };
                Ok(vec![InventoryEvent::StockReleased { sku, order_id, quantity }])
            }
            InventoryCommand::Ship { sku, order_id } => {
                check_sku(&sku)?;
                Ok(match state.holds.get(&order_id) {
                    Some(held) => vec![InventoryEvent::StockShipped { sku, order_id, quantity: *held }],
                    // Delivered again after the shipment ended the hold.
                    None => vec![],
                })
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
                state.awaiting.insert(*order_id, Awaiting::Release);
            }
            InventoryEvent::StockReservationSkipped { order_id, .. } => {
                state.awaiting.remove(order_id);
            }
            InventoryEvent::StockReleased { order_id, .. } => {
                if let Some(held) = state.holds.remove(order_id) {
                    state.reserved -= u64::from(held);
                } else if state.awaiting.remove(order_id) != Some(Awaiting::Release) {
                    state.awaiting.insert(*order_id, Awaiting::Reservation);
                }
            }
            InventoryEvent::StockShipped { order_id, .. } => {
                if let Some(held) = state.holds.remove(order_id) {
                    state.reserved -= u64::from(held);
                    state.on_hand -= u64::from(held);
                }
            }
        }
        state
    }
}

fn check_sku(sku: &str) -> Result<(), DomainError> {
    let mut problems = Problems::default();
    rules::check_sku(&mut problems, "sku", sku);
    problems.into_result()
}

fn receive(state: &InventoryState, sku: String, quantity: i64) -> Result<Vec<InventoryEvent>, DomainError> {
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

fn reserve(
    state: &InventoryState,
    sku: String,
    order_id: Uuid,
    quantity: i64,
) -> Result<Vec<InventoryEvent>, DomainError> {
    let mut problems = Problems::default();
    rules::check_sku(&mut problems, "sku", &sku);
    rules::check_quantity(&mut problems, "quantity", quantity, rules::MAX_LINE_QUANTITY);
    problems.into_result()?;
    if state.holds.contains_key(&order_id) {
        return Ok(vec![]); // delivered again while held
    }
    match state.awaiting.get(&order_id) {
        Some(Awaiting::Reservation) => return Ok(vec![InventoryEvent::StockReservationSkipped { sku, order_id }]),
        Some(Awaiting::Release) => return Ok(vec![]), // refused before, delivered again
        None => {}
    }
    let requested = quantity as u32;
    Ok(vec![if state.available() >= u64::from(requested) {
        InventoryEvent::StockReserved { sku, order_id, quantity: requested }
    } else {
        InventoryEvent::StockReservationRejected { sku, order_id, requested, available: state.available() }
    }])
}
