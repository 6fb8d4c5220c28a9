//! The `rm_payments` read model: one row per order's payment.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rows::id_of_stream;
use crate::{ApplyError, RowModel};

pub struct Payments;

/// A payment as the query API shows it (`GET /v1/payments/{order_id}`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, ToSchema)]
#[schema(as = PaymentView)]
pub struct PaymentRow {
    pub order_id: Uuid,
    /// `pending`, `captured`, `declined`, `refunded` or `voided`.
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub provider_ref: Option<String>,
    /// The payment stream's version.
    #[serde(skip)]
    #[schema(ignore)]
    pub version: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "order_id, status, amount_cents, currency, provider_ref, version, updated_at";

/// The payment of the order `order_id`.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM rm_payments WHERE order_id = $1");
    sqlx::query_as(&sql).bind(order_id).fetch_optional(pool).await
}

/// What one payment event says; `None` fields keep what the row has.
#[derive(Debug)]
pub struct PaymentChange {
    version: i64,
    status: &'static str,
    amount_cents: Option<i64>,
    currency: Option<String>,
    provider_ref: Option<String>,
    at: DateTime<Utc>,
}

#[async_trait]
impl RowModel for Payments {
    const NAME: &'static str = "payments";
    const TABLES: &'static [&'static str] = &["rm_payments"];
    const CATEGORIES: &'static [&'static str] = &["payment"];
    type Key = Uuid;
    type Row = PaymentRow;
    type Change = PaymentChange;

    fn change(event: &RecordedEvent) -> Result<Option<(Uuid, PaymentChange)>, ApplyError> {
        if event.category() != "payment" {
            return Ok(None);
        }
        let decoded = PaymentEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
        let (status, amount_cents, currency, provider_ref) = match decoded {
            PaymentEvent::PaymentRequested { amount_cents, currency, .. } => {
                ("pending", Some(amount_cents as i64), Some(currency), None)
            }
            PaymentEvent::PaymentCaptured { provider_ref, .. } => ("captured", None, None, Some(provider_ref)),
            PaymentEvent::PaymentDeclined { .. } => ("declined", None, None, None),
            PaymentEvent::PaymentRefunded { .. } => ("refunded", None, None, None),
            PaymentEvent::PaymentVoided { .. } => ("voided", None, None, None),
        };
        let version = event.stream_version as i64;
        let change = PaymentChange { version, status, amount_cents, currency, provider_ref, at: event.recorded_at };
        Ok(Some((id_of_stream(event)?, change)))
    }

    fn apply(order_id: &Uuid, row: Option<PaymentRow>, change: PaymentChange) -> Option<PaymentRow> {
        let Some(mut row) = row else {
            // A payment voided before it was requested has no amount: 0 in
            // "XXX", ISO 4217's code for "no currency".
            return Some(PaymentRow {
                order_id: *order_id,
                status: change.status.into(),
                amount_cents: change.amount_cents.unwrap_or(0),
                currency: change.currency.unwrap_or_else(|| "XXX".into()),
                provider_ref: change.provider_ref,
                version: change.version,
                updated_at: change.at,
            });
        };
        if change.version > row.version {
            change.status.clone_into(&mut row.status);
            row.amount_cents = change.amount_cents.unwrap_or(row.amount_cents);
            row.currency = change.currency.unwrap_or(row.currency);
            row.provider_ref = change.provider_ref.or(row.provider_ref);
            row.version = change.version;
            row.updated_at = change.at;
        }
        Some(row)
    }

    async fn load(tx: &mut PgConnection, keys: &[Uuid]) -> Result<Vec<(Uuid, PaymentRow)>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM rm_payments WHERE order_id = ANY($1)");
        let rows: Vec<PaymentRow> = sqlx::query_as(&sql)
            .bind(keys)
            .persistent(false) // see RowModel::load
            .fetch_all(tx)
            .await?;
        Ok(rows.into_iter().map(|row| (row.order_id, row)).collect())
    }

    async fn save(tx: &mut PgConnection, rows: Vec<PaymentRow>) -> Result<(), sqlx::Error> {
        let (mut order_id, mut status, mut amount_cents, mut currency, mut provider_ref, mut version, mut updated_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            order_id.push(row.order_id);
            status.push(row.status);
            amount_cents.push(row.amount_cents);
            currency.push(row.currency);
            provider_ref.push(row.provider_ref);
            version.push(row.version);
            updated_at.push(row.updated_at);
        }
        sqlx::query(
            "INSERT INTO rm_payments (order_id, status, amount_cents, currency, provider_ref, version, updated_at) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], \
                                  $7::timestamptz[]) \
             ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, amount_cents = excluded.amount_cents, \
                 currency = excluded.currency, provider_ref = excluded.provider_ref, version = excluded.version, \
                 updated_at = excluded.updated_at",
        )
        .bind(order_id)
        .bind(status)
        .bind(amount_cents)
        .bind(currency)
        .bind(provider_ref)
        .bind(version)
        .bind(updated_at)
        .execute(tx)
        .await?;
        Ok(())
    }
}
