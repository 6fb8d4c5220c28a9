//! The deadline participant: an order placed arms its deadline (a row in
//! `saga_deadlines`), the order's final event disarms it, and a watcher
//! expires the orders whose deadline has passed. Expiring is the order's
//! `Expire` command: it cancels a pending order (with the usual
//! compensations following from `OrderCancelled`) and does nothing to an
//! order that has moved on, so a late or repeated expiry is harmless.

use std::time::Duration;

use chrono::Utc;
use domain::order::{Order, OrderCommand, OrderEvent};
use domain::Aggregate;
use event_store::{EventStore, Metadata};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::trigger::{Fact, Trigger};
use crate::commands::{self, EventIds, Invocation};

/// Arms or disarms an order's deadline.
pub async fn track(pool: &PgPool, trigger: &Trigger) -> Result<(), sqlx::Error> {
    let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
    match event {
        OrderEvent::OrderPlaced { deadline, .. } => {
            sqlx::query(
                "INSERT INTO saga_deadlines (order_id, deadline, correlation_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(order_id)
            .bind(deadline)
            .bind(&trigger.recorded.metadata.correlation_id)
            .execute(pool)
            .await?;
        }
        OrderEvent::OrderConfirmed { .. } | OrderEvent::OrderRejected { .. } | OrderEvent::OrderCancelled { .. } => {
            disarm(pool, *order_id).await?;
            // Per delivery: a redelivered final event counts again (rare; a gauge of trends, not a ledger).
            let outcome = match event {
                OrderEvent::OrderConfirmed { .. } => "confirmed",
                OrderEvent::OrderRejected { .. } => "rejected",
                _ => "cancelled",
            };
            metrics::counter!("saga_orders_finished_total", "outcome" => outcome).increment(1);
        }
        OrderEvent::OrderLineReserved { .. } | OrderEvent::OrderReadyForPayment { .. } => {}
    }
    Ok(())
}

/// `true` if the order had a deadline armed.
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for
/// this statement's transaction): a disarm lost in a database crash only
/// leaves a deadline that expires a finished order, which changes nothing.
/// Arming, whose loss would leave a stuck order pending for ever, waits.
async fn disarm(pool: &PgPool, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query(
        "WITH no_flush_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         DELETE FROM saga_deadlines USING no_flush_wait WHERE order_id = $1",
    )
    .bind(order_id)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Expires due orders every `poll` until `stop` turns true.
pub async fn watch(
    store: &dyn EventStore,
    pool: &PgPool,
    poll: Duration,
    max_attempts: u32,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(poll) => {}
        }
        match expire_due(store, pool, max_attempts).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "orders past their deadline expired"),
            Err(error) => tracing::warn!(%error, "expiring orders past their deadline failed; trying again"),
        }
    }
}

/// Runs `Expire` on every order whose deadline has passed; answers how many
/// it expired. An order whose expiry fails stays armed and is tried again at
/// the next poll; it holds up none of the others.
pub async fn expire_due(store: &dyn EventStore, pool: &PgPool, max_attempts: u32) -> Result<usize, sqlx::Error> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT order_id, correlation_id FROM saga_deadlines WHERE deadline <= now() ORDER BY deadline LIMIT 500",
    )
    .fetch_all(pool)
    .await?;
    let mut expired = 0;
    for (order_id, correlation_id) in &due {
        let invocation = Invocation {
            metadata: Metadata {
                correlation_id: correlation_id.clone(),
                causation_id: format!("deadline/{order_id}"),
                actor: "saga:deadline".into(),
                trace_context: String::new(),
            },
            ids: EventIds::Derived(Uuid::new_v5(order_id, b"deadline/expire")),
            expected_version: None,
            max_attempts,
        };
        let expire = OrderCommand::Expire { now: Utc::now() };
        if let Err(error) = commands::execute::<Order>(store, &Order::stream_id(order_id), &invocation, expire).await {
            tracing::warn!(%order_id, %error, "could not expire an order past its deadline; trying again later");
            continue;
        }
        if disarm(pool, *order_id).await? {
            metrics::counter!("saga_deadlines_expired_total").increment(1);
            expired += 1;
        }
    }
    Ok(expired)
}
