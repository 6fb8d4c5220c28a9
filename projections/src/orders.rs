//! The `rm_orders` read model: one row per order, with its payment status.
//! Folds `order-*` events, and `payment-*` events for `payment_status`.

use async_trait::async_trait;
use domain::order::OrderEvent;
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{ApplyError, Projection};

pub struct OrdersProjection;

#[async_trait]
impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        "orders"
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), ApplyError> {
        match event.category() {
            "order" => {
                let decoded = OrderEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
                apply_order(tx, event, decoded).await
            }
            "payment" => {
                let decoded =
                    PaymentEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
                apply_payment(tx, event, &decoded).await
            }
            _ => Ok(()),
        }
    }
}

pub(crate) fn id_of_stream(event: &RecordedEvent) -> Result<Uuid, ApplyError> {
    let id = event.stream_id.split_once('-').map(|(_, id)| id).unwrap_or_default();
    Uuid::parse_str(id).map_err(|_| ApplyError::Inconsistent(format!("stream {} has no uuid", event.stream_id)))
}

async fn apply_order(tx: &mut PgConnection, event: &RecordedEvent, decoded: OrderEvent) -> Result<(), ApplyError> {
    let version = event.stream_version as i64;
    let (status, reason) = match decoded {
        OrderEvent::OrderPlaced { order_id, customer_id, currency, lines, total_cents, placed_at, .. } => {
            let lines = serde_json::to_value(&lines).map_err(|e| ApplyError::Inconsistent(e.to_string()))?;
            sqlx::query(
                "INSERT INTO rm_orders (order_id, customer_id, status, payment_status, currency, total_cents, lines, \
                                        version, created_at, updated_at) \
                 VALUES ($1, $2, 'pending', 'none', $3, $4, $5, $6, $7, $8) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(customer_id)
            .bind(currency)
            .bind(total_cents as i64)
            .bind(lines)
            .bind(version)
            .bind(placed_at)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        OrderEvent::OrderConfirmed { .. } => (Some("confirmed"), None),
        OrderEvent::OrderRejected { reason, .. } => (Some("rejected"), Some(reason)),
        OrderEvent::OrderCancelled { reason, .. } => (Some("cancelled"), Some(reason)),
        OrderEvent::OrderLineReserved { .. } | OrderEvent::OrderReadyForPayment { .. } => (None, None),
    };
    sqlx::query(
        "UPDATE rm_orders SET status = coalesce($3, status), reason = coalesce($4, reason), version = $2, updated_at = $5 \
         WHERE order_id = $1 AND version < $2",
    )
    .bind(id_of_stream(event)?)
    .bind(version)
    .bind(status)
    .bind(reason)
    .bind(event.recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn apply_payment(tx: &mut PgConnection, event: &RecordedEvent, decoded: &PaymentEvent) -> Result<(), ApplyError> {
    let payment_status = match decoded {
        PaymentEvent::PaymentRequested { .. } => "pending",
        PaymentEvent::PaymentCaptured { .. } => "captured",
        PaymentEvent::PaymentDeclined { .. } => "declined",
        PaymentEvent::PaymentRefunded { .. } => "refunded",
        // Voided before any money moved: no payment.
        PaymentEvent::PaymentVoided { .. } => "none",
    };
    sqlx::query(
        "UPDATE rm_orders SET payment_status = $3, payment_version = $2, updated_at = greatest(updated_at, $4) \
         WHERE order_id = $1 AND payment_version < $2",
    )
    .bind(id_of_stream(event)?)
    .bind(event.stream_version as i64)
    .bind(payment_status)
    .bind(event.recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
