//! Order commands: `PlaceOrder`, `CancelOrder`, `ShipOrder`. A customer
//! places and cancels only its own orders; fulfilment ships any confirmed one.

use domain::order::{CancelledBy, LineInput, Order, OrderCommand, OrderState};
use domain::personal::Sealed;
use domain::rules::{self, Problems};
use domain::{Aggregate, DomainError};
use service_kit::personal_data::VaultError;
use uuid::Uuid;

use crate::commands;
use crate::outcome::{CommandError, Done, OrderAccepted, Refusal};
use crate::{Application, Request, Start};

/// A new order, as the client sent it (`decide` checks every rule).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceOrder {
    pub customer_id: String,
    pub currency: String,
    pub payment_token: String,
    pub lines: Vec<LineInput>,
    /// In clear here only: sealed under the customer's key before anything
    /// is decided or written (ADR 0014).
    pub contact_email: Option<String>,
}

/// Cancel the order `order_id`, for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    pub order_id: Uuid,
    pub reason: String,
}

/// Ship the confirmed order `order_id` (fulfilment, or an administrator:
/// the API checks the scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipOrder {
    pub order_id: Uuid,
}

impl Application {
    /// Places an order; its id derives from the request's key (a retry
    /// places the same order), and its deadline is the order deadline from
    /// the request's time.
    pub async fn place_order(&self, request: &Request, order: PlaceOrder) -> Result<Done<OrderAccepted>, CommandError> {
        if request.caller.customer.as_deref().is_some_and(|customer| customer != order.customer_id) {
            return Err(Refusal::Forbidden { reason: "this token acts for another customer".into() }.into());
        }
        let run = match self.start(request).await? {
            Start::Run(run) => run,
            Start::Saved(saved) => return Done::from_saved(saved),
        };
        let order_id = run.invocation.ids.derive("order_id");
        let place = domain::order::PlaceOrder {
            order_id,
            customer_id: order.customer_id,
            currency: order.currency,
            payment_token: order.payment_token,
            lines: order.lines,
            placed_at: run.now,
            deadline: run.now + self.settings().order_deadline,
            contact_email: None,
        };
        let outcome = match self.seal_contact(&place, order.contact_email.as_deref()).await {
            Ok(contact_email) => {
                let command = OrderCommand::Place(domain::order::PlaceOrder { contact_email, ..place });
                commands::create::<Order>(&**self.store(), &Order::stream_id(order_id), &run.invocation, command)
                    .await
                    .map(|appended| OrderAccepted {
                        order_id,
                        version: appended.stream_version,
                        position: appended.position,
                    })
                    .map_err(CommandError::from)
            }
            Err(error) => Err(error),
        };
        self.finish(request, run.lease, outcome).await
    }

    /// Seals the order's contact address, if it has one, under its
    /// customer's key, once every rule of the order holds (the address's
    /// too): a refused order leaves no key behind.
    async fn seal_contact(
        &self,
        place: &domain::order::PlaceOrder,
        email: Option<&str>,
    ) -> Result<Option<Sealed>, CommandError> {
        let Some(email) = email else { return Ok(None) };
        let mut problems = Problems::default();
        rules::check_email(&mut problems, "contact_email", email);
        let check = OrderCommand::Place(place.clone());
        if let Err(DomainError::Invalid(mut others)) = Order::decide(&OrderState::default(), check) {
            problems.0.append(&mut others);
        }
        problems.into_result().map_err(|invalid| CommandError::Refused(invalid.into()))?;
        let (key_id, sealed) = self.vault().seal(&place.customer_id, email).await.map_err(|error| match error {
            VaultError::Database(error) if event_store::is_transient(&error) => {
                CommandError::Unavailable(error.to_string())
            }
            VaultError::Busy => CommandError::Unavailable(error.to_string()),
            other => CommandError::Failed(other.to_string()),
        })?;
        Ok(Some(Sealed { key_id, sealed }))
    }

    /// Cancels an order (a confirmed one too: its payment is refunded).
    pub async fn cancel_order(
        &self,
        request: &Request,
        cancel: CancelOrder,
    ) -> Result<Done<OrderAccepted>, CommandError> {
        let run = match self.start(request).await? {
            Start::Run(run) => run,
            Start::Saved(saved) => return Done::from_saved(saved),
        };
        let CancelOrder { order_id, reason } = cancel;
        let customer = request.caller.customer.as_deref();
        // A customer cancels its own orders only; an unknown order is the domain's to report.
        let owner = |state: &OrderState| match (state, customer) {
            (OrderState::Placed(order), Some(customer)) if order.customer_id != customer => {
                Err("this order belongs to another customer".to_owned())
            }
            _ => Ok(()),
        };
        let command = OrderCommand::Cancel { reason, by: CancelledBy::Customer };
        let stream_id = Order::stream_id(order_id);
        let outcome = commands::execute_checked::<Order>(&**self.store(), &stream_id, &run.invocation, command, owner)
            .await
            .map(|appended| OrderAccepted { order_id, version: appended.stream_version, position: appended.position })
            .map_err(CommandError::from);
        self.finish(request, run.lease, outcome).await
    }

    /// Ships a confirmed order: its stock leaves the inventory (the saga
    /// ships each line's hold), and it can no longer be cancelled.
    pub async fn ship_order(&self, request: &Request, ship: ShipOrder) -> Result<Done<OrderAccepted>, CommandError> {
        let run = match self.start(request).await? {
            Start::Run(run) => run,
            Start::Saved(saved) => return Done::from_saved(saved),
        };
        let ShipOrder { order_id } = ship;
        let command = OrderCommand::Ship { now: run.now };
        let outcome =
            commands::execute::<Order>(&**self.store(), &Order::stream_id(order_id), &run.invocation, command)
                .await
                .map(|appended| OrderAccepted {
                    order_id,
                    version: appended.stream_version,
                    position: appended.position,
                })
                .map_err(CommandError::from);
        self.finish(request, run.lease, outcome).await
    }
}
