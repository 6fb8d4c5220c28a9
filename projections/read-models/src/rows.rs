//! Read models that are a pure fold of events into rows, one row per key.
//!
//! A [`RowModel`] says which row an event changes and how, without IO; its
//! `load` and `save` read and write many rows in one statement. [`Rows`]
//! turns it into a [`Projection`]: per batch, one `SELECT` of the rows the
//! batch touches, the fold in memory, one upsert of the rows it changed. That
//! is what lets a rebuild replay tens of thousands of events a second.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;

use crate::{ApplyError, BatchError, Projection};

/// A read model as a fold: `row = apply(row, change)` for each event's change.
#[async_trait]
pub trait RowModel: Send + Sync + 'static {
    /// The projection's name: see [`Projection::name`].
    const NAME: &'static str;
    /// The tables it writes: see [`Projection::tables`].
    const TABLES: &'static [&'static str];
    /// The stream categories whose events it folds (`order` for `order-<id>`).
    const CATEGORIES: &'static [&'static str];

    /// What identifies a row (its primary key).
    type Key: Eq + Hash + Clone + Send + Sync;
    type Row: Send + Sync;
    /// What one event says about one row, decoded.
    type Change: Send;

    /// The row `event` changes, and how; `None` for events of no interest.
    fn change(event: &RecordedEvent) -> Result<Option<Keyed<Self>>, ApplyError>;

    /// The row after `change` (pure). `None` in and out: still no row.
    fn apply(key: &Self::Key, row: Option<Self::Row>, change: Self::Change) -> Option<Self::Row>;

    /// The stored rows of these keys (those that exist). Use an unprepared
    /// query (`.persistent(false)`): a cached generic plan made while the table
    /// was small, as a rebuild's shadow table is at first, stays a sequential
    /// scan as the table grows.
    async fn load(tx: &mut PgConnection, keys: &[Self::Key]) -> Result<Vec<(Self::Key, Self::Row)>, sqlx::Error>;

    /// Inserts or replaces these rows.
    async fn save(tx: &mut PgConnection, rows: Vec<Self::Row>) -> Result<(), sqlx::Error>;
}

/// A change and the key of the row it is about.
pub type Keyed<M> = (<M as RowModel>::Key, <M as RowModel>::Change);

/// A [`RowModel`] as a [`Projection`].
pub struct Rows<M>(pub M);

#[async_trait]
impl<M: RowModel> Projection for Rows<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        M::TABLES
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        M::CATEGORIES.contains(&event.category())
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[RecordedEvent]) -> Result<usize, BatchError> {
        let mut changes = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if let Some(change) = M::change(event).map_err(|source| BatchError::Event { index, source })? {
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let mut seen = HashSet::with_capacity(changes.len());
        let keys: Vec<M::Key> =
            changes.iter().filter(|(key, _)| seen.insert(key)).map(|(key, _)| key.clone()).collect();
        let mut rows: HashMap<M::Key, M::Row> = M::load(tx, &keys).await?.into_iter().collect();
        for (key, change) in changes {
            let before = rows.remove(&key);
            if let Some(after) = M::apply(&key, before, change) {
                rows.insert(key, after);
            }
        }
        let touched: Vec<M::Row> = keys.iter().filter_map(|key| rows.remove(key)).collect();
        let written = touched.len();
        if written > 0 {
            M::save(tx, touched).await?;
        }
        Ok(written)
    }
}

/// The uuid in a stream id such as `order-<uuid>`.
pub(crate) fn id_of_stream(event: &RecordedEvent) -> Result<uuid::Uuid, ApplyError> {
    let id = event.stream_id.split_once('-').map(|(_, id)| id).unwrap_or_default();
    uuid::Uuid::parse_str(id).map_err(|_| ApplyError::Inconsistent(format!("stream {} has no uuid", event.stream_id)))
}

#[cfg(test)]
mod tests {
    //! The folds alone, without a database: given events, then rows.

    use std::collections::HashMap;

    use chrono::{TimeZone, Utc};
    use domain::inventory::InventoryEvent;
    use domain::order::{CancelledBy, OrderEvent, OrderLine};
    use domain::payment::PaymentEvent;
    use domain::EventPayload;
    use event_store::{LogPosition, Metadata, RecordedEvent};
    use uuid::Uuid;

    use super::RowModel;
    use crate::inventory::Inventory;
    use crate::orders::Orders;
    use crate::payments::Payments;

