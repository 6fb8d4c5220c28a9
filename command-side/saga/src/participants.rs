//! What each participant does with the events it hears. Every reaction is a
//! command on the participant's own aggregate, run with ids derived from the
//! triggering event, so running a reaction twice appends nothing new.
//!
//! | participant | hears | does |
//! |---|---|---|
//! | inventory | OrderPlaced | reserves each line (an item's reservations that queue while one is written go in one append) |
//! | inventory | OrderRejected, OrderCancelled | releases what the order holds |
//! | inventory | OrderShipped | ships what the order holds (it leaves on hand and reserved) |
//! | order | StockReserved, StockReservationRejected | records the line (all reserved: ready for payment) or rejects the order |
//! | order | PaymentCaptured, PaymentDeclined | confirms, or cancels the order |
//! | payment | OrderReadyForPayment | requests the payment and charges the card at the gateway |
//! | payment | OrderCancelled (payment due) | refunds, or voids a payment not yet captured |
//! | deadline | OrderPlaced, and the order's final event | arms and disarms the order's deadline (see `deadline`) |

use std::sync::Arc;

use domain::inventory::{Inventory, InventoryCommand, InventoryEvent};
use domain::order::{CancelledBy, Order, OrderCommand, OrderEvent, OrderState};
use domain::payment::{Payment, PaymentCommand, PaymentEvent, PaymentState, PaymentStatus};
use domain::Aggregate;
use event_store::StoreError;
use futures_util::future::{join_all, try_join_all};
use sqlx::PgPool;
use uuid::Uuid;

use super::consumer::Reaction;
use super::deadline::{self, Deadlines};
use super::gateway::{ChargeOutcome, Gateway, GatewayError};
use super::trigger::{Fact, Malformed, Trigger};
use application::{Application, ExecuteError, Invocation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Participant {
    Inventory,
    Order,
    Payment,
    Deadline,
}

impl Participant {
    pub const ALL: [Self; 4] = [Self::Inventory, Self::Order, Self::Payment, Self::Deadline];

    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Order => "order",
            Self::Payment => "payment",
            Self::Deadline => "deadline",
        }
    }

    /// The events it hears, as `(category, event type)`. Each is one subject,
    /// with one durable consumer filtered to it (NATS 2.9 takes a single
    /// filter subject per consumer), shared by every participant that hears
    /// it ([`Hearing`]): no participant is sent what it ignores.
    pub fn subscriptions(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Inventory => &[
                ("order", "OrderPlaced"),
                ("order", "OrderRejected"),
                ("order", "OrderCancelled"),
                ("order", "OrderShipped"),
            ],
            Self::Order => &[
                ("inventory", "StockReserved"),
                ("inventory", "StockReservationRejected"),
                ("payment", "PaymentCaptured"),
                ("payment", "PaymentDeclined"),
            ],
            Self::Payment => &[("order", "OrderReadyForPayment"), ("order", "OrderCancelled")],
            Self::Deadline => &[
                ("order", "OrderPlaced"),
                ("order", "OrderConfirmed"),
                ("order", "OrderRejected"),
                ("order", "OrderCancelled"),
            ],
        }
    }

    pub async fn react(self, ctx: &Reactor, trigger: &Trigger) -> Result<(), ReactionError> {
        match self {
            Self::Inventory => ctx.inventory(trigger).await,
            Self::Order => ctx.order(trigger).await,
            Self::Payment => ctx.payment(trigger).await,
            Self::Deadline => deadline::track(&ctx.deadlines, trigger).await,
        }
    }
}

/// A subject and the participants that hear it. One durable consumer per
/// subject feeds them all, so an event several participants hear (an
/// order placed: the inventory and the deadline) is delivered once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hearing {
    /// `(category, event type)`: the subject `<prefix>.<category>.<type>`.
    pub event: (&'static str, &'static str),
    pub participants: Vec<Participant>,
}

impl Hearing {
    /// Every subject a participant hears, with who hears it, in the order
    /// of [`Participant::ALL`].
    pub fn all() -> Vec<Self> {
        let mut hearings: Vec<Self> = Vec::new();
        for participant in Participant::ALL {
            for event in participant.subscriptions() {
                match hearings.iter_mut().find(|hearing| hearing.event == *event) {
                    Some(hearing) => hearing.participants.push(participant),
                    None => hearings.push(Self { event: *event, participants: vec![participant] }),
                }
            }
        }
        hearings
    }

