//! The `rm_payments` read model: one row per order's payment.

use async_trait::async_trait;
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use sqlx::PgConnection;

use crate::orders::id_of_stream;
use crate::{ApplyError, Projection};

pub struct PaymentsProjection;

#[async_trait]
impl Projection for PaymentsProjection {
    fn name(&self) -> &'static str {
        "payments"
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), ApplyError> {
        if event.category() != "payment" {
            return Ok(());
        }
        let decoded = PaymentEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
        let (status, amount, currency, provider_ref) = match &decoded {
            PaymentEvent::PaymentRequested { amount_cents, currency, .. } => {
                ("pending", Some(*amount_cents as i64), Some(currency.as_str()), None)
            }
            PaymentEvent::PaymentCaptured { provider_ref, .. } => ("captured", None, None, Some(provider_ref.as_str())),
            PaymentEvent::PaymentDeclined { .. } => ("declined", None, None, None),
            PaymentEvent::PaymentRefunded { .. } => ("refunded", None, None, None),
            PaymentEvent::PaymentVoided { .. } => ("voided", None, None, None),
        };
        // A payment voided before it was requested has no amount: 0 in "XXX",
        // ISO 4217's code for "no currency".
        sqlx::query(
            "INSERT INTO rm_payments AS p (order_id, status, amount_cents, currency, provider_ref, version, updated_at) \
             VALUES ($1, $2, coalesce($3, 0), coalesce($4, 'XXX'), $5, $6, $7) \
             ON CONFLICT (order_id) DO UPDATE SET status = $2, amount_cents = coalesce($3, p.amount_cents), \
                 currency = coalesce($4, p.currency), provider_ref = coalesce($5, p.provider_ref), \
                 version = $6, updated_at = $7 \
             WHERE p.version < $6",
        )
        .bind(id_of_stream(event)?)
        .bind(status)
        .bind(amount)
        .bind(currency)
        .bind(provider_ref)
        .bind(event.stream_version as i64)
        .bind(event.recorded_at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
