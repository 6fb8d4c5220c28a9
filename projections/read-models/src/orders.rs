//! The `rm_orders` read model: one row per order, with its payment status.
//! Folds `order-*` events, and `payment-*` events for `payment_status`; read
//! by id, by customer and status (newest first, a page at a time).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::order::OrderEvent;
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rows::id_of_stream;
use crate::{ApplyError, RowModel};

pub struct Orders;

/// An order as the query API shows it (`GET /v1/orders/{id}`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, ToSchema)]
#[schema(as = OrderView)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    /// `pending`, `confirmed`, `shipped`, `rejected` or `cancelled`.
    pub status: String,
    /// `none`, `pending`, `captured`, `declined` or `refunded`.
    pub payment_status: String,
    pub reason: Option<String>,
    pub currency: String,
    pub total_cents: i64,
    #[schema(value_type = Vec<LineView>)]
    pub lines: serde_json::Value,
    /// The order stream's version.
    pub version: i64,
    /// The payment stream's version.
    #[serde(skip)]
    #[schema(ignore)]
    pub payment_version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The contact address as the event has it: sealed under this key
    /// (ADR 0014). Never shown; the query API opens it into `contact_email`.
    #[serde(skip)]
    #[schema(ignore)]
    pub contact_key_id: Option<Uuid>,
    #[serde(skip)]
    #[schema(ignore)]
    pub contact_email_sealed: Option<String>,
    /// The address the customer gave with the order, if any and not erased.
    #[sqlx(skip)]
    pub contact_email: Option<String>,
    /// The customer's personal data was erased: `contact_email` is gone for good.
    #[sqlx(skip)]
    pub contact_email_erased: bool,
}

/// One line of an order, as the order shows it (`lines` is stored as JSON).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the `lines` JSON
pub struct LineView {
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

const COLUMNS: &str = "order_id, customer_id, status, payment_status, reason, currency, total_cents, lines, \
                       version, payment_version, created_at, updated_at, contact_key_id, contact_email_sealed";

/// The order `order_id`.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM rm_orders WHERE order_id = $1");
    sqlx::query_as(&sql).bind(order_id).fetch_optional(pool).await
}

/// Who placed the order `order_id`.
pub async fn customer_of(pool: &PgPool, order_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM rm_orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
}

/// Which orders a page lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub customer_id: Option<String>,
    pub status: Option<String>,
    /// The `(created_at, order_id)` of the previous page's last order.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// The list's statement for the filters `filter` has: one per combination
/// (eight), each with its own plan on the index that serves it. A single
/// statement with `($1 IS NULL OR customer_id = $1)` filters lost the
/// customer's index under its generic plan and read most of the table.
/// Parameters in order: customer, status, the previous page's key (two),
/// the limit.
pub fn page_sql(filter: &Filter) -> String {
    let mut conditions = Vec::new();
    let mut parameters = 0;
    let mut next = || {
        parameters += 1;
        format!("${parameters}")
    };
    if filter.customer_id.is_some() {
        conditions.push(format!("customer_id = {}", next()));
    }
    if filter.status.is_some() {
        conditions.push(format!("status = {}", next()));
    }
    if filter.after.is_some() {
        let (at, order_id) = (next(), next());
        conditions.push(format!("(created_at, order_id) < ({at}::timestamptz, {order_id}::uuid)"));
    }
    let limit = next();
    let filters = if conditions.is_empty() { String::new() } else { format!("WHERE {} ", conditions.join(" AND ")) };
    format!("SELECT {COLUMNS} FROM rm_orders {filters}ORDER BY created_at DESC, order_id DESC LIMIT {limit}")
}

