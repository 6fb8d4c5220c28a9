//! The payment aggregate: one payment per order, taken through the payment
//! gateway and refunded when the order is cancelled. Stream: `payment-<order uuid>`.

mod events;
#[cfg(test)]
mod tests;

use serde::Serialize;
use uuid::Uuid;

pub use events::PaymentEvent;

use crate::rules::{self, Problems};
use crate::{Aggregate, DomainError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// The order is ready for payment.
    Request { order_id: Uuid, amount_cents: i64, currency: String, payment_token: String },
    /// The gateway captured the money.
    Capture { order_id: Uuid, provider_ref: String },
    /// The gateway declined.
    Decline { order_id: Uuid, reason: String },
    /// The order was cancelled: give back what was captured, or void what was not.
    Refund { order_id: Uuid, reason: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    #[default]
    NotRequested,
    Requested,
    Captured,
    Declined,
    Refunded,
    Voided,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PaymentState {
    pub status: PaymentStatus,
    pub amount_cents: u64,
    pub currency: String,
    pub payment_token: String,
    pub provider_ref: Option<String>,
    pub captured_cents: u64,
    pub refunded_cents: u64,
    /// The payment was requested, so a charge may have reached the gateway,
    /// even if the payment was voided since.
    pub requested: bool,
}

impl PaymentState {
    /// Voided after it was requested: whether the gateway charged is not
    /// known from the events (an answer may have been lost, a retry may still
    /// arrive), and must be asked of the gateway.
    pub fn voided_with_charge_unknown(&self) -> bool {
        self.status == PaymentStatus::Voided && self.requested
    }
}

pub struct Payment;

impl Aggregate for Payment {
    const CATEGORY: &'static str = "payment";
    type State = PaymentState;
    type Command = PaymentCommand;
    type Event = PaymentEvent;

    fn decide(state: &PaymentState, command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        use PaymentCommand as C;
        use PaymentStatus as S;
        match (state.status, command) {
            (S::NotRequested, C::Request { order_id, amount_cents, currency, payment_token }) => {
                let mut problems = Problems::default();
                if amount_cents < 0 {
                    problems.add("amount_cents", "must not be negative");
                }
                rules::check_currency(&mut problems, "currency", &currency);
                rules::check_text(&mut problems, "payment_token", &payment_token, rules::MAX_TOKEN_CHARS);
                problems.into_result()?;
                Ok(vec![PaymentEvent::PaymentRequested {
                    order_id,
                    amount_cents: amount_cents as u64,
                    currency,
                    payment_token,
                }])
            }
            // Redelivered, or the order ended before its payment started.
            (_, C::Request { .. }) => Ok(vec![]),

            (S::NotRequested, C::Capture { .. } | C::Decline { .. }) => Err(DomainError::NotFound("payment")),
            (S::Requested, C::Capture { order_id, provider_ref }) => {
                Ok(vec![PaymentEvent::PaymentCaptured { order_id, amount_cents: state.amount_cents, provider_ref }])
            }
            (S::Voided, C::Capture { order_id, provider_ref }) => Ok(vec![
                PaymentEvent::PaymentCaptured { order_id, amount_cents: state.amount_cents, provider_ref },
                PaymentEvent::PaymentRefunded {
                    order_id,
                    amount_cents: state.amount_cents,
                    reason: "captured after the order ended".into(),
                },
            ]),
            (S::Captured | S::Refunded, C::Capture { provider_ref, .. }) => {
                if state.provider_ref.as_deref() == Some(provider_ref.as_str()) {
                    Ok(vec![])
                } else {
                    Err(DomainError::conflict("the payment was captured already"))
                }
            }
            (S::Declined, C::Capture { .. }) => Err(DomainError::conflict("the payment was declined")),

            (S::Requested, C::Decline { order_id, reason }) => {
                Ok(vec![PaymentEvent::PaymentDeclined { order_id, reason }])
            }
            (S::Declined | S::Voided, C::Decline { .. }) => Ok(vec![]),
            (S::Captured | S::Refunded, C::Decline { .. }) => Err(DomainError::conflict("the payment was captured")),

            (S::Captured, C::Refund { order_id, reason }) => Ok(vec![PaymentEvent::PaymentRefunded {
                order_id,
                amount_cents: state.captured_cents - state.refunded_cents,
                reason,
            }]),
            (S::NotRequested | S::Requested, C::Refund { order_id, reason }) => {
                Ok(vec![PaymentEvent::PaymentVoided { order_id, reason }])
            }
            (S::Refunded | S::Declined | S::Voided, C::Refund { .. }) => Ok(vec![]),
        }
    }

    fn evolve(mut state: PaymentState, event: &PaymentEvent) -> PaymentState {
        match event {
            PaymentEvent::PaymentRequested { amount_cents, currency, payment_token, .. } => {
                state.status = PaymentStatus::Requested;
                state.requested = true;
                state.amount_cents = *amount_cents;
                state.currency = currency.clone();
                state.payment_token = payment_token.clone();
            }
            PaymentEvent::PaymentCaptured { amount_cents, provider_ref, .. } => {
                state.status = PaymentStatus::Captured;
                state.captured_cents += amount_cents;
                state.provider_ref = Some(provider_ref.clone());
            }
            PaymentEvent::PaymentDeclined { .. } => state.status = PaymentStatus::Declined,
            PaymentEvent::PaymentRefunded { amount_cents, .. } => {
                state.status = PaymentStatus::Refunded;
                state.refunded_cents += amount_cents;
            }
            PaymentEvent::PaymentVoided { .. } => state.status = PaymentStatus::Voided,
        }
        state
    }
}
