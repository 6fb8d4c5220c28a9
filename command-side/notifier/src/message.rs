//! What the notifier says about an order's milestone: the webhook's JSON
//! body and the customer's e-mail. Pure: the same event gives the same
//! message, byte for byte, so a resend is the message sent before.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::order::{CancelledBy, OrderEvent, PlacedOrder};
use serde_json::json;
use uuid::Uuid;

/// A milestone of an order: the event that marks it and the order after it.
#[derive(Debug, Clone)]
pub struct Milestone<'a> {
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub order: &'a PlacedOrder,
    pub event: &'a OrderEvent,
}

/// The webhook event type of an order event, if it is a milestone.
pub fn milestone_type(event: &OrderEvent) -> Option<&'static str> {
    match event {
        OrderEvent::OrderConfirmed { .. } => Some("order.confirmed"),
        OrderEvent::OrderRejected { .. } => Some("order.rejected"),
        OrderEvent::OrderCancelled { .. } => Some("order.cancelled"),
        OrderEvent::OrderShipped { .. } => Some("order.shipped"),
        _ => None,
    }
}

impl Milestone<'_> {
    pub fn event_type(&self) -> &'static str {
        milestone_type(self.event).expect("a milestone is one of the milestone events")
    }

    /// Cents given back to the customer: the whole payment when the
    /// cancellation found one taken.
    fn refund_cents(&self) -> u64 {
        match self.event {
            OrderEvent::OrderCancelled { payment_refund_due: true, .. } => self.order.total_cents,
            _ => 0,
        }
    }

    /// The Standard Webhooks body: `type`, `timestamp`, `data`. Holds no
    /// personal data (the customer id is a reference; the address is never in it).
    pub fn webhook_body(&self) -> String {
        let order = self.order;
        let mut data = json!({
            "order_id": order.order_id,
            "customer_id": order.customer_id,
            "status": order.status,
            "currency": order.currency,
            "total_cents": order.total_cents,
            "lines": order.lines.iter().map(|l| json!({
                "sku": l.sku, "quantity": l.quantity, "unit_price_cents": l.unit_price_cents,
            })).collect::<Vec<_>>(),
            "event_id": self.event_id,
        });
        match self.event {
            OrderEvent::OrderConfirmed { provider_ref } => data["payment_ref"] = json!(provider_ref),
            OrderEvent::OrderShipped { shipped_at } => data["shipped_at"] = json!(timestamp(*shipped_at)),
            OrderEvent::OrderRejected { reason, sku } => {
                data["reason"] = json!(reason);
                data["sku"] = json!(sku);
            }
            OrderEvent::OrderCancelled { reason, by, .. } => {
                data["reason"] = json!(reason);
                data["cancelled_by"] = json!(by);
                data["refund_cents"] = json!(self.refund_cents());
            }
            _ => {}
        }
        json!({"type": self.event_type(), "timestamp": timestamp(self.at), "data": data}).to_string()
    }

    /// The customer's e-mail: subject and plain text.
    pub fn email(&self) -> (String, String) {
        let order = self.order;
        let short = &order.order_id.simple().to_string()[..8];
        let total = money(order.total_cents, &order.currency);
        let (subject, opening, closing) = match self.event {
            OrderEvent::OrderConfirmed { .. } => (
                format!("Your order {short} is confirmed"),
                "your order is confirmed and paid. We will tell you when it ships.".to_owned(),
                format!("Payment reference: {}", order_payment_ref(self.event)),
            ),
            OrderEvent::OrderShipped { .. } => {
                (format!("Your order {short} has shipped"), "your order is on its way.".to_owned(), String::new())
            }
            OrderEvent::OrderRejected { reason, .. } => (
                format!("Your order {short} could not be accepted"),
                format!("we could not accept your order: {reason}."),
                "Nothing was charged.".to_owned(),
            ),
            OrderEvent::OrderCancelled { reason, by, .. } => {
                let why = match by {
                    CancelledBy::Customer => format!("your order is cancelled, as you asked ({reason})."),
                    CancelledBy::PaymentDeclined => format!("your order is cancelled: {reason}."),
                    CancelledBy::Deadline => "your order is cancelled: it could not be completed in time.".to_owned(),
                };
                let money_back = match self.refund_cents() {
                    0 => "Nothing was charged.".to_owned(),
                    cents => format!("The {} you paid is refunded.", money(cents, &order.currency)),
                };
                (format!("Your order {short} is cancelled"), why, money_back)
            }
            _ => unreachable!("a milestone is one of the milestone events"),
        };
        let mut text = format!("Hello,\n\n{opening}\n\nOrder {}\n", order.order_id);
        for line in &order.lines {
            let amount = money(line.unit_price_cents * u64::from(line.quantity), &order.currency);
            text.push_str(&format!("  {} x {}  {amount}\n", line.quantity, line.sku));
        }
        text.push_str(&format!("Total: {total}\n"));
        if !closing.is_empty() {
            text.push_str(&format!("\n{closing}\n"));
        }
        text.push_str("\nThis message was sent automatically; replies are not read.\n");
        (subject, text)
    }
}

