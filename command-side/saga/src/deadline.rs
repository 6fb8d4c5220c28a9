//! The deadline participant: an order placed arms its deadline (a row in
//! `saga_deadlines`), the order's final event disarms it, and a watcher
//! expires the orders whose deadline has passed. Expiring is the order's
//! `Expire` command: it cancels a pending order (with the usual
//! compensations following from `OrderCancelled`) and does nothing to an
//! order that has moved on, so a late or repeated expiry is harmless. The
//! database's clock decides what is due and is the command's clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::order::{CancelledBy, Order, OrderCommand, OrderEvent, OrderState, OrderStatus};
use domain::{Aggregate, DomainError};
use event_store::Metadata;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::participants::ReactionError;
use super::trigger::{Fact, Trigger};
use application::{Application, EventIds, ExecuteError, Invocation};
use service_kit::Shutdown;

/// Arms or disarms an order's deadline (in the next batch, see [`Deadlines`]).
pub async fn track(deadlines: &Deadlines, trigger: &Trigger) -> Result<(), ReactionError> {
    let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
    match event {
        OrderEvent::OrderPlaced { deadline, placed_at, .. } => {
            let correlation_id = trigger.recorded.metadata.correlation_id.clone();
            let arm = Arm { order_id: *order_id, deadline: *deadline, correlation_id, placed_at: *placed_at };
            deadlines.change(|reply| Change::Arm(arm, reply)).await?;
        }
        OrderEvent::OrderConfirmed { .. } | OrderEvent::OrderRejected { .. } | OrderEvent::OrderCancelled { .. } => {
            // Counted once per order, by the delivery whose disarm removed its
            // row: not again when the event is delivered again (a participant
            // beside this one waiting on the gateway), nor for a confirmed
            // order cancelled later (its row went at its confirmation).
            let Some(placed_at) = deadlines.change(|reply| Change::Disarm(*order_id, reply)).await? else {
                return Ok(());
            };
            let outcome = match event {
                OrderEvent::OrderConfirmed { .. } => "confirmed",
                OrderEvent::OrderRejected { .. } => "rejected",
                _ => "cancelled",
            };
            metrics::counter!("saga_orders_finished_total", "outcome" => outcome).increment(1);
            // Placed to its end, as the events date them.
            if let Some(placed_at) = placed_at {
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

/// Arms and disarms deadlines in batches. The deadline participant handles
/// many messages at once, and each order used to cost two statements and
/// two commits of their own here (with sqlx's check of the connection given
/// back after each); now the changes of a few milliseconds (see [`GATHER`])
/// and those that arrive while a batch is written go in one batch, one
/// statement for its arms and disarms together.
/// Each caller is answered after its batch's statement returns (an arm
/// after its commit is durable), and a batch that fails fails for each of
/// its callers, whose messages are delivered again.
#[derive(Clone)]
pub struct Deadlines {
    queue: mpsc::Sender<Change>,
    _writer: Arc<AbortOnDrop>,
}

/// Most changes in one batch.
const BATCH_CHANGES: usize = 256;

/// How long the writer lets changes gather after the first of a batch. No
/// order waits on its deadline's row (the participant's message is only
/// acknowledged later), and a batch of a few milliseconds holds the arms and
/// disarms of many orders: without it, under load, most batches held one.
const GATHER: Duration = Duration::from_millis(10);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Arm {
    order_id: Uuid,
    deadline: DateTime<Utc>,
    correlation_id: String,
    placed_at: DateTime<Utc>,
}

/// What a disarm answers: `Some` if a deadline was armed, with when the order was placed (if known).
type Armed = Option<Option<DateTime<Utc>>>;

enum Change {
    Arm(Arm, oneshot::Sender<Result<(), ReactionError>>),
    Disarm(Uuid, oneshot::Sender<Result<Armed, ReactionError>>),
}

impl Deadlines {
    /// Starts the writer; it stops when the last clone is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (queue, mut receiver) = mpsc::channel(BATCH_CHANGES * 4);
        let writer = tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                tokio::time::sleep(GATHER).await;
                let mut batch = vec![first];
                while batch.len() < BATCH_CHANGES {
                    let Ok(change) = receiver.try_recv() else { break };
                    batch.push(change);
                }
                write(&pool, batch).await;
            }
        });
        Self { queue, _writer: Arc::new(AbortOnDrop(writer)) }
    }

    async fn change<T>(
        &self,
        change: impl FnOnce(oneshot::Sender<Result<T, ReactionError>>) -> Change,
    ) -> Result<T, ReactionError> {
        let gone = || ReactionError::Waiting("the deadline writer has stopped".into());
        let (reply, outcome) = oneshot::channel();
        self.queue.send(change(reply)).await.map_err(|_| gone())?;
        outcome.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Writes one batch and answers each caller: arms and disarms together in one
/// statement when the batch holds both, else the arms, then the disarms.
async fn write(pool: &PgPool, batch: Vec<Change>) {
    let (mut arms, mut disarms) = (Vec::new(), Vec::new());
    for change in batch {
        match change {
            Change::Arm(arm, reply) => arms.push((arm, reply)),
            Change::Disarm(order_id, reply) => disarms.push((order_id, reply)),
        }
    }
    let rows: Vec<&Arm> = arms.iter().map(|(arm, _)| arm).collect();
    let ids: Vec<Uuid> = disarms.iter().map(|(order_id, _)| *order_id).collect();
    if !rows.is_empty() && !ids.is_empty() {
        match arm_and_disarm(pool, &rows, &ids).await {
            Ok(mut removed) => {
                // An order armed and disarmed in the same batch was never written: it was armed all the same.
                for arm in &rows {
                    if ids.contains(&arm.order_id) {
                        removed.entry(arm.order_id).or_insert(Some(arm.placed_at));
                    }
                }
                for (_, reply) in arms {
                    let _ = reply.send(Ok(()));
                }
                answer_disarms(disarms, Ok(removed));
                return;
            }
            Err(error) if event_store::is_transient(&error) => {
                for (_, reply) in arms {
                    let _ = reply.send(Err(reaction_error(&error)));
                }
                answer_disarms(disarms, Err(error));
                return;
            }
            // A row refused: the arms and the disarms are written apart, below.
            Err(_) => {}
        }
    }
    match arm_all(pool, &rows).await {
        // A row the database refuses (not the database away) must not fail
        // the others with it: each is written alone, and answered on its own.
        Err(error) if arms.len() > 1 && !event_store::is_transient(&error) => {
            tracing::warn!(%error, arms = arms.len(), "a batch of deadlines was refused; writing them one by one");
            for (arm, reply) in arms {
                let _ = reply.send(arm_all(pool, &[&arm]).await.map_err(|e| reaction_error(&e)));
            }
        }
        outcome => {
            for (_, reply) in arms {
                let _ = reply.send(outcome.as_ref().map(|_| ()).map_err(reaction_error));
            }
        }
    }
    if !disarms.is_empty() {
        answer_disarms(disarms, disarm_all(pool, &ids).await);
    }
}

/// Tells each disarm whether its order was armed: the first to ask for a
/// removed row is told; a repeat in the same batch is not.
fn answer_disarms(
    disarms: Vec<(Uuid, oneshot::Sender<Result<Armed, ReactionError>>)>,
    removed: Result<HashMap<Uuid, Option<DateTime<Utc>>>, sqlx::Error>,
) {
    match removed {
        Ok(mut removed) => {
            for (order_id, reply) in disarms {
                let _ = reply.send(Ok(removed.remove(&order_id)));
            }
        }
        Err(error) => {
            for (_, reply) in disarms {
                let _ = reply.send(Err(reaction_error(&error)));
            }
        }
    }
}

/// The same for every caller of a failed batch: the database away is a wait.
fn reaction_error(error: &sqlx::Error) -> ReactionError {
    if event_store::is_transient(error) {
        ReactionError::Waiting(format!("the deadlines' database: {error}"))
    } else {
        ReactionError::Failed(format!("the deadlines' database: {error}"))
    }
}

/// The arms' columns, one row per order (the statements' `$1`-`$4`).
struct ArmColumns<'a> {
    ids: Vec<Uuid>,
    deadlines: Vec<DateTime<Utc>>,
    correlations: Vec<&'a str>,
    placed: Vec<DateTime<Utc>>,
}

impl<'a> ArmColumns<'a> {
    /// The first arm of each order, in the order of the orders' ids: every
    /// instance's batches insert their rows in one order, so two batches
    /// arming the same orders (a redelivery reaching two instances) never
    /// wait for each other at once (a deadlock, which PostgreSQL breaks only
    /// after a second, with the event log held back meanwhile).
    fn of(arms: &[&'a Arm]) -> Self {
        let mut columns = Self { ids: Vec::new(), deadlines: Vec::new(), correlations: Vec::new(), placed: Vec::new() };
        let mut seen = HashSet::new();
        let mut firsts: Vec<&Arm> = arms.iter().copied().filter(|arm| seen.insert(arm.order_id)).collect();
        firsts.sort_unstable_by_key(|arm| arm.order_id);
        for arm in firsts {
            columns.ids.push(arm.order_id);
            columns.deadlines.push(arm.deadline);
            columns.correlations.push(arm.correlation_id.as_str());
            columns.placed.push(arm.placed_at);
        }
        columns
    }
}

/// Inserts the arms' rows (`$1`-`$4`, see [`ArmColumns`]), leaving out the
/// orders in `$5` (disarmed in the same batch) and the orders armed already.
const ARM: &str = "INSERT INTO saga_deadlines (order_id, deadline, due_at, correlation_id, placed_at) \
     SELECT order_id, deadline, deadline, correlation_id, placed_at \
     FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::timestamptz[]) \
       AS a (order_id, deadline, correlation_id, placed_at) \
     WHERE a.order_id <> ALL($5::uuid[]) \
     ON CONFLICT (order_id) DO NOTHING";

async fn arm_all(pool: &PgPool, arms: &[&Arm]) -> Result<(), sqlx::Error> {
    if arms.is_empty() {
        return Ok(());
    }
    let columns = ArmColumns::of(arms);
    sqlx::query(ARM)
        .bind(&columns.ids)
        .bind(&columns.deadlines)
        .bind(&columns.correlations)
        .bind(&columns.placed)
        .bind(Vec::<Uuid>::new())
        .execute(pool)
        .await?;
    Ok(())
}

/// Arms and disarms in one statement (one commit, durable since it arms):
/// the disarms' removed rows, as [`disarm_all`] answers them. An order both
/// armed and disarmed is not written at all.
async fn arm_and_disarm(
    pool: &PgPool,
    arms: &[&Arm],
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Option<DateTime<Utc>>>, sqlx::Error> {
    static ARM_AND_DISARM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH armed AS ({ARM}) \
             DELETE FROM saga_deadlines WHERE order_id = ANY($5) RETURNING order_id, placed_at"
        )
    });
    let columns = ArmColumns::of(arms);
    let removed: Vec<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(&ARM_AND_DISARM)
        .bind(&columns.ids)
        .bind(&columns.deadlines)
        .bind(&columns.correlations)
        .bind(&columns.placed)
        .bind(order_ids)
        .fetch_all(pool)
        .await?;
    Ok(removed.into_iter().collect())
}

