//! The deadline participant: an order placed arms its deadline (a row in
//! `saga_deadlines`), the order's final event disarms it, and a watcher
//! expires the orders whose deadline has passed. Expiring is the order's
//! `Expire` command: it cancels a pending order (with the usual
//! compensations following from `OrderCancelled`) and does nothing to an
//! order that has moved on, so a late or repeated expiry is harmless. The
//! database's clock decides what is due and is the command's clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::order::{Order, OrderCommand, OrderEvent, OrderState, OrderStatus};
use domain::{Aggregate, DomainError};
use event_store::Metadata;
use sqlx::PgPool;
use uuid::Uuid;

use super::trigger::{Fact, Trigger};
use application::{Application, EventIds, ExecuteError, Invocation};
use service_kit::Shutdown;

/// Arms or disarms an order's deadline.
pub async fn track(pool: &PgPool, trigger: &Trigger) -> Result<(), sqlx::Error> {
    let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
    match event {
        OrderEvent::OrderPlaced { deadline, placed_at, .. } => {
            sqlx::query(
                "INSERT INTO saga_deadlines (order_id, deadline, due_at, correlation_id, placed_at) \
                 VALUES ($1, $2, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(deadline)
            .bind(&trigger.recorded.metadata.correlation_id)
            .bind(placed_at)
            .execute(pool)
            .await?;
        }
        OrderEvent::OrderConfirmed { .. } | OrderEvent::OrderRejected { .. } | OrderEvent::OrderCancelled { .. } => {
            let armed = disarm(pool, *order_id).await?;
            // Per delivery: a redelivered final event counts again (rare; a gauge of trends, not a ledger).
            let outcome = match event {
                OrderEvent::OrderConfirmed { .. } => "confirmed",
                OrderEvent::OrderRejected { .. } => "rejected",
                _ => "cancelled",
            };
            metrics::counter!("saga_orders_finished_total", "outcome" => outcome).increment(1);
            // Once per order (the delivery that disarmed it): placed to its end, as the events date them.
            if let Some(Some(placed_at)) = armed {
                let took = (trigger.recorded.recorded_at - placed_at).to_std().unwrap_or_default();
                metrics::histogram!("saga_order_seconds", "outcome" => outcome).record(took.as_secs_f64());
            }
        }
        // Shipped after its confirmation, which disarmed the deadline.
        OrderEvent::OrderLineReserved { .. }
        | OrderEvent::OrderReadyForPayment { .. }
        | OrderEvent::OrderShipped { .. } => {}
    }
    Ok(())
}

/// `Some` if the order had a deadline armed, with when it was placed (if known).
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for
/// this statement's transaction): a disarm lost in a database crash only
/// leaves a deadline that expires a finished order, which changes nothing.
/// Arming, whose loss would leave a stuck order pending for ever, waits.
async fn disarm(pool: &PgPool, order_id: Uuid) -> Result<Option<Option<DateTime<Utc>>>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH no_flush_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         DELETE FROM saga_deadlines USING no_flush_wait WHERE order_id = $1 RETURNING placed_at",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}

/// Expires due orders every `poll` until `shutdown`.
pub async fn watch(app: &Application, pool: &PgPool, poll: Duration, shutdown: &Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(poll) => {}
        }
        match expire_due(app, pool).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "orders past their deadline expired"),
            Err(error) => tracing::warn!(%error, "expiring orders past their deadline failed; trying again"),
        }
    }
}

/// Most rows looked at in one poll.
const BATCH: i64 = 500;

/// Longest a failing row waits before it is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Runs `Expire` on every order whose deadline row is due; answers how many
/// it expired.
///
/// One clock decides: the database's. Rows are due by its `now()`, and the
/// same `now()` is the `Expire` command's clock, so a saga host whose clock
/// is behind cannot find a due order not yet expired.
///
/// A row goes only once its order is no longer pending. An order still
/// pending after `Expire` (its own deadline, in the order's events, is later
/// than the row's) keeps its row, due at the order's deadline. A row whose
/// expiry fails is tried again later, after a delay that grows with its
/// attempts, so it never holds up the rows behind it.
pub async fn expire_due(app: &Application, pool: &PgPool) -> Result<usize, sqlx::Error> {
    let due: Vec<(Uuid, String, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, correlation_id, attempts, now() FROM saga_deadlines WHERE due_at <= now() \
         ORDER BY due_at LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut expired = 0;
    for (order_id, correlation_id, attempts, now) in due {
        match expire(app, order_id, &correlation_id, now).await {
            Ok(None) => {
                if disarm(pool, order_id).await?.is_some() {
                    metrics::counter!("saga_deadlines_expired_total").increment(1);
                    expired += 1;
                }
            }
            Ok(Some(deadline)) => {
                tracing::info!(%order_id, %deadline, "the order is pending until its own, later deadline");
                reschedule(pool, order_id, deadline, 0).await?;
            }
            Err(ExecuteError::Rejected(DomainError::NotFound(_))) => {
                tracing::warn!(%order_id, "a deadline for an order that does not exist: removed");
                disarm(pool, order_id).await?;
            }
            Err(error) => {
                let delay = retry_delay(attempts);
                tracing::warn!(%order_id, %error, ?delay, "could not expire an order past its deadline; trying again later");
                let retry_at = now + chrono::Duration::seconds(delay.as_secs() as i64);
                reschedule(pool, order_id, retry_at, attempts.saturating_add(1)).await?;
            }
        }
    }
    Ok(expired)
}

/// Expires the order as of `now`; answers its deadline if it is still pending.
async fn expire(
    app: &Application,
    order_id: Uuid,
    correlation_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ExecuteError> {
    let invocation = Invocation {
        metadata: Metadata {
            correlation_id: correlation_id.to_owned(),
            causation_id: format!("deadline/{order_id}"),
            actor: "saga:deadline".into(),
            trace_context: String::new(),
        },
        ids: EventIds::Derived(Uuid::new_v5(&order_id, b"deadline/expire")),
        expected_version: None,
        max_attempts: app.settings().max_attempts,
    };
    let order = app.react::<Order>(&invocation, &Order::stream_id(order_id), OrderCommand::Expire { now }).await?;
    Ok(match &*order {
        OrderState::Placed(order) if order.status == OrderStatus::Pending => Some(order.deadline),
        _ => None,
    })
}

async fn reschedule(pool: &PgPool, order_id: Uuid, due_at: DateTime<Utc>, attempts: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE saga_deadlines SET due_at = $2, attempts = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(due_at)
        .bind(attempts)
        .execute(pool)
        .await?;
    Ok(())
}

/// One second after the first failure, doubling up to five minutes.
fn retry_delay(attempts: i32) -> Duration {
    let doublings = attempts.clamp(0, 16) as u32;
    (Duration::from_secs(1) * 2u32.pow(doublings)).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_row_waits_longer_each_time_up_to_five_minutes() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(50), MAX_RETRY_DELAY);
    }
}