    /// Its durable consumer: the participants and the event type, e.g.
    /// `order-StockReserved`, `inventory-deadline-OrderPlaced`. Deployed
    /// systems hold these names: a participant that comes to hear a subject
    /// renames its consumer, and the old name must then be among those the
    /// new one replaces, or the new one starts from the stream's beginning.
    pub fn consumer(&self) -> String {
        format!("{}-{}", self.names().join("-"), self.event.1)
    }

    /// The consumers this one took over: until subjects were shared, each
    /// participant had its own (`inventory-OrderPlaced` and
    /// `deadline-OrderPlaced`). None for a subject one participant hears.
    pub fn replaced(&self) -> Vec<String> {
        if self.participants.len() < 2 {
            return Vec::new();
        }
        self.names().iter().map(|name| format!("{name}-{}", self.event.1)).collect()
    }

    fn names(&self) -> Vec<&'static str> {
        self.participants.iter().map(|participant| participant.name()).collect()
    }
}

/// The participants that hear one subject, with what they act with: what
/// that subject's consumer feeds. Each message is given to all of them at
/// once and settled when all are done.
pub struct Acting<'a> {
    participants: Vec<Participant>,
    /// `inventory`, `inventory+deadline`: in logs and metrics.
    who: String,
    reactor: &'a Reactor,
}

impl<'a> Acting<'a> {
    pub fn new(participants: Vec<Participant>, reactor: &'a Reactor) -> Self {
        let who = participants.iter().map(|participant| participant.name()).collect::<Vec<_>>().join("+");
        Self { participants, who, reactor }
    }
}

#[async_trait::async_trait]
impl Reaction for Acting<'_> {
    fn participant(&self) -> &str {
        &self.who
    }

    async fn react(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        if let [participant] = self.participants.as_slice() {
            return participant.react(self.reactor, trigger).await;
        }
        let reactions = self
            .participants
            .iter()
            .map(|participant| async move { (*participant, participant.react(self.reactor, trigger).await) });
        worst(join_all(reactions).await)
    }

    /// The order participant's reactions command the order: messages about
    /// one order in a batch are recorded in one append.
    fn together(&self, trigger: &Trigger) -> Option<String> {
        if self.participants != [Participant::Order] {
            return None;
        }
        let (order_id, _) = order_command(trigger)?;
        Some(Order::stream_id(order_id))
    }

    async fn react_together(&self, key: &str, triggers: &[&Trigger]) -> Result<bool, ReactionError> {
        match self.participants.as_slice() {
            [Participant::Order] => self.reactor.order_together(key, triggers).await,
            _ => Ok(false),
        }
    }
}

