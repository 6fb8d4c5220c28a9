//! The `rm_story` read model: one row per event of the shop's streams
//! (orders, payments, inventory), keyed by its log position, so an order's
//! story (every event that carries one of its correlation ids, across
//! streams, in log order) is one indexed query. Rows are only ever added.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{BatchError, Projection};

pub struct Story;

pub const NAME: &str = "story";

/// The categories whose events tell stories.
const CATEGORIES: [&str; 3] = ["order", "payment", "inventory"];

/// One step of a story.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, ToSchema)]
pub struct Step {
    /// Its place in the global log.
    pub position: i64,
    pub correlation_id: String,
    pub stream_id: String,
    #[sqlx(rename = "stream_version")]
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub event_id: Uuid,
    /// What caused it: an HTTP request's id, or the event a participant reacted to.
    pub causation_id: String,
    /// Who: `customer:<id>`, `admin:<id>`, `saga:<participant>`.
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
}

/// The steps of order `order_id` carrying any of `correlation_ids` (and the
/// ones of no order, a stock receipt), in log order, at most `limit`. Events
/// of another order that reused a correlation id stay out.
pub async fn steps(
    pool: &PgPool,
    order_id: Uuid,
    correlation_ids: &[String],
    limit: i64,
) -> Result<Vec<Step>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, correlation_id, stream_id, stream_version, event_type, event_id, causation_id, actor,
                recorded_at
         FROM rm_story WHERE correlation_id = ANY($1) AND (order_id IS NULL OR order_id = $3)
         ORDER BY position LIMIT $2",
    )
    .bind(correlation_ids)
    .bind(limit)
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// The order an event concerns: its stream's for orders and payments, the
/// `order_id` of an inventory event (none for a stock receipt).
fn order_of(event: &RecordedEvent) -> Option<Uuid> {
    match event.category() {
        "order" | "payment" => event.stream_id.split_once('-').and_then(|(_, id)| Uuid::parse_str(id).ok()),
        _ => event.payload.get("order_id").and_then(|id| id.as_str()).and_then(|id| Uuid::parse_str(id).ok()),
    }
}

#[async_trait]
impl Projection for Story {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_story"]
    }

    fn concerns(&self, event: &RecordedEvent) -> bool {
        CATEGORIES.contains(&event.category())
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[RecordedEvent]) -> Result<usize, BatchError> {
        let events: Vec<&RecordedEvent> = events.iter().filter(|e| self.concerns(e)).collect();
        if events.is_empty() {
            return Ok(0);
        }
        let column = |f: fn(&RecordedEvent) -> String| events.iter().map(|e| f(e)).collect::<Vec<String>>();
        let positions: Vec<i64> =
            events.iter().map(|e| i64::try_from(e.log_position.position).unwrap_or(i64::MAX)).collect();
        let versions: Vec<i64> = events.iter().map(|e| i64::try_from(e.stream_version).unwrap_or(i64::MAX)).collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
        let orders: Vec<Option<Uuid>> = events.iter().map(|e| order_of(e)).collect();
        // Unprepared: a rebuild's shadow table starts empty (see `RowModel::load`).
        let written = sqlx::query(
            "INSERT INTO rm_story (position, correlation_id, stream_id, stream_version, event_type, event_id,
                                   causation_id, actor, recorded_at, order_id)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::uuid[],
                                  $7::text[], $8::text[], $9::timestamptz[], $10::uuid[])
             ON CONFLICT (position) DO NOTHING",
        )
        .persistent(false)
        .bind(&positions)
        .bind(column(|e| e.metadata.correlation_id.clone()))
        .bind(column(|e| e.stream_id.clone()))
        .bind(&versions)
        .bind(column(|e| e.event_type.clone()))
        .bind(&ids)
        .bind(column(|e| e.metadata.causation_id.clone()))
        .bind(column(|e| e.metadata.actor.clone()))
        .bind(&times)
        .bind(&orders)
        .execute(&mut *tx)
        .await?;
        Ok(written.rows_affected() as usize)
    }
}
