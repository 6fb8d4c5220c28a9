//! The facts of a payment: requested, captured or declined by the gateway,
//! refunded, or voided before any money moved.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{event_payload, no_upcast};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    PaymentRequested {
        order_id: Uuid,
        amount_cents: u64,
        currency: String,
        payment_token: String,
    },
    PaymentCaptured {
        order_id: Uuid,
        amount_cents: u64,
        provider_ref: String,
    },
    PaymentDeclined {
        order_id: Uuid,
        reason: String,
    },
    /// The compensation of a capture.
    PaymentRefunded {
        order_id: Uuid,
        amount_cents: u64,
        reason: String,
    },
    /// The order ended before the payment was captured: nothing is to be
    /// charged, and a capture that still arrives is refunded at once.
    PaymentVoided {
        order_id: Uuid,
        reason: String,
    },
}

event_payload!(
    PaymentEvent { PaymentRequested, PaymentCaptured, PaymentDeclined, PaymentRefunded, PaymentVoided },
    versions: {},
    upcast: no_upcast
);