    fn recorded(stream_id: &str, stream_version: u64, event: &impl EventPayload) -> RecordedEvent {
        RecordedEvent {
            log_position: LogPosition { commit: stream_version, position: stream_version },
            event_id: Uuid::new_v4(),
            stream_id: stream_id.into(),
            stream_version,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata: Metadata::default(),
            recorded_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, stream_version as u32).unwrap(),
        }
    }

    /// The rows `events` leave, folded as the projection does.
    fn fold<M: RowModel>(events: &[RecordedEvent]) -> HashMap<M::Key, M::Row> {
        let mut rows = HashMap::new();
        for event in events {
            if let Some((key, change)) = M::change(event).unwrap() {
                let before = rows.remove(&key);
                if let Some(after) = M::apply(&key, before, change) {
                    rows.insert(key, after);
                }
            }
        }
        rows
    }

    fn placed(order_id: Uuid) -> OrderEvent {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        OrderEvent::OrderPlaced {
            order_id,
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: vec![OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 500 }],
            total_cents: 1000,
            placed_at: at,
            deadline: at + chrono::Duration::minutes(15),
            contact_email: None,
        }
    }

    #[test]
    fn an_order_row_follows_the_order_and_its_payment() {
        let id = Uuid::new_v4();
        let (order, payment) = (format!("order-{id}"), format!("payment-{id}"));
        let requested = PaymentEvent::PaymentRequested {
            order_id: id,
            amount_cents: 1000,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        };
        let captured = PaymentEvent::PaymentCaptured { order_id: id, amount_cents: 1000, provider_ref: "p-1".into() };
        let cancelled = OrderEvent::OrderCancelled {
            reason: "changed my mind".into(),
            by: CancelledBy::Customer,
            payment_refund_due: true,
        };
        let refunded = PaymentEvent::PaymentRefunded { order_id: id, amount_cents: 1000, reason: "cancelled".into() };
        let events = [
            recorded(&order, 1, &placed(id)),
            recorded(&order, 2, &OrderEvent::OrderLineReserved { sku: "SKU-1".into() }),
            recorded(&payment, 1, &requested),
            recorded(&payment, 2, &captured),
            recorded(&order, 3, &OrderEvent::OrderConfirmed { provider_ref: "p-1".into() }),
            recorded(&order, 4, &cancelled),
            recorded(&payment, 3, &refunded),
        ];
        let row = &fold::<Orders>(&events)[&id];
        assert_eq!((row.status.as_str(), row.payment_status.as_str()), ("cancelled", "refunded"));
        assert_eq!(row.reason.as_deref(), Some("changed my mind"));
        assert_eq!((row.version, row.payment_version, row.total_cents), (4, 3, 1000));
        assert_eq!(Some(row.updated_at), events.iter().map(|e| e.recorded_at).max(), "the latest change");
    }

    #[test]
    fn an_event_applied_again_changes_nothing() {
        let id = Uuid::new_v4();
        let order = format!("order-{id}");
        let confirmed = recorded(&order, 2, &OrderEvent::OrderConfirmed { provider_ref: "p".into() });
        let once = fold::<Orders>(&[recorded(&order, 1, &placed(id)), confirmed.clone()]);
        let twice = fold::<Orders>(&[recorded(&order, 1, &placed(id)), confirmed.clone(), confirmed]);
        assert_eq!(once, twice);
        let received =
            recorded("inventory-SKU-1", 1, &InventoryEvent::StockReceived { sku: "SKU-1".into(), quantity: 5 });
        assert_eq!(fold::<Inventory>(&[received.clone(), received])["SKU-1"].on_hand, 5);
    }

    #[test]
    fn events_about_an_order_never_placed_leave_no_order_row() {
        let id = Uuid::new_v4();
        let confirmed = recorded(&format!("order-{id}"), 2, &OrderEvent::OrderConfirmed { provider_ref: "p".into() });
        assert!(fold::<Orders>(&[confirmed]).is_empty());
    }

    #[test]
    fn stock_moves_with_receipts_reservations_and_releases() {
        let stream = "inventory-SKU-1";
        let order_id = Uuid::new_v4();
        let sku = || "SKU-1".to_owned();
        let rejected = InventoryEvent::StockReservationRejected { sku: sku(), order_id, requested: 99, available: 7 };
        let events = [
            recorded(stream, 1, &InventoryEvent::StockReceived { sku: sku(), quantity: 10 }),
            recorded(stream, 2, &InventoryEvent::StockReserved { sku: sku(), order_id, quantity: 3 }),
            recorded(stream, 3, &rejected),
            recorded(stream, 4, &InventoryEvent::StockReserved { sku: sku(), order_id, quantity: 4 }),
            recorded(stream, 5, &InventoryEvent::StockReleased { sku: sku(), order_id, quantity: 3 }),
        ];
        let row = &fold::<Inventory>(&events)["SKU-1"];
        assert_eq!((row.on_hand, row.reserved, row.version), (10, 4, 5));
    }

    #[test]
    fn a_payment_keeps_its_amount_and_reference_through_later_events() {
        let id = Uuid::new_v4();
        let stream = format!("payment-{id}");
        let requested = PaymentEvent::PaymentRequested {
            order_id: id,
            amount_cents: 1000,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        };
        let captured = PaymentEvent::PaymentCaptured { order_id: id, amount_cents: 1000, provider_ref: "p-1".into() };
        let refunded = PaymentEvent::PaymentRefunded { order_id: id, amount_cents: 1000, reason: "r".into() };
        let events =
            [recorded(&stream, 1, &requested), recorded(&stream, 2, &captured), recorded(&stream, 3, &refunded)];
        let row = &fold::<Payments>(&events)[&id];
        assert_eq!((row.status.as_str(), row.amount_cents, row.currency.as_str()), ("refunded", 1000, "EUR"));
        assert_eq!(row.provider_ref.as_deref(), Some("p-1"));
    }

    #[test]
    fn a_payment_voided_before_it_was_requested_has_no_amount() {
        let id = Uuid::new_v4();
        let voided = PaymentEvent::PaymentVoided { order_id: id, reason: "cancelled".into() };
        let row = &fold::<Payments>(&[recorded(&format!("payment-{id}"), 1, &voided)])[&id];
        assert_eq!((row.status.as_str(), row.amount_cents, row.currency.as_str()), ("voided", 0, "XXX"));
    }

    #[test]
    fn an_undecodable_event_is_an_error_not_a_skip() {
        let mut bad = recorded("order-x", 1, &placed(Uuid::new_v4()));
        bad.payload = serde_json::json!({"order_id": 42});
        assert!(Orders::change(&bad).is_err());
    }
}