fn order_payment_ref(event: &OrderEvent) -> &str {
    match event {
        OrderEvent::OrderConfirmed { provider_ref } => provider_ref,
        _ => "",
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `3998, "EUR"` -> `39.98 EUR`.
pub fn money(cents: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use domain::order::{OrderLine, OrderStatus};
    use serde_json::Value;

    use super::*;

    fn order(status: OrderStatus) -> PlacedOrder {
        PlacedOrder {
            order_id: Uuid::from_u128(0xabcdef12_0000_0000_0000_000000000001),
            customer_id: "c-42".into(),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: vec![
                OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 1999 },
                OrderLine { sku: "SKU-2".into(), quantity: 1, unit_price_cents: 500 },
            ],
            total_cents: 4498,
            deadline: DateTime::UNIX_EPOCH,
            status,
            reserved: BTreeSet::new(),
            ready_for_payment: true,
            cancelled_by: None,
            contact_email: None,
        }
    }

    fn milestone<'a>(order: &'a PlacedOrder, event: &'a OrderEvent) -> Milestone<'a> {
        Milestone { event_id: Uuid::from_u128(9), at: DateTime::UNIX_EPOCH, order, event }
    }

    #[test]
    fn only_the_four_milestones_are_told() {
        assert_eq!(
            milestone_type(&OrderEvent::OrderConfirmed { provider_ref: "ch_1".into() }),
            Some("order.confirmed")
        );
        assert_eq!(milestone_type(&OrderEvent::OrderLineReserved { sku: "SKU-1".into() }), None);
    }

    #[test]
    fn a_cancellation_says_why_and_what_is_refunded() {
        let order = order(OrderStatus::Cancelled);
        let event = OrderEvent::OrderCancelled {
            reason: "changed my mind".into(),
            by: CancelledBy::Customer,
            payment_refund_due: true,
        };
        let body: Value = serde_json::from_str(&milestone(&order, &event).webhook_body()).unwrap();
        assert_eq!(body["type"], "order.cancelled");
        assert_eq!(body["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(body["data"]["status"], "cancelled");
        assert_eq!(body["data"]["refund_cents"], 4498);
        assert_eq!(body["data"]["cancelled_by"], "customer");
        assert_eq!(body["data"]["lines"][0]["sku"], "SKU-1");
        let (subject, text) = milestone(&order, &event).email();
        assert_eq!(subject, "Your order abcdef12 is cancelled");
        assert!(text.contains("as you asked (changed my mind)"), "{text}");
        assert!(text.contains("  2 x SKU-1  39.98 EUR\n"), "{text}");
        assert!(text.contains("Total: 44.98 EUR"), "{text}");
        assert!(text.contains("The 44.98 EUR you paid is refunded."), "{text}");
    }

    #[test]
    fn nothing_charged_nothing_refunded() {
        let order = order(OrderStatus::Cancelled);
        let event =
            OrderEvent::OrderCancelled { reason: "late".into(), by: CancelledBy::Deadline, payment_refund_due: false };
        let (_, text) = milestone(&order, &event).email();
        assert!(text.contains("could not be completed in time") && text.contains("Nothing was charged."), "{text}");
        let rejected = OrderEvent::OrderRejected { reason: "not enough stock of SKU-2".into(), sku: "SKU-2".into() };
        let (subject, text) = milestone(&order, &rejected).email();
        assert_eq!(subject, "Your order abcdef12 could not be accepted");
        assert!(text.contains("not enough stock of SKU-2") && text.contains("Nothing was charged."), "{text}");
    }

    #[test]
    fn the_same_event_says_the_same_thing() {
        let order = order(OrderStatus::Confirmed);
        let event = OrderEvent::OrderConfirmed { provider_ref: "ch_1".into() };
        assert_eq!(milestone(&order, &event).webhook_body(), milestone(&order, &event).webhook_body());
        let body: Value = serde_json::from_str(&milestone(&order, &event).webhook_body()).unwrap();
        assert_eq!(body["data"]["payment_ref"], "ch_1");
        assert!(milestone(&order, &event).email().1.contains("Payment reference: ch_1"));
    }
}
