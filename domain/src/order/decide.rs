//! What an order does with each command.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::commands::{OrderCommand, PlaceOrder};
use super::events::{CancelledBy, OrderEvent, OrderLine};
use super::state::{OrderState, OrderStatus, PlacedOrder};
use crate::rules::{self, Problems};
use crate::DomainError;

pub fn decide(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
    use OrderCommand as C;
    use OrderState::{NotPlaced, Placed};
    match (state, command) {
        (NotPlaced, C::Place(place)) => place_order(place),
        (NotPlaced, _) => Err(DomainError::NotFound("order")),
        (Placed(_), C::Place(_)) => Err(DomainError::conflict("an order with this id was placed already")),
        (Placed(order), C::RecordLineReserved { sku }) => record_line_reserved(order, sku),
        (Placed(order), C::RecordLineRejected { sku, reason }) => record_line_rejected(order, sku, reason),
        (Placed(order), C::Confirm { provider_ref }) => confirm(order, provider_ref),
        (Placed(order), C::Cancel { reason, by }) => cancel(order, reason, by),
        (Placed(order), C::Ship { now }) => ship(order, now),
        (Placed(order), C::Expire { now }) => Ok(if order.status == OrderStatus::Pending && now >= order.deadline {
            vec![OrderEvent::OrderCancelled {
                reason: "the order was not completed before its deadline".into(),
                by: CancelledBy::Deadline,
                payment_refund_due: order.ready_for_payment,
            }]
        } else {
            vec![]
        }),
    }
}

fn place_order(cmd: PlaceOrder) -> Result<Vec<OrderEvent>, DomainError> {
    let mut problems = Problems::default();
    rules::check_customer_id(&mut problems, "customer_id", &cmd.customer_id);
    rules::check_currency(&mut problems, "currency", &cmd.currency);
    rules::check_text(&mut problems, "payment_token", &cmd.payment_token, rules::MAX_TOKEN_CHARS);
    if cmd.lines.is_empty() || cmd.lines.len() > rules::MAX_LINES {
        problems.add("lines", format!("an order has 1 to {} lines", rules::MAX_LINES));
    }
    let mut seen = HashSet::new();
    for (i, line) in cmd.lines.iter().enumerate() {
        rules::check_sku(&mut problems, &format!("lines[{i}].sku"), &line.sku);
        if !seen.insert(line.sku.as_str()) {
            problems.add(format!("lines[{i}].sku"), "each sku may appear on only one line");
        }
        rules::check_quantity(&mut problems, &format!("lines[{i}].quantity"), line.quantity, rules::MAX_LINE_QUANTITY);
        rules::check_unit_price(&mut problems, &format!("lines[{i}].unit_price_cents"), line.unit_price_cents);
    }
    if cmd.deadline <= cmd.placed_at {
        problems.add("deadline", "must be after the time the order is placed");
    }
    problems.into_result()?;

    // The rules above bound every number: 100 lines * 10^4 * 10^9 fits in u64.
    let lines: Vec<OrderLine> = cmd
        .lines
        .into_iter()
        .map(|l| OrderLine { sku: l.sku, quantity: l.quantity as u32, unit_price_cents: l.unit_price_cents as u64 })
        .collect();
    let total_cents = lines.iter().map(|l| u64::from(l.quantity) * l.unit_price_cents).sum();
    Ok(vec![OrderEvent::OrderPlaced {
        order_id: cmd.order_id,
        customer_id: cmd.customer_id,
        currency: cmd.currency,
        payment_token: cmd.payment_token,
        lines,
        total_cents,
        placed_at: cmd.placed_at,
        deadline: cmd.deadline,
        contact_email: cmd.contact_email,
    }])
}

fn record_line_reserved(order: &PlacedOrder, sku: String) -> Result<Vec<OrderEvent>, DomainError> {
    if !order.has_line(&sku) {
        return Err(DomainError::invalid("sku", format!("the order has no line for sku {sku:?}")));
    }
    // Redelivered, or too late to matter: inventory releases what a finished order holds.
    if order.reserved.contains(&sku) || order.status != OrderStatus::Pending {
        return Ok(vec![]);
    }
    let mut events = vec![OrderEvent::OrderLineReserved { sku }];
    if order.reserved.len() + 1 == order.lines.len() {
        events.push(OrderEvent::OrderReadyForPayment {
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            payment_token: order.payment_token.clone(),
        });
    }
    Ok(events)
}

fn record_line_rejected(order: &PlacedOrder, sku: String, reason: String) -> Result<Vec<OrderEvent>, DomainError> {
    if !order.has_line(&sku) {
        return Err(DomainError::invalid("sku", format!("the order has no line for sku {sku:?}")));
    }
    if order.status != OrderStatus::Pending {
        return Ok(vec![]);
    }
    Ok(vec![OrderEvent::OrderRejected { reason, sku }])
}

fn confirm(order: &PlacedOrder, provider_ref: String) -> Result<Vec<OrderEvent>, DomainError> {
    match order.status {
        OrderStatus::Pending if order.ready_for_payment => Ok(vec![OrderEvent::OrderConfirmed { provider_ref }]),
        OrderStatus::Pending => Err(DomainError::conflict("the order's stock is not reserved yet")),
        // Redelivered; or the order ended first, and the payment side refunds.
        OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Rejected | OrderStatus::Cancelled => Ok(vec![]),
    }
}

fn ship(order: &PlacedOrder, now: DateTime<Utc>) -> Result<Vec<OrderEvent>, DomainError> {
    match order.status {
        OrderStatus::Confirmed => Ok(vec![OrderEvent::OrderShipped { shipped_at: now }]),
        OrderStatus::Pending => Err(DomainError::conflict("the order is not confirmed yet")),
        OrderStatus::Shipped => Err(DomainError::conflict("the order has shipped already")),
        OrderStatus::Rejected => Err(DomainError::conflict("the order was rejected and cannot be shipped")),
        OrderStatus::Cancelled => Err(DomainError::conflict("the order was cancelled and cannot be shipped")),
    }
}

fn cancel(order: &PlacedOrder, reason: String, by: CancelledBy) -> Result<Vec<OrderEvent>, DomainError> {
    let mut problems = Problems::default();
    rules::check_text(&mut problems, "reason", &reason, rules::MAX_REASON_CHARS);
    problems.into_result()?;
    match (order.status, by) {
        (OrderStatus::Pending | OrderStatus::Confirmed, _) => {
            Ok(vec![OrderEvent::OrderCancelled { reason, by, payment_refund_due: order.ready_for_payment }])
        }
        // The saga's cancellations are idempotent; a customer is told why nothing happened.
        (
            OrderStatus::Shipped | OrderStatus::Rejected | OrderStatus::Cancelled,
            CancelledBy::PaymentDeclined | CancelledBy::Deadline,
        ) => Ok(vec![]),
        (OrderStatus::Shipped, CancelledBy::Customer) => {
            Err(DomainError::conflict("the order has shipped and can no longer be cancelled"))
        }
        (OrderStatus::Cancelled, CancelledBy::Customer) => Err(DomainError::conflict("the order is already cancelled")),
        (OrderStatus::Rejected, CancelledBy::Customer) => {
            Err(DomainError::conflict("the order was rejected and cannot be cancelled"))
        }
    }
}
