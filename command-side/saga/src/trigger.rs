//! A message from JetStream, checked like any input before a participant acts
//! on it: the body is a stored event (as the relay publishes it), its subject
//! names the same category and type, its payload decodes as a domain event,
//! and its stream id carries the id the category uses.

use domain::inventory::InventoryEvent;
use domain::order::OrderEvent;
use domain::payment::PaymentEvent;
use domain::EventPayload;
use event_store::{Metadata, RecordedEvent};
use uuid::Uuid;

use application::{EventIds, Invocation};

/// A domain event as it arrived, with what it was decoded to.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub recorded: RecordedEvent,
    pub event: Fact,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Order { order_id: Uuid, event: OrderEvent },
    Inventory { sku: String, event: InventoryEvent },
    Payment { order_id: Uuid, event: PaymentEvent },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);

impl Trigger {
    /// Reads a message body published under `subject` (`<prefix>.<category>.<type>`).
    pub fn parse(subject: &str, body: &[u8]) -> Result<Self, Malformed> {
        let recorded: RecordedEvent =
            serde_json::from_slice(body).map_err(|e| Malformed(format!("the body is not a stored event: {e}")))?;
        let mut tokens = subject.rsplit('.');
        let (event_type, category) = (tokens.next().unwrap_or(""), tokens.next().unwrap_or(""));
        if category != recorded.category() || event_type != recorded.event_type {
            return Err(Malformed(format!(
                "subject {subject:?} does not match event {} of stream {}",
                recorded.event_type, recorded.stream_id
            )));
        }
        let id = recorded.stream_id.split_once('-').map_or("", |(_, id)| id);
        let decode = |e: domain::DecodeError| Malformed(format!("event {}: {e}", recorded.event_id));
        let uuid = || Uuid::parse_str(id).map_err(|_| Malformed(format!("stream {} has no uuid", recorded.stream_id)));
        let (kind, version, payload) = (&recorded.event_type, recorded.schema_version, recorded.payload.clone());
        let event = match recorded.category() {
            "order" => Fact::Order {
                order_id: uuid()?,
                event: OrderEvent::from_stored(kind, version, payload).map_err(decode)?,
            },
            "payment" => Fact::Payment {
                order_id: uuid()?,
                event: PaymentEvent::from_stored(kind, version, payload).map_err(decode)?,
            },
            "inventory" => Fact::Inventory {
                sku: id.to_owned(),
                event: InventoryEvent::from_stored(kind, version, payload).map_err(decode)?,
            },
            other => return Err(Malformed(format!("unknown category {other:?}"))),
        };
        Ok(Self { recorded, event })
    }

