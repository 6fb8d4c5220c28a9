//! The facts of an order's life. Past tense, stored as JSON, never deleted.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::codec::{event_payload, DecodeError};
use crate::personal::Sealed;

/// One line of an order, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// Who or what cancelled an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Customer,
    PaymentDeclined,
    Deadline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    /// Schema v2: v1 had no `deadline` (see [`upcast`]). `contact_email`,
    /// sealed, is optional and absent from orders placed before it existed.
    OrderPlaced {
        order_id: Uuid,
        customer_id: String,
        currency: String,
        payment_token: String,
        lines: Vec<OrderLine>,
        total_cents: u64,
        placed_at: DateTime<Utc>,
        deadline: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact_email: Option<Sealed>,
    },
    /// Inventory holds the stock of one line for this order.
    OrderLineReserved { sku: String },
    /// Every line is reserved: the payment may be taken.
    OrderReadyForPayment { amount_cents: u64, currency: String, payment_token: String },
    /// The payment was captured; the order is complete.
    OrderConfirmed { provider_ref: String },
    /// The confirmed order was shipped: its stock leaves the inventory, and
    /// it can no longer be cancelled. The end of its life.
    OrderShipped { shipped_at: DateTime<Utc> },
    /// Inventory could not reserve a line; the order never completes.
    OrderRejected { reason: String, sku: String },
    /// Cancelled by the customer, a declined payment or the deadline.
    OrderCancelled { reason: String, by: CancelledBy, payment_refund_due: bool },
}

event_payload!(
    OrderEvent {
        OrderPlaced,
        OrderLineReserved,
        OrderReadyForPayment,
        OrderConfirmed,
        OrderShipped,
        OrderRejected,
        OrderCancelled
    },
    versions: { OrderPlaced => 2 },
    upcast: upcast
);

/// Deadline given to orders placed before orders had deadlines.
pub const LEGACY_DEADLINE: Duration = Duration::minutes(30);

/// `OrderPlaced` v1 -> v2: orders placed before deadlines existed get
/// `placed_at + 30 minutes`.
fn upcast(event_type: &str, version: u16, mut payload: Value) -> Result<Value, DecodeError> {
    match (event_type, version) {
        ("OrderPlaced", 1) => {
            let placed_at: DateTime<Utc> =
                payload.get("placed_at").cloned().and_then(|v| serde_json::from_value(v).ok()).ok_or_else(|| {
                    DecodeError::Payload {
                        event_type: event_type.to_owned(),
                        source: serde::de::Error::missing_field("placed_at"),
                    }
                })?;
            payload["deadline"] = serde_json::to_value(placed_at + LEGACY_DEADLINE).expect("a timestamp serialises");
            Ok(payload)
        }
        _ => crate::codec::no_upcast(event_type, version, payload),
    }
}