/// Up to `limit` orders, newest first, and the key to ask for the next page
/// with (`None` on the last page). Keyed by `(created_at, order_id)`, pages
/// stay stable while new orders arrive.
pub async fn page(
    pool: &PgPool,
    filter: &Filter,
    limit: u32,
) -> Result<(Vec<OrderRow>, Option<(DateTime<Utc>, Uuid)>), sqlx::Error> {
    let sql = page_sql(filter);
    let mut query = sqlx::query_as(&sql);
    if let Some(customer_id) = &filter.customer_id {
        query = query.bind(customer_id);
    }
    if let Some(status) = &filter.status {
        query = query.bind(status);
    }
    if let Some((at, order_id)) = filter.after {
        query = query.bind(at).bind(order_id);
    }
    let mut items: Vec<OrderRow> = query.bind(i64::from(limit) + 1).fetch_all(pool).await?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| (last.created_at, last.order_id))
    } else {
        None
    };
    Ok((items, next))
}

#[derive(Debug)]
pub enum OrderChange {
    Placed(Box<OrderRow>),
    Order { version: i64, status: Option<&'static str>, reason: Option<String>, at: DateTime<Utc> },
    Payment { version: i64, payment_status: &'static str, at: DateTime<Utc> },
}

#[async_trait]
impl RowModel for Orders {
    const NAME: &'static str = "orders";
    const TABLES: &'static [&'static str] = &["rm_orders"];
    const CATEGORIES: &'static [&'static str] = &["order", "payment"];
    type Key = Uuid;
    type Row = OrderRow;
    type Change = OrderChange;

