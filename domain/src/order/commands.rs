//! What can be asked of an order. Raw client input arrives unvalidated; `decide` checks it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::CancelledBy;
use crate::personal::Sealed;

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place(PlaceOrder),
    /// From the saga: inventory reserved this line.
    RecordLineReserved {
        sku: String,
    },
    /// From the saga: inventory could not reserve this line.
    RecordLineRejected {
        sku: String,
        reason: String,
    },
    /// From the saga: the payment was captured.
    Confirm {
        provider_ref: String,
    },
    /// By the customer (HTTP), or by the saga when the payment is declined.
    Cancel {
        reason: String,
        by: CancelledBy,
    },
    /// By fulfilment (HTTP): the confirmed order leaves the warehouse at `now`.
    Ship {
        now: DateTime<Utc>,
    },
    /// From the deadline watcher: cancel the order if it is still pending at `now`.
    Expire {
        now: DateTime<Utc>,
    },
}

/// `POST /v1/orders`, with the id, clock and deadline supplied by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub payment_token: String,
    pub lines: Vec<LineInput>,
    pub placed_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Where the customer wants to hear about the order: sealed by the
    /// application (after `rules::check_email`) before the decision.
    pub contact_email: Option<Sealed>,
}

/// An order line as the client sent it; numbers are wide so that out-of-range
/// values reach the rules (422) instead of failing to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInput {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}
