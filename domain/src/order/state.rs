//! An order's state, folded from its events.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::{CancelledBy, OrderEvent, OrderLine};
use crate::personal::Sealed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Shipped,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    /// Statuses only move forward: pending -> confirmed -> shipped or
    /// cancelled, pending -> rejected or cancelled.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Confirmed => 1,
            Self::Shipped | Self::Rejected | Self::Cancelled => 2,
        }
    }

    /// The order's life is over: nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Shipped | Self::Rejected | Self::Cancelled)
    }
}

/// As the admin API's time travel shows it: `{"state": "not_placed"}`, or
/// `{"state": "placed", ...the order}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrderState {
    #[default]
    NotPlaced,
    Placed(PlacedOrder),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacedOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub payment_token: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: u64,
    pub deadline: DateTime<Utc>,
    pub status: OrderStatus,
    /// Skus whose reservation the order has recorded.
    pub reserved: BTreeSet<String>,
    pub ready_for_payment: bool,
    /// Who cancelled it, once it is cancelled.
    pub cancelled_by: Option<CancelledBy>,
    /// The address the customer gave for notifications, sealed (ADR 0014).
    pub contact_email: Option<Sealed>,
}

impl PlacedOrder {
    pub fn has_line(&self, sku: &str) -> bool {
        self.lines.iter().any(|l| l.sku == sku)
    }
}

pub fn evolve(state: OrderState, event: &OrderEvent) -> OrderState {
    match (state, event) {
        (
            OrderState::NotPlaced,
            OrderEvent::OrderPlaced {
                order_id,
                customer_id,
                currency,
                payment_token,
                lines,
                total_cents,
                deadline,
                contact_email,
                ..
            },
        ) => OrderState::Placed(PlacedOrder {
            order_id: *order_id,
            customer_id: customer_id.clone(),
            currency: currency.clone(),
            payment_token: payment_token.clone(),
            lines: lines.clone(),
            total_cents: *total_cents,
            deadline: *deadline,
            status: OrderStatus::Pending,
            reserved: BTreeSet::new(),
            ready_for_payment: false,
            cancelled_by: None,
            contact_email: contact_email.clone(),
        }),
        (OrderState::Placed(mut order), event) => {
            match event {
                OrderEvent::OrderPlaced { .. } => {}
                OrderEvent::OrderLineReserved { sku } => {
                    order.reserved.insert(sku.clone());
                }
                OrderEvent::OrderReadyForPayment { .. } => order.ready_for_payment = true,
                OrderEvent::OrderConfirmed { .. } => order.status = OrderStatus::Confirmed,
                OrderEvent::OrderShipped { .. } => order.status = OrderStatus::Shipped,
                OrderEvent::OrderRejected { .. } => order.status = OrderStatus::Rejected,
                OrderEvent::OrderCancelled { by, .. } => {
                    order.status = OrderStatus::Cancelled;
                    order.cancelled_by = Some(*by);
                }
            }
            OrderState::Placed(order)
        }
        // Only OrderPlaced can start a stream; anything else before it is ignored.
        (OrderState::NotPlaced, _) => OrderState::NotPlaced,
    }
}