    /// How a participant runs a command because of this event: the same
    /// correlation id, this event as the cause, and event ids derived from
    /// this event's id and `purpose`, so a redelivery appends nothing new
    /// (in time order, as of this event's, when this event's id is).
    pub fn invocation(&self, actor: &str, purpose: &str, max_attempts: u32) -> Invocation {
        Invocation {
            metadata: Metadata {
                correlation_id: self.recorded.metadata.correlation_id.clone(),
                causation_id: self.recorded.event_id.to_string(),
                actor: format!("saga:{actor}"),
                // The participant's span continues the trace of the event that caused it.
                trace_context: service_kit::telemetry::traceparent(&tracing::Span::current()),
            },
            ids: EventIds::derived(
                self.recorded.event_id,
                Uuid::new_v5(&self.recorded.event_id, format!("{actor}/{purpose}").as_bytes()),
                self.recorded.recorded_at,
            ),
            expected_version: None,
            max_attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use event_store::LogPosition;
    use serde_json::json;

    use super::*;

    fn recorded(stream_id: &str, event_type: &str, payload: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            log_position: LogPosition { commit: 1, position: 1 },
            event_id: Uuid::from_u128(7),
            stream_id: stream_id.into(),
            stream_version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata { correlation_id: "corr".into(), ..Metadata::default() },
            recorded_at: Utc::now(),
        }
    }

    fn body(event: &RecordedEvent) -> Vec<u8> {
        serde_json::to_vec(event).unwrap()
    }

    #[test]
    fn a_stored_event_is_decoded_with_its_aggregate_id() {
        let order = Uuid::from_u128(1);
        let event =
            recorded("inventory-SKU-1", "StockReserved", json!({"sku": "SKU-1", "order_id": order, "quantity": 2}));
        let trigger = Trigger::parse("events.inventory.StockReserved", &body(&event)).unwrap();
        assert_eq!(
            trigger.event,
            Fact::Inventory {
                sku: "SKU-1".into(),
                event: InventoryEvent::StockReserved { sku: "SKU-1".into(), order_id: order, quantity: 2 }
            }
        );
    }

    #[test]
    fn bad_messages_are_told_apart_from_good_ones() {
        let good = recorded(
            "payment-00000000-0000-0000-0000-000000000001",
            "PaymentDeclined",
            json!({"order_id": Uuid::from_u128(1), "reason": "no"}),
        );
        assert!(Trigger::parse("events.payment.PaymentDeclined", &body(&good)).is_ok());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("events.payment.PaymentDeclined", b"not json".to_vec()),
            ("events.payment.PaymentCaptured", body(&good)),
            ("events.order.PaymentDeclined", body(&good)),
            ("events.payment.PaymentDeclined", body(&recorded("payment-xyz", "PaymentDeclined", good.payload.clone()))),
            (
                "events.payment.PaymentDeclined",
                body(&recorded(&good.stream_id, "PaymentDeclined", json!({"order_id": 5}))),
            ),
            ("events.cart.CartFilled", body(&recorded("cart-1", "CartFilled", json!({})))),
        ];
        for (subject, body) in cases {
            assert!(Trigger::parse(subject, &body).is_err(), "{subject} {}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn derived_ids_depend_on_the_trigger_and_the_purpose() {
        let event =
            recorded("order-00000000-0000-0000-0000-000000000001", "OrderConfirmed", json!({"provider_ref": "ch"}));
        let trigger = Trigger::parse("events.order.OrderConfirmed", &body(&event)).unwrap();
        let a = trigger.invocation("inventory", "reserve/SKU-1", 5);
        let b = trigger.invocation("inventory", "reserve/SKU-2", 5);
        assert_eq!(a.ids.derive("x"), trigger.invocation("inventory", "reserve/SKU-1", 5).ids.derive("x"));
        assert_ne!(a.ids.derive("x"), b.ids.derive("x"));
        assert_eq!(a.metadata.causation_id, event.event_id.to_string());
        assert_eq!((a.metadata.correlation_id.as_str(), a.metadata.actor.as_str()), ("corr", "saga:inventory"));
        // A trigger from before ids in time order (not v7 or v8) derives as it always did.
        let namespace = Uuid::new_v5(&event.event_id, b"inventory/reserve/SKU-1");
        assert_eq!(a.ids.derive("x"), Uuid::new_v5(&namespace, b"x"));
    }

    /// A trigger with an id in time order (a fresh order's events, and every
    /// event the saga derives from one) gives ids in time order as of the
    /// time it was stored, the same when it is delivered again.
    #[test]
    fn a_trigger_in_time_order_derives_ids_in_time_order() {
        let payload = json!({"provider_ref": "ch"});
        let mut event = recorded("order-00000000-0000-0000-0000-000000000001", "OrderConfirmed", payload);
        event.event_id = Uuid::now_v7();
        let delivered = || Trigger::parse("events.order.OrderConfirmed", &body(&event)).unwrap();
        let id = delivered().invocation("payment", "capture", 5).ids.derive("event/0");
        assert_eq!(id, delivered().invocation("payment", "capture", 5).ids.derive("event/0"), "delivered again");
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.as_u128() >> 80, event.recorded_at.timestamp_millis() as u128);
    }
}