/// The deadlines removed, by order, with when each order was placed (if known).
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for
/// this statement's transaction): a disarm lost in a database crash only
/// leaves a deadline that expires a finished order, which changes nothing.
/// Arming, whose loss would leave a stuck order pending for ever, waits.
async fn disarm_all(pool: &PgPool, order_ids: &[Uuid]) -> Result<HashMap<Uuid, Option<DateTime<Utc>>>, sqlx::Error> {
    let removed: Vec<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
        "WITH no_flush_wait AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true)) \
         DELETE FROM saga_deadlines USING no_flush_wait WHERE order_id = ANY($1) RETURNING order_id, placed_at",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await?;
    Ok(removed.into_iter().collect())
}

/// `Some` if the order had a deadline armed, with when it was placed (if known).
async fn disarm(pool: &PgPool, order_id: Uuid) -> Result<Armed, sqlx::Error> {
    Ok(disarm_all(pool, &[order_id]).await?.remove(&order_id))
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

/// How long the rows a watcher claims are its own: another watcher (another
/// saga instance) passes over them meanwhile. One that dies holding rows,
/// or whose poll ends on a database error, leaves them due again this much
/// later; one slower than this shares its rows with another, which is
/// harmless, as `Expire` is.
const CLAIM: Duration = Duration::from_secs(60);

/// Longest a failing row waits before it is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// A due row, claimed by this watcher.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    order_id: Uuid,
    correlation_id: String,
    attempts: i32,
    /// The database's clock when the row was claimed.
    now: DateTime<Utc>,
    due_at: DateTime<Utc>,
}