/// What several participants' reactions to one message come to: the worst
/// of them (a message that cannot be read, then a failure, then a wait),
/// named by whose it was. The message is then delivered again to all of
/// them; those that had acted find their events appended already (their
/// commands' ids derive from the message) and append nothing.
fn worst(outcomes: Vec<(Participant, Result<(), ReactionError>)>) -> Result<(), ReactionError> {
    let rank = |error: &ReactionError| match error {
        ReactionError::Malformed(_) => 3,
        ReactionError::Failed(_) => 2,
        ReactionError::Waiting(_) => 1,
    };
    let worst = outcomes
        .into_iter()
        .filter_map(|(participant, outcome)| outcome.err().map(|error| (participant, error)))
        .max_by_key(|(_, error)| rank(error));
    match worst {
        None => Ok(()),
        Some((_, error @ ReactionError::Malformed(_))) => Err(error),
        Some((participant, ReactionError::Failed(reason))) => {
            Err(ReactionError::Failed(format!("{}: {reason}", participant.name())))
        }
        Some((participant, ReactionError::Waiting(reason))) => {
            Err(ReactionError::Waiting(format!("{}: {reason}", participant.name())))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReactionError {
    /// The message can never be handled: dead-letter it at once.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// Something this participant depends on is away (the gateway, the
    /// store): deliver again later, however often it takes.
    #[error("waiting: {0}")]
    Waiting(String),
    /// It failed; another delivery may succeed, a bounded number of times.
    #[error("{0}")]
    Failed(String),
}

impl From<ExecuteError> for ReactionError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Store(StoreError::Unavailable(_)) => Self::Waiting(error.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<GatewayError> for ReactionError {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::Unavailable(_) => Self::Waiting(error.to_string()),
            GatewayError::Refused(_) => Self::Failed(error.to_string()),
        }
    }
}

/// What the participants need to act: the application layer (whose kept
/// states they command), the deadlines, the payment gateway.
#[derive(Clone)]
pub struct Reactor {
    pub app: Application,
    pub pool: PgPool,
    pub gateway: Gateway,
    deadlines: Deadlines,
}

impl Reactor {
    /// Starts the deadlines' writer on `pool` (see [`Deadlines`]).
    pub fn new(app: Application, pool: PgPool, gateway: Gateway) -> Self {
        Self { app, deadlines: Deadlines::start(pool.clone()), pool, gateway }
    }

    async fn run<A>(
        &self,
        trigger: &Trigger,
        actor: &str,
        purpose: &str,
        stream_id: &str,
        command: A::Command,
    ) -> Result<Arc<A::State>, ReactionError>
    where
        A: Aggregate,
        A::Command: Clone,
        A::State: Send + Sync + 'static,
    {
        Ok(self.app.react::<A>(&self.invocation(trigger, actor, purpose), stream_id, command).await?)
    }

    /// The command `actor` gives for `trigger`, as this process retries it.
    fn invocation(&self, trigger: &Trigger, actor: &str, purpose: &str) -> Invocation {
        trigger.invocation(actor, purpose, self.app.settings().max_attempts)
    }

    /// An item's command, in one append with the item's other commands that
    /// queue meanwhile: an item in a sale commits its reservations in
    /// batches, not one after another.
    async fn run_joined(
        &self,
        trigger: &Trigger,
        purpose: &str,
        stream_id: &str,
        command: InventoryCommand,
    ) -> Result<(), ReactionError> {
        let invocation = self.invocation(trigger, "inventory", purpose);
        let together = self.app.react_joined::<Inventory>(&invocation, stream_id, command).await?;
        if together > 1 {
            metrics::counter!("saga_commands_joined_total", "participant" => "inventory").increment(1);
        }
        Ok(())
    }

    async fn inventory(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
        let order_id = *order_id;
        let lines = match event {
            OrderEvent::OrderPlaced { lines, .. } => {
                // The order's first event: its state is known without a read,
                // for when the lines come back reserved (same process).
                self.app.observe::<Order>(&trigger.recorded, event).await;
                lines.clone()
            }
            OrderEvent::OrderRejected { .. } | OrderEvent::OrderCancelled { .. } | OrderEvent::OrderShipped { .. } => {
                match self.app.load::<Order>(&Order::stream_id(order_id)).await? {
                    OrderState::Placed(order) => order.lines,
                    OrderState::NotPlaced => {
                        return Err(ReactionError::Failed(format!("order {order_id} does not exist")))
                    }
                }
            }
            _ => return Ok(()),
        };
        try_join_all(lines.into_iter().map(|line| {
            let stream_id = Inventory::stream_id(&line.sku);
            let (sku, quantity) = (line.sku.clone(), line.quantity.into());
            let (purpose, command) = match event {
                OrderEvent::OrderPlaced { .. } => ("reserve", InventoryCommand::Reserve { sku, order_id, quantity }),
                OrderEvent::OrderShipped { .. } => ("ship", InventoryCommand::Ship { sku, order_id }),
                _ => ("release", InventoryCommand::Release { sku, order_id }),
            };
            let purpose = format!("{purpose}/{}", line.sku);
            async move { self.run_joined(trigger, &purpose, &stream_id, command).await }
        }))
        .await?;
        Ok(())
    }

    async fn order(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        let Some((order_id, command)) = order_command(trigger) else { return Ok(()) };
        self.run::<Order>(trigger, "order", "record", &Order::stream_id(order_id), command).await?;
        Ok(())
    }

    /// The order participant's reactions to several messages about one order
    /// (its lines reported reserved, in one batch), in one append; `false`
    /// where they are to be run one by one (see `Application::react_together`).
    async fn order_together(&self, stream_id: &str, triggers: &[&Trigger]) -> Result<bool, ReactionError> {
        let mut commands = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            let Some((_, command)) = order_command(trigger) else { return Ok(false) };
            commands.push((self.invocation(trigger, "order", "record"), command));
        }
        Ok(self.app.react_together::<Order>(stream_id, &commands).await?)
    }

    async fn payment(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
        let order_id = *order_id;
        let (purpose, command) = match event {
            OrderEvent::OrderReadyForPayment { amount_cents, currency, payment_token } => (
                "request",
                PaymentCommand::Request {
                    order_id,
                    amount_cents: i64::try_from(*amount_cents).unwrap_or(i64::MAX),
                    currency: currency.clone(),
                    payment_token: payment_token.clone(),
                },
            ),
            OrderEvent::OrderCancelled { payment_refund_due: true, reason, .. } => {
                ("refund", PaymentCommand::Refund { order_id, reason: reason.clone() })
            }
            _ => return Ok(()),
        };
        let payment = self.payment_command(trigger, purpose, order_id, command).await?;
        self.settle(trigger, order_id, payment).await
    }

    /// Runs a command on the payment of `order_id`; answers the payment after it.
    async fn payment_command(
        &self,
        trigger: &Trigger,
        purpose: &str,
        order_id: Uuid,
        command: PaymentCommand,
    ) -> Result<Arc<PaymentState>, ReactionError> {
        self.run::<Payment>(trigger, "payment", purpose, &Payment::stream_id(order_id), command).await
    }

    /// Brings the gateway in line with the payment: a requested payment is
    /// charged (once: the order id is the idempotency key), a payment voided
    /// after its request has its key closed at the gateway (a charge made
    /// meanwhile, whose answer was lost, is recorded and so refunded), and a
    /// refunded one is refunded at the gateway (once, by its own key).
    async fn settle(
        &self,
        trigger: &Trigger,
        order_id: Uuid,
        mut payment: Arc<PaymentState>,
    ) -> Result<(), ReactionError> {
        let correlation_id = &trigger.recorded.metadata.correlation_id;
        let key = order_id.to_string();
        let outcome = if payment.status == PaymentStatus::Requested {
            let (amount, currency, token) = (payment.amount_cents, &payment.currency, &payment.payment_token);
            Some(self.gateway.charge(&key, amount, currency, token, correlation_id).await?)
        } else if payment.voided_with_charge_unknown() {
            Some(self.gateway.void(&key, correlation_id).await?)
        } else {
            None
        };
        let command = match outcome {
            Some(ChargeOutcome::Captured { charge_id }) => {
                Some(("capture", PaymentCommand::Capture { order_id, provider_ref: charge_id }))
            }
            Some(ChargeOutcome::Declined { reason }) => Some(("decline", PaymentCommand::Decline { order_id, reason })),
            Some(ChargeOutcome::Voided) => Some((
                "decline",
                PaymentCommand::Decline { order_id, reason: "the charge was voided at the gateway".into() },
            )),
            None => None,
        };
        if let Some((purpose, command)) = command {
            // A capture after the order ended comes with its refund (see the domain);
            // a decline of a voided payment changes nothing.
            payment = self.payment_command(trigger, purpose, order_id, command).await?;
        }
        if payment.status == PaymentStatus::Refunded {
            self.refund_at_gateway(order_id, &payment, correlation_id).await?;
        }
        Ok(())
    }

    async fn refund_at_gateway(
        &self,
        order_id: Uuid,
        payment: &PaymentState,
        correlation_id: &str,
    ) -> Result<(), ReactionError> {
        let Some(charge_id) = payment.provider_ref.as_deref() else {
            return Err(ReactionError::Failed(format!(
                "the payment of order {order_id} is refunded but has no capture"
            )));
        };
        self.gateway.refund(&format!("refund-{order_id}"), charge_id, payment.refunded_cents, correlation_id).await?;
        Ok(())
    }
}

/// What the order participant asks of the order a message is about, if anything.
fn order_command(trigger: &Trigger) -> Option<(Uuid, OrderCommand)> {
    Some(match &trigger.event {
        Fact::Inventory { event: InventoryEvent::StockReserved { sku, order_id, .. }, .. } => {
            (*order_id, OrderCommand::RecordLineReserved { sku: sku.clone() })
        }
        Fact::Inventory {
            event: InventoryEvent::StockReservationRejected { sku, order_id, requested, available },
            ..
        } => (
            *order_id,
            OrderCommand::RecordLineRejected {
                sku: sku.clone(),
                reason: format!("not enough stock of {sku}: {requested} requested, {available} available"),
            },
        ),
        Fact::Payment { order_id, event: PaymentEvent::PaymentCaptured { provider_ref, .. } } => {
            (*order_id, OrderCommand::Confirm { provider_ref: provider_ref.clone() })
        }
        Fact::Payment { order_id, event: PaymentEvent::PaymentDeclined { reason, .. } } => (
            *order_id,
            OrderCommand::Cancel { reason: format!("payment declined: {reason}"), by: CancelledBy::PaymentDeclined },
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subject_has_one_consumer_for_everyone_who_hears_it() {
        let hearings = Hearing::all();
        let placed = hearings.iter().find(|h| h.event == ("order", "OrderPlaced")).unwrap();
        assert_eq!(placed.participants, [Participant::Inventory, Participant::Deadline]);
        assert_eq!(placed.consumer(), "inventory-deadline-OrderPlaced");
        assert_eq!(placed.replaced(), ["inventory-OrderPlaced", "deadline-OrderPlaced"]);
        let cancelled = hearings.iter().find(|h| h.event == ("order", "OrderCancelled")).unwrap();
        assert_eq!(cancelled.consumer(), "inventory-payment-deadline-OrderCancelled");
        let reserved = hearings.iter().find(|h| h.event == ("inventory", "StockReserved")).unwrap();
        assert_eq!((reserved.consumer(), reserved.replaced()), ("order-StockReserved".to_owned(), vec![]));

        // The names deployed systems hold (see `Hearing::consumer`).
        let names: Vec<String> = hearings.iter().map(Hearing::consumer).collect();
        assert_eq!(
            names,
            [
                "inventory-deadline-OrderPlaced",
                "inventory-deadline-OrderRejected",
                "inventory-payment-deadline-OrderCancelled",
                "inventory-OrderShipped",
                "order-StockReserved",
                "order-StockReservationRejected",
                "order-PaymentCaptured",
                "order-PaymentDeclined",
                "payment-OrderReadyForPayment",
                "deadline-OrderConfirmed",
            ]
        );

        // Every subject once, every participant's subjects covered.
        let mut subjects: Vec<_> = hearings.iter().map(|h| h.event).collect();
        subjects.sort_unstable();
        subjects.dedup();
        assert_eq!(subjects.len(), hearings.len());
        for participant in Participant::ALL {
            for event in participant.subscriptions() {
                assert!(hearings.iter().any(|h| h.event == *event && h.participants.contains(&participant)));
            }
        }
    }

    #[test]
    fn several_reactions_come_to_the_worst_named_by_whose_it_was() {
        use Participant::{Deadline, Inventory, Payment};
        let waiting = || Err(ReactionError::Waiting("the gateway is away".into()));
        let failed = || Err(ReactionError::Failed("refused".into()));
        assert!(worst(vec![(Inventory, Ok(())), (Deadline, Ok(()))]).is_ok());
        assert!(matches!(
            worst(vec![(Inventory, Ok(())), (Payment, waiting())]),
            Err(ReactionError::Waiting(reason)) if reason == "payment: the gateway is away"
        ));
        assert!(matches!(
            worst(vec![(Inventory, failed()), (Payment, waiting()), (Deadline, Ok(()))]),
            Err(ReactionError::Failed(reason)) if reason == "inventory: refused"
        ));
        let malformed = Trigger::parse("events.order.OrderPlaced", b"{not json").unwrap_err();
        assert!(matches!(
            worst(vec![(Payment, failed()), (Deadline, Err(ReactionError::Malformed(malformed)))]),
            Err(ReactionError::Malformed(_))
        ));
    }
}
