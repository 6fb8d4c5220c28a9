//! The deliveries' table (`notification_deliveries`, `notification_attempts`):
//! what the consumers record and the dispatcher sends from. Every statement
//! is short; no transaction stays open while a message is on its way
//! (ADR 0013): an attempt takes a lease instead, by moving the delivery's due
//! time past the attempt's end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::personal::Sealed;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Webhook,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }
}

/// A message to record because of an event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Derived from the event id and the recipient: recording it twice records it once.
    pub delivery_id: Uuid,
    pub channel: Channel,
    pub endpoint_id: Option<Uuid>,
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub order_id: Uuid,
    pub correlation_id: String,
    pub body: String,
    pub subject: Option<String>,
    pub recipient: Option<Sealed>,
    /// Recorded as skipped (never sent), with this reason.
    pub skipped: Option<String>,
}

/// Records the deliveries an event causes, in one statement; the ones
/// recorded before stay as they are. Answers how many are new.
pub async fn record(pool: &PgPool, deliveries: &[NewDelivery]) -> Result<u64, sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    let column = |f: fn(&NewDelivery) -> Option<String>| deliveries.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.delivery_id).collect();
    let endpoints: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.endpoint_id).collect();
    let events: Vec<Uuid> = deliveries.iter().map(|d| d.event_id).collect();
    let orders: Vec<Uuid> = deliveries.iter().map(|d| d.order_id).collect();
    let key_ids: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.recipient.as_ref().map(|s| s.key_id)).collect();
    let result = sqlx::query(
        "INSERT INTO notification_deliveries
             (delivery_id, channel, endpoint_id, event_id, event_type, order_id, correlation_id, body, subject,
              recipient_key_id, recipient_sealed, status, finished_at, last_error)
         SELECT d.id, d.channel, d.endpoint_id, d.event_id, d.event_type, d.order_id, d.correlation_id, d.body,
                d.subject, d.key_id, d.sealed,
                CASE WHEN d.skipped IS NULL THEN 'pending' ELSE 'skipped' END,
                CASE WHEN d.skipped IS NULL THEN NULL ELSE now() END, d.skipped
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::uuid[], $7::text[],
                     $8::text[], $9::text[], $10::uuid[], $11::text[], $12::text[])
              AS d(id, channel, endpoint_id, event_id, event_type, order_id, correlation_id, body, subject,
                   key_id, sealed, skipped)
         ON CONFLICT (delivery_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(column(|d| Some(d.channel.name().to_owned())))
    .bind(&endpoints)
    .bind(&events)
    .bind(column(|d| Some(d.event_type.to_owned())))
    .bind(&orders)
    .bind(column(|d| Some(d.correlation_id.clone())))
    .bind(column(|d| Some(d.body.clone())))
    .bind(column(|d| d.subject.clone()))
    .bind(&key_ids)
    .bind(column(|d| d.recipient.as_ref().map(|s| s.sealed.clone())))
    .bind(column(|d| d.skipped.clone()))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// A delivery due now, leased to this attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub delivery_id: Uuid,
    pub channel: String,
    pub endpoint_id: Option<Uuid>,
    pub event_type: String,
    pub order_id: Uuid,
    pub correlation_id: String,
    pub body: String,
    pub subject: Option<String>,
    pub recipient_key_id: Option<Uuid>,
    pub recipient_sealed: Option<String>,
    /// Attempts made before this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// The endpoint's URL and secret (webhooks).
    pub url: Option<String>,
    pub secret: Option<String>,
}

impl Due {
    /// Whom it goes to, for the per-recipient limits: the endpoint, or the
    /// SMTP server (the nil id) for e-mail.
    pub fn recipient(&self) -> Uuid {
        self.endpoint_id.unwrap_or(Uuid::nil())
    }
}