/// Claims up to `limit` due rows, earliest first: each is made due again
/// `lease` later, in one short statement, so that every other watcher passes
/// over it while this one expires it (rows another watcher is claiming at
/// that moment are skipped, not waited for). What is done with a row then
/// (removed, rescheduled) replaces the claim.
async fn claim_due(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Due>, sqlx::Error> {
    let mut due: Vec<Due> = sqlx::query_as(
        "WITH due AS (SELECT order_id, due_at FROM saga_deadlines WHERE due_at <= now() \
                      ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE saga_deadlines d SET due_at = now() + make_interval(secs => $2) FROM due \
         WHERE d.order_id = due.order_id \
         RETURNING d.order_id, d.correlation_id, d.attempts, now() AS now, due.due_at",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    due.sort_unstable_by_key(|row| row.due_at);
    Ok(due)
}

/// Runs `Expire` on every order whose deadline row is due; answers how many
/// it expired.
///
/// One clock decides: the database's. Rows are due by its `now()`, and the
/// same `now()` is the `Expire` command's clock, so a saga host whose clock
/// is behind cannot find a due order not yet expired.
///
/// Each saga instance runs a watcher; a row is expired by the one that
/// claimed it (see [`claim_due`]), so with several instances no order is
/// expired, or counted, twice.
///
/// A row goes only once its order is no longer pending. An order still
/// pending after `Expire` (its own deadline, in the order's events, is later
/// than the row's) keeps its row, due at the order's deadline. A row whose
/// expiry fails is tried again later, after a delay that grows with its
/// attempts, so it never holds up the rows behind it.
pub async fn expire_due(app: &Application, pool: &PgPool) -> Result<usize, sqlx::Error> {
    let due = claim_due(pool, BATCH, CLAIM).await?;
    let mut expired = 0;
    for Due { order_id, correlation_id, attempts, now, .. } in due {
        match expire(app, order_id, &correlation_id, now).await {
            // The order's end is counted by whichever removes its row: this,
            // or the deadline participant on the `OrderCancelled`.
            Ok(Expiry::Expired) => {
                metrics::counter!("saga_deadlines_expired_total").increment(1);
                expired += 1;
                if disarm(pool, order_id).await?.is_some() {
                    metrics::counter!("saga_orders_finished_total", "outcome" => "cancelled").increment(1);
                }
            }
            // A row armed again after its order ended (its `OrderPlaced`
            // delivered again after the final event's disarm, which counted
            // the order's end), a row whose removal failed after a watcher
            // expired its order (the expiry was counted then), or an order
            // its customer cancelled while this watcher expired it.
            Ok(Expiry::EndedBefore) => {
                tracing::debug!(%order_id, "a deadline left for an order that had ended: removed");
                disarm(pool, order_id).await?;
            }
            Ok(Expiry::Pending(deadline)) => {
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

/// What expiring an order found.
enum Expiry {
    /// This expiry cancelled the order.
    Expired,
    /// The order had ended, or was ended by someone else meanwhile: this
    /// expiry did nothing.
    EndedBefore,
    /// The order is pending until this, its own later deadline.
    Pending(DateTime<Utc>),
}

/// Expires the order as of `now`, if it is still pending. Its state is read
/// first (expiries are rare: orders past their deadline), so that only an
/// order this expiry ends is counted as expired.
async fn expire(
    app: &Application,
    order_id: Uuid,
    correlation_id: &str,
    now: DateTime<Utc>,
) -> Result<Expiry, ExecuteError> {
    let stream_id = Order::stream_id(order_id);
    // The expiry's ids are in time order as of the order's own deadline (the
    // same every time), when the order's id is.
    let at = match app.load::<Order>(&stream_id).await? {
        OrderState::Placed(order) if order.status != OrderStatus::Pending => return Ok(Expiry::EndedBefore),
        OrderState::Placed(order) => order.deadline,
        OrderState::NotPlaced => now,
    };
    let invocation = Invocation {
        metadata: Metadata {
            correlation_id: correlation_id.to_owned(),
            causation_id: format!("deadline/{order_id}"),
            actor: "saga:deadline".into(),
            trace_context: String::new(),
        },
        ids: EventIds::derived(order_id, Uuid::new_v5(&order_id, b"deadline/expire"), at),
        expected_version: None,
        max_attempts: app.settings().max_attempts,
    };
    let order = app.react::<Order>(&invocation, &stream_id, OrderCommand::Expire { now }).await?;
    Ok(Expiry::after(&order))
}

impl Expiry {
    /// What an `Expire` did, by the order's state after it: a cancellation
    /// by anyone but the deadline (a customer's, in the moment between the
    /// read above and the command) is not this expiry's.
    fn after(order: &OrderState) -> Self {
        match order {
            OrderState::Placed(order) if order.status == OrderStatus::Pending => Self::Pending(order.deadline),
            OrderState::Placed(order) if order.cancelled_by == Some(CancelledBy::Deadline) => Self::Expired,
            _ => Self::EndedBefore,
        }
    }
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

    fn arm_of(order_id: Uuid) -> Arm {
        let now = Utc::now();
        Arm {
            order_id,
            deadline: now + chrono::Duration::minutes(15),
            correlation_id: order_id.to_string(),
            placed_at: now,
        }
    }

    /// A batch's rows go in the order of the orders' ids, each order once
    /// (its first arm), however the arms came.
    #[test]
    fn a_batch_arms_its_orders_in_the_order_of_their_ids_each_once() {
        let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
        let mut arms: Vec<Arm> = ids.iter().map(|id| arm_of(*id)).collect();
        let mut again = arm_of(ids[3]);
        again.correlation_id = "a repeat".into();
        arms.push(again);
        let columns = ArmColumns::of(&arms.iter().collect::<Vec<_>>());
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(columns.ids, sorted);
        assert!(!columns.correlations.contains(&"a repeat"), "the first arm of an order is kept");
    }

    /// Many orders at once: each arm is written and answered, each disarm
    /// removes its row, and of two disarms of one order in the same batch
    /// only the first is told the order was armed (the metric of how long
    /// orders take counts each order once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_that_arrive_together_share_a_batch_and_each_gets_its_answer() {
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            let orders: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
            let arming = orders.iter().map(|id| deadlines.change(|reply| Change::Arm(arm_of(*id), reply)));
            for armed in futures_util::future::join_all(arming).await {
                armed.unwrap();
            }
            let rows: Vec<(Uuid, String)> =
                sqlx::query_as("SELECT order_id, correlation_id FROM saga_deadlines").fetch_all(&pool).await.unwrap();
            assert_eq!(rows.len(), orders.len());
            assert!(rows.iter().all(|(id, correlation)| *correlation == id.to_string()));

            let twice = orders.iter().flat_map(|id| [*id, *id]);
            let disarming = twice.map(|id| deadlines.change(move |reply| Change::Disarm(id, reply)));
            let answers: Vec<Armed> =
                futures_util::future::join_all(disarming).await.into_iter().map(Result::unwrap).collect();
            let told = answers.iter().filter(|armed| armed.is_some()).count();
            assert_eq!(told, orders.len(), "each order told once that it was armed");
            assert!(answers.iter().flatten().all(Option::is_some), "with when it was placed");
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_deadlines").fetch_one(&pool).await.unwrap();
            assert_eq!(left, 0);
        })
        .await;
    }

    /// Arms and disarms that arrive together are written together: the new
    /// orders are armed, the finished ones disarmed (and told they were
    /// armed), and an order armed and disarmed in the same batch is told so
    /// and leaves no row.
    #[tokio::test]
    async fn arms_and_disarms_of_one_batch_are_written_together() {
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            let finished: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
            for id in &finished {
                deadlines.change(|reply| Change::Arm(arm_of(*id), reply)).await.unwrap();
            }
            let placed: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
            let fleeting = Uuid::new_v4();
            // Queued without yielding, so that the writer takes them as one batch.
            let (mut armed, mut disarmed) = (Vec::new(), Vec::new());
            for id in placed.iter().chain([&fleeting]) {
                let (reply, answer) = oneshot::channel();
                deadlines.queue.try_send(Change::Arm(arm_of(*id), reply)).unwrap_or_else(|_| panic!("queue full"));
                armed.push(answer);
            }
            for id in finished.iter().chain([&fleeting]) {
                let (reply, answer) = oneshot::channel();
                deadlines.queue.try_send(Change::Disarm(*id, reply)).unwrap_or_else(|_| panic!("queue full"));
                disarmed.push(answer);
            }
            for answer in armed {
                answer.await.unwrap().unwrap();
            }
            for answer in disarmed {
                let armed = answer.await.unwrap().unwrap();
                assert!(matches!(armed, Some(Some(_))), "{armed:?}");
            }
            let mut rows: Vec<Uuid> =
                sqlx::query_scalar("SELECT order_id FROM saga_deadlines").fetch_all(&pool).await.unwrap();
            let mut expected = placed.clone();
            rows.sort();
            expected.sort();
            assert_eq!(rows, expected, "the placed orders armed, the finished and the fleeting one not");
        })
        .await;
    }

    /// The deadline participant's view of an order's event.
    fn trigger(order_id: Uuid, event: OrderEvent) -> Trigger {
        let recorded = event_store::RecordedEvent {
            log_position: event_store::LogPosition { commit: 1, position: 1 },
            event_id: Uuid::new_v4(),
            stream_id: Order::stream_id(order_id),
            stream_version: 1,
            event_type: domain::EventPayload::event_type(&event).into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: Metadata { correlation_id: order_id.to_string(), ..Metadata::default() },
            recorded_at: Utc::now(),
        };
        Trigger { recorded, event: Fact::Order { order_id, event } }
    }

    fn placed(order_id: Uuid) -> OrderEvent {
        let now = Utc::now();
        OrderEvent::OrderPlaced {
            order_id,
            customer_id: "c".into(),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: Vec::new(),
            total_cents: 0,
            placed_at: now,
            deadline: now + chrono::Duration::minutes(15),
            contact_email: None,
        }
    }

    /// An order's end is counted once, by the delivery whose disarm removed
    /// its deadline: not again when its final event is delivered again (as
    /// it is while a participant beside the deadline waits on the gateway),
    /// and not for a confirmed order cancelled later.
    #[tokio::test]
    async fn an_order_s_end_is_counted_once_however_often_its_final_event_arrives() {
        let counters = service_kit::metrics::Counters::default();
        let _recorder = metrics::set_default_local_recorder(&counters);
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            let (confirmed, cancelled) = (Uuid::new_v4(), Uuid::new_v4());
            for order_id in [confirmed, cancelled] {
                track(&deadlines, &trigger(order_id, placed(order_id))).await.unwrap();
            }
            let cancel = || OrderEvent::OrderCancelled {
                reason: "changed my mind".into(),
                by: CancelledBy::Customer,
                payment_refund_due: false,
            };
            for _ in 0..3 {
                track(&deadlines, &trigger(confirmed, OrderEvent::OrderConfirmed { provider_ref: "p".into() }))
                    .await
                    .unwrap();
                track(&deadlines, &trigger(cancelled, cancel())).await.unwrap();
            }
            track(&deadlines, &trigger(confirmed, cancel())).await.unwrap();
        })
        .await;
        let finished = |outcome| counters.get("saga_orders_finished_total", &[("outcome", outcome)]);
        assert_eq!((finished("confirmed"), finished("cancelled")), (1, 1));
    }

    /// A due row is one watcher's while its claim lasts: another watcher
    /// (another saga instance) claiming at the same time, or after it, gets
    /// none of it; once the claim has lapsed (its watcher died) the row is
    /// due again. Rows not yet due are never claimed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_due_row_is_claimed_by_one_watcher_until_its_claim_lapses() {
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            let due: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
            let later = Uuid::new_v4();
            for order_id in due.iter().chain([&later]) {
                deadlines.change(|reply| Change::Arm(arm_of(*order_id), reply)).await.unwrap();
            }
            sqlx::query("UPDATE saga_deadlines SET due_at = now() - interval '1 second' WHERE order_id <> $1")
                .bind(later)
                .execute(&pool)
                .await
                .unwrap();

            let (one, other) = tokio::join!(
                claim_due(&pool, BATCH, Duration::from_secs(60)),
                claim_due(&pool, BATCH, Duration::from_secs(60))
            );
            let mut claimed: Vec<Uuid> = one.unwrap().into_iter().chain(other.unwrap()).map(|d| d.order_id).collect();
            claimed.sort();
            let mut expected = due.clone();
            expected.sort();
            assert_eq!(claimed, expected, "each due row claimed once, by one of the two");
            assert!(claim_due(&pool, BATCH, Duration::from_secs(60)).await.unwrap().is_empty(), "claimed already");

            // The claims lapse, each row due at a moment of its own in the last second.
            sqlx::query(
                "UPDATE saga_deadlines d SET due_at = now() - r.n * interval '1 ms' \
                 FROM (SELECT order_id, row_number() OVER (ORDER BY md5(order_id::text)) AS n \
                       FROM saga_deadlines WHERE order_id <> $1) r \
                 WHERE d.order_id = r.order_id",
            )
            .bind(later)
            .execute(&pool)
            .await
            .unwrap();
            let earliest: Vec<Uuid> =
                sqlx::query_scalar("SELECT order_id FROM saga_deadlines WHERE order_id <> $1 ORDER BY due_at LIMIT 10")
                    .bind(later)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let lapsed = claim_due(&pool, 10, Duration::from_secs(60)).await.unwrap();
            let lapsed: Vec<Uuid> = lapsed.iter().map(|d| d.order_id).collect();
            assert_eq!(
                lapsed, earliest,
                "a lapsed claim's rows are due again: the earliest, up to the limit, in order"
            );
        })
        .await;
    }

    /// An `Expire` counts as this expiry's only if the deadline cancelled
    /// the order: a customer's cancellation just before it (after the
    /// watcher read the order as pending) is not counted as an expiry.
    #[test]
    fn only_the_deadline_s_cancellation_is_an_expiry() {
        use domain::Aggregate;
        let order_id = Uuid::new_v4();
        let cancelled = |by| OrderEvent::OrderCancelled { reason: "r".into(), by, payment_refund_due: false };
        let after = |events: &[OrderEvent]| Expiry::after(&Order::fold(events));
        assert!(matches!(after(&[placed(order_id)]), Expiry::Pending(_)));
        assert!(matches!(after(&[placed(order_id), cancelled(CancelledBy::Deadline)]), Expiry::Expired));
        assert!(matches!(after(&[placed(order_id), cancelled(CancelledBy::Customer)]), Expiry::EndedBefore));
        let confirmed = OrderEvent::OrderConfirmed { provider_ref: "p".into() };
        assert!(matches!(after(&[placed(order_id), confirmed]), Expiry::EndedBefore));
    }

    /// A batch that fails fails for each of its callers, and nothing of it
    /// is written; the next batch works again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_fails_every_caller_and_the_next_one_works() {
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            sqlx::query("ALTER TABLE saga_deadlines RENAME TO saga_deadlines_away").execute(&pool).await.unwrap();
            let arming = (0..20).map(|_| deadlines.change(|reply| Change::Arm(arm_of(Uuid::new_v4()), reply)));
            for armed in futures_util::future::join_all(arming).await {
                assert!(matches!(armed, Err(ReactionError::Failed(_))), "{armed:?}");
            }
            sqlx::query("ALTER TABLE saga_deadlines_away RENAME TO saga_deadlines").execute(&pool).await.unwrap();
            let order_id = Uuid::new_v4();
            deadlines.change(|reply| Change::Arm(arm_of(order_id), reply)).await.unwrap();
            let armed = deadlines.change(|reply| Change::Disarm(order_id, reply)).await.unwrap();
            assert!(matches!(armed, Some(Some(_))), "{armed:?}");
        })
        .await;
    }

    /// A row the database refuses (here a correlation id PostgreSQL cannot
    /// store) fails its own caller only: the rest of its batch is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_the_database_refuses_fails_only_its_own_caller() {
        migrations::testing::with_database(4, |pool| async move {
            let deadlines = Deadlines::start(pool.clone());
            let poison = Arm { correlation_id: "nul\0here".into(), ..arm_of(Uuid::new_v4()) };
            let mut arms: Vec<Arm> = (0..20).map(|_| arm_of(Uuid::new_v4())).collect();
            arms.insert(10, poison);
            let arming = arms.into_iter().map(|arm| deadlines.change(|reply| Change::Arm(arm, reply)));
            let outcomes = futures_util::future::join_all(arming).await;
            let refused: Vec<usize> = outcomes.iter().enumerate().filter(|(_, o)| o.is_err()).map(|(n, _)| n).collect();
            assert_eq!(refused, [10], "{outcomes:?}");
            assert!(matches!(outcomes[10], Err(ReactionError::Failed(_))));
            let armed: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_deadlines").fetch_one(&pool).await.unwrap();
            assert_eq!(armed, 20);
        })
        .await;
    }

    #[test]
    fn a_failing_row_waits_longer_each_time_up_to_five_minutes() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(50), MAX_RETRY_DELAY);
    }
}