    fn change(event: &RecordedEvent) -> Result<Option<(Uuid, OrderChange)>, ApplyError> {
        let version = event.stream_version as i64;
        let at = event.recorded_at;
        let change = match event.category() {
            "order" => match OrderEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())? {
                OrderEvent::OrderPlaced {
                    order_id,
                    customer_id,
                    currency,
                    lines,
                    total_cents,
                    placed_at,
                    contact_email,
                    ..
                } => {
                    let lines = serde_json::to_value(&lines).map_err(|e| ApplyError::Inconsistent(e.to_string()))?;
                    let row = OrderRow {
                        order_id,
                        customer_id,
                        status: "pending".into(),
                        payment_status: "none".into(),
                        reason: None,
                        currency,
                        total_cents: total_cents as i64,
                        lines,
                        version,
                        payment_version: 0,
                        created_at: placed_at,
                        updated_at: at,
                        contact_key_id: contact_email.as_ref().map(|sealed| sealed.key_id),
                        contact_email_sealed: contact_email.map(|sealed| sealed.sealed),
                        contact_email: None,
                        contact_email_erased: false,
                    };
                    return Ok(Some((order_id, OrderChange::Placed(Box::new(row)))));
                }
                OrderEvent::OrderConfirmed { .. } => {
                    OrderChange::Order { version, status: Some("confirmed"), reason: None, at }
                }
                OrderEvent::OrderShipped { .. } => {
                    OrderChange::Order { version, status: Some("shipped"), reason: None, at }
                }
                OrderEvent::OrderRejected { reason, .. } => {
                    OrderChange::Order { version, status: Some("rejected"), reason: Some(reason), at }
                }
                OrderEvent::OrderCancelled { reason, .. } => {
                    OrderChange::Order { version, status: Some("cancelled"), reason: Some(reason), at }
                }
                OrderEvent::OrderLineReserved { .. } | OrderEvent::OrderReadyForPayment { .. } => {
                    OrderChange::Order { version, status: None, reason: None, at }
                }
            },
            "payment" => {
                let payment_status =
                    match PaymentEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())? {
                        PaymentEvent::PaymentRequested { .. } => "pending",
                        PaymentEvent::PaymentCaptured { .. } => "captured",
                        PaymentEvent::PaymentDeclined { .. } => "declined",
                        PaymentEvent::PaymentRefunded { .. } => "refunded",
                        // Voided before any money moved: no payment.
                        PaymentEvent::PaymentVoided { .. } => "none",
                    };
                OrderChange::Payment { version, payment_status, at }
            }
            _ => return Ok(None),
        };
        Ok(Some((id_of_stream(event)?, change)))
    }

    fn apply(_: &Uuid, row: Option<OrderRow>, change: OrderChange) -> Option<OrderRow> {
        match (row, change) {
            (None, OrderChange::Placed(placed)) => Some(*placed),
            (Some(mut row), OrderChange::Order { version, status, reason, at }) if version > row.version => {
                if let Some(status) = status {
                    status.clone_into(&mut row.status);
                }
                if reason.is_some() {
                    row.reason = reason;
                }
                row.version = version;
                row.updated_at = at;
                Some(row)
            }
            (Some(mut row), OrderChange::Payment { version, payment_status, at }) if version > row.payment_version => {
                payment_status.clone_into(&mut row.payment_status);
                row.payment_version = version;
                row.updated_at = row.updated_at.max(at);
                Some(row)
            }
            // Already applied, or about an order this read model never saw placed.
            (row, _) => row,
        }
    }

    async fn load(tx: &mut PgConnection, keys: &[Uuid]) -> Result<Vec<(Uuid, OrderRow)>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM rm_orders WHERE order_id = ANY($1)");
        let rows: Vec<OrderRow> = sqlx::query_as(&sql)
            .bind(keys)
            .persistent(false) // see RowModel::load
            .fetch_all(tx)
            .await?;
        Ok(rows.into_iter().map(|row| (row.order_id, row)).collect())
    }

    async fn save(tx: &mut PgConnection, rows: Vec<OrderRow>) -> Result<(), sqlx::Error> {
        let mut columns = OrderColumns::default();
        for row in rows {
            columns.push(row);
        }
        let OrderColumns {
            order_id,
            customer_id,
            status,
            payment_status,
            reason,
            currency,
            total_cents,
            lines,
            version,
            payment_version,
            created_at,
            updated_at,
            contact_key_id,
            contact_email_sealed,
        } = columns;
        sqlx::query(
            "INSERT INTO rm_orders (order_id, customer_id, status, payment_status, reason, currency, total_cents, \
                                    lines, version, payment_version, created_at, updated_at, contact_key_id, \
                                    contact_email_sealed) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::int8[], $8::jsonb[], $9::int8[], $10::int8[], $11::timestamptz[], \
                                  $12::timestamptz[], $13::uuid[], $14::text[]) \
             ON CONFLICT (order_id) DO UPDATE SET \
                 customer_id = excluded.customer_id, status = excluded.status, \
                 payment_status = excluded.payment_status, reason = excluded.reason, \
                 currency = excluded.currency, total_cents = excluded.total_cents, lines = excluded.lines, \
                 version = excluded.version, payment_version = excluded.payment_version, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 contact_key_id = excluded.contact_key_id, contact_email_sealed = excluded.contact_email_sealed",
        )
        .bind(order_id)
        .bind(customer_id)
        .bind(status)
        .bind(payment_status)
        .bind(reason)
        .bind(currency)
        .bind(total_cents)
        .bind(lines)
        .bind(version)
        .bind(payment_version)
        .bind(created_at)
        .bind(updated_at)
        .bind(contact_key_id)
        .bind(contact_email_sealed)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// Rows as one array per column, for `unnest`.
#[derive(Default)]
struct OrderColumns {
    order_id: Vec<Uuid>,
    customer_id: Vec<String>,
    status: Vec<String>,
    payment_status: Vec<String>,
    reason: Vec<Option<String>>,
    currency: Vec<String>,
    total_cents: Vec<i64>,
    lines: Vec<serde_json::Value>,
    version: Vec<i64>,
    payment_version: Vec<i64>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    contact_key_id: Vec<Option<Uuid>>,
    contact_email_sealed: Vec<Option<String>>,
}

impl OrderColumns {
    fn push(&mut self, row: OrderRow) {
        self.order_id.push(row.order_id);
        self.customer_id.push(row.customer_id);
        self.status.push(row.status);
        self.payment_status.push(row.payment_status);
        self.reason.push(row.reason);
        self.currency.push(row.currency);
        self.total_cents.push(row.total_cents);
        self.lines.push(row.lines);
        self.version.push(row.version);
        self.payment_version.push(row.payment_version);
        self.created_at.push(row.created_at);
        self.updated_at.push(row.updated_at);
        self.contact_key_id.push(row.contact_key_id);
        self.contact_email_sealed.push(row.contact_email_sealed);
    }
}