/// Takes up to `limit` due deliveries, none to the recipients in `busy`,
/// and leases them for `lease`: another notifier (or this one after a
/// crash) takes them again only once the lease is over.
pub async fn claim(pool: &PgPool, limit: i64, busy: &[Uuid], lease: Duration) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE notification_deliveries d SET next_attempt_at = now() + $3 * interval '1 millisecond'
         WHERE d.delivery_id IN (
             SELECT delivery_id FROM notification_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND COALESCE(endpoint_id, '00000000-0000-0000-0000-000000000000'::uuid) <> ALL($2)
             ORDER BY next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING d.delivery_id, d.channel, d.endpoint_id, d.event_type, d.order_id, d.correlation_id, d.body,
                   d.subject, d.recipient_key_id, d.recipient_sealed, d.attempts, d.created_at,
                   (SELECT url FROM webhook_endpoints e WHERE e.endpoint_id = d.endpoint_id) AS url,
                   (SELECT secret FROM webhook_endpoints e WHERE e.endpoint_id = d.endpoint_id) AS secret",
    )
    .bind(limit)
    .bind(busy)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await
}

/// One attempt: when, the answer's status, how long, what failed.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Where a delivery goes after an attempt (or instead of one).
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Given up: the dead letter stays in the table, listed with its attempts.
    Dead(String),
    /// Not sent, and never will be (the customer's data was erased).
    Skipped(String),
}

impl Next {
    fn status(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryAt(_) => "pending",
            Self::Dead(_) => "dead",
            Self::Skipped(_) => "skipped",
        }
    }
}

/// Records an attempt (if one was made) and where the delivery goes next,
/// in one short transaction. A delivery cancelled meanwhile (its endpoint
/// deleted) stays cancelled unless this attempt delivered it.
pub async fn finish(pool: &PgPool, id: Uuid, attempted: Option<&Attempted>, next: &Next) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(attempted) = attempted {
        sqlx::query(
            "WITH counted AS (
                 UPDATE notification_deliveries SET attempts = attempts + 1 WHERE delivery_id = $1 RETURNING attempts)
             INSERT INTO notification_attempts (delivery_id, attempt, attempted_at, status_code, latency_ms, error)
             SELECT $1, attempts, $2, $3, $4, $5 FROM counted",
        )
        .bind(id)
        .bind(attempted.at)
        .bind(attempted.status_code.map(i32::from))
        .bind(attempted.latency.as_secs_f64() * 1000.0)
        .bind(&attempted.error)
        .execute(&mut *tx)
        .await?;
    }
    let (due, reason) = match next {
        Next::RetryAt(at) => (Some(*at), attempted.and_then(|a| a.error.clone())),
        Next::Dead(reason) | Next::Skipped(reason) => (None, Some(reason.clone())),
        Next::Delivered => (None, None),
    };
    sqlx::query(
        "UPDATE notification_deliveries
         SET status = $2, next_attempt_at = COALESCE($3, next_attempt_at), last_error = $4,
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
         WHERE delivery_id = $1 AND (status = 'pending' OR (status = 'cancelled' AND $2 = 'delivered'))",
    )
    .bind(id)
    .bind(next.status())
    .bind(due)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Moves a delivery's due time without counting an attempt (its
/// recipient's breaker is open).
pub async fn postpone(pool: &PgPool, id: Uuid, until: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notification_deliveries SET next_attempt_at = $2 WHERE delivery_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets finished deliveries older than `keep`, `batch` per transaction;
/// answers how many.
pub async fn forget_finished(pool: &PgPool, keep: Duration, batch: i64) -> Result<u64, sqlx::Error> {
    let mut forgotten = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM notification_deliveries WHERE delivery_id IN (
                 SELECT delivery_id FROM notification_deliveries
                 WHERE status <> 'pending' AND finished_at < now() - $1 * interval '1 second'
                 LIMIT $2)",
        )
        .bind(keep.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        forgotten += deleted;
        if deleted < batch as u64 {
            return Ok(forgotten);
        }
    }
}
