//! The notifier's reaction to an order's milestone: the messages it causes
//! are recorded in the deliveries' table (one per recipient, with ids
//! derived from the event), then the JetStream message is acknowledged. The
//! dispatcher sends from the table. A redelivered event records nothing new,
//! so nothing is sent twice because of it.

use std::sync::Arc;

use domain::order::{Order, OrderState};
use domain::Aggregate;
use event_store::{EventStore, StoreError};
use saga::consumer::Reaction;
use saga::participants::ReactionError;
use saga::trigger::{Fact, Trigger};
use service_kit::personal_data::{Opened, Vault};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::message::{milestone_type, Milestone};
use crate::outbox::{self, Channel, NewDelivery};

/// Why an e-mail is recorded as skipped.
pub const ERASED: &str = "the customer's personal data was erased";

/// What the consumers feed: it records the deliveries of each milestone.
#[derive(Clone)]
pub struct Recorder {
    pub store: Arc<dyn EventStore>,
    pub pool: PgPool,
    pub vault: Vault,
    /// E-mail is sent (`SMTP_URL` is set).
    pub email: bool,
    /// Woken when something new is due.
    pub wake: Arc<Notify>,
}

#[async_trait::async_trait]
impl Reaction for Recorder {
    fn participant(&self) -> &'static str {
        "notifications"
    }

    async fn react(&self, trigger: &Trigger) -> Result<(), ReactionError> {
        let Fact::Order { order_id, event } = &trigger.event else { return Ok(()) };
        let Some(event_type) = milestone_type(event) else { return Ok(()) };
        let order = self.order_as_of(*order_id, trigger.recorded.stream_version).await?;
        let milestone =
            Milestone { event_id: trigger.recorded.event_id, at: trigger.recorded.recorded_at, order: &order, event };
        let new = |channel, endpoint_id, delivery_id, body| NewDelivery {
            delivery_id,
            channel,
            endpoint_id,
            event_id: trigger.recorded.event_id,
            event_type,
            order_id: *order_id,
            correlation_id: trigger.recorded.metadata.correlation_id.clone(),
            body,
            subject: None,
            recipient: None,
            skipped: None,
        };
        let mut deliveries = Vec::new();
        if let (true, Some(sealed)) = (self.email, &order.contact_email) {
            let opened = self.vault.open(sealed.key_id, &sealed.sealed).await.map_err(|e| waiting(e.to_string()))?;
            let (subject, text) = milestone.email();
            deliveries.push(NewDelivery {
                subject: Some(subject),
                recipient: Some(sealed.clone()),
                skipped: (opened == Opened::Erased).then(|| ERASED.to_owned()),
                ..new(Channel::Email, None, email_delivery_id(trigger.recorded.event_id), text)
            });
        }
        let endpoints = subscribed(&self.pool, event_type).await.map_err(database)?;
        if !endpoints.is_empty() {
            let body = milestone.webhook_body();
            for endpoint_id in endpoints {
                let id = webhook_delivery_id(trigger.recorded.event_id, endpoint_id);
                deliveries.push(new(Channel::Webhook, Some(endpoint_id), id, body.clone()));
            }
        }
        let recorded = outbox::record(&self.pool, &deliveries).await.map_err(database)?;
        tracing::debug!(event_type, recorded, of = deliveries.len(), "deliveries recorded");
        if recorded > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }
}

impl Recorder {
    /// The order as it was right after the event: a message says what the
    /// event meant, however late it is handled.
    async fn order_as_of(&self, order_id: Uuid, version: u64) -> Result<domain::order::PlacedOrder, ReactionError> {
        let limit = usize::try_from(version).unwrap_or(usize::MAX);
        let stream = self.store.read_stream_page(&Order::stream_id(order_id), 1, limit).await.map_err(store)?;
        let mut events = Vec::with_capacity(stream.len());
        for recorded in &stream {
            let event = domain::EventPayload::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.payload.clone(),
            )
            .map_err(|e| ReactionError::Failed(format!("event {}: {e}", recorded.event_id)))?;
            events.push(event);
        }
        match Order::fold(events.iter()) {
            OrderState::Placed(order) => Ok(order),
            OrderState::NotPlaced => Err(ReactionError::Failed(format!("order {order_id} does not exist"))),
        }
    }
}

/// The e-mail of an event: one per event (an order has one address).
pub fn email_delivery_id(event_id: Uuid) -> Uuid {
    Uuid::new_v5(&event_id, b"notifications/email")
}

/// The delivery of an event to an endpoint.
pub fn webhook_delivery_id(event_id: Uuid, endpoint_id: Uuid) -> Uuid {
    Uuid::new_v5(&event_id, format!("notifications/webhook/{endpoint_id}").as_bytes())
}

/// The live endpoints that hear `event_type`, in the order of their ids: two
/// notifier instances handling one event at once (a redelivery) then insert
/// its deliveries in the same order, so neither waits for a row the other
/// holds while holding one the other waits for (a deadlock, broken only
/// after a second, with the event log held back meanwhile).
async fn subscribed(pool: &PgPool, event_type: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT endpoint_id FROM webhook_endpoints WHERE deleted_at IS NULL AND $1 = ANY(event_types) \
         ORDER BY endpoint_id",
    )
    .bind(event_type)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

fn waiting(reason: String) -> ReactionError {
    ReactionError::Waiting(reason)
}

fn database(error: sqlx::Error) -> ReactionError {
    store(StoreError::from(error))
}

fn store(error: StoreError) -> ReactionError {
    match error {
        StoreError::Unavailable(_) => waiting(error.to_string()),
        other => ReactionError::Failed(other.to_string()),
    }
}
