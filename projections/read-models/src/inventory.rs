//! The `rm_inventory` read model: stock on hand and reserved, per sku; read by sku.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::inventory::InventoryEvent;
use domain::EventPayload;
use event_store::RecordedEvent;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use crate::{ApplyError, RowModel};

pub struct Inventory;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StockRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// The inventory stream's version.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// An item's stock as the query API shows it (`GET /v1/inventory/{sku}`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, ToSchema)]
pub struct InventoryView {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// On hand and not reserved.
    pub available: i64,
    /// The inventory stream's version.
    pub version: i64,
}

/// The stock of `sku`.
pub async fn get(pool: &PgPool, sku: &str) -> Result<Option<InventoryView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, on_hand, reserved, on_hand - reserved AS available, version FROM rm_inventory WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(pool)
    .await
}

/// How one event moves a sku's stock.
#[derive(Debug)]
pub struct StockChange {
    version: i64,
    on_hand: i64,
    reserved: i64,
    at: DateTime<Utc>,
}

#[async_trait]
impl RowModel for Inventory {
    const NAME: &'static str = "inventory";
    const TABLES: &'static [&'static str] = &["rm_inventory"];
    const CATEGORIES: &'static [&'static str] = &["inventory"];
    type Key = String;
    type Row = StockRow;
    type Change = StockChange;

    fn change(event: &RecordedEvent) -> Result<Option<(String, StockChange)>, ApplyError> {
        if event.category() != "inventory" {
            return Ok(None);
        }
        let decoded = InventoryEvent::from_stored(&event.event_type, event.schema_version, event.payload.clone())?;
        let (sku, on_hand, reserved) = match decoded {
            InventoryEvent::StockReceived { sku, quantity } => (sku, quantity as i64, 0),
            InventoryEvent::StockReserved { sku, quantity, .. } => (sku, 0, i64::from(quantity)),
            InventoryEvent::StockReleased { sku, quantity, .. } => (sku, 0, -i64::from(quantity)),
            InventoryEvent::StockShipped { sku, quantity, .. } => (sku, -i64::from(quantity), -i64::from(quantity)),
            InventoryEvent::StockReservationRejected { sku, .. }
            | InventoryEvent::StockReservationSkipped { sku, .. } => (sku, 0, 0),
        };
        let version = event.stream_version as i64;
        Ok(Some((sku, StockChange { version, on_hand, reserved, at: event.recorded_at })))
    }

    fn apply(sku: &String, row: Option<StockRow>, change: StockChange) -> Option<StockRow> {
        let mut row = row.unwrap_or_else(|| StockRow {
            sku: sku.clone(),
            on_hand: 0,
            reserved: 0,
            version: 0,
            updated_at: change.at,
        });
        if change.version > row.version {
            row.on_hand += change.on_hand;
            row.reserved += change.reserved;
            row.version = change.version;
            row.updated_at = change.at;
        }
        Some(row)
    }

    async fn load(tx: &mut PgConnection, skus: &[String]) -> Result<Vec<(String, StockRow)>, sqlx::Error> {
        let rows: Vec<StockRow> =
            sqlx::query_as("SELECT sku, on_hand, reserved, version, updated_at FROM rm_inventory WHERE sku = ANY($1)")
                .bind(skus)
                .persistent(false) // see RowModel::load
                .fetch_all(tx)
                .await?;
        Ok(rows.into_iter().map(|row| (row.sku.clone(), row)).collect())
    }

    async fn save(tx: &mut PgConnection, rows: Vec<StockRow>) -> Result<(), sqlx::Error> {
        let (mut sku, mut on_hand, mut reserved, mut version, mut updated_at) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            sku.push(row.sku);
            on_hand.push(row.on_hand);
            reserved.push(row.reserved);
            version.push(row.version);
            updated_at.push(row.updated_at);
        }
        sqlx::query(
            "INSERT INTO rm_inventory (sku, on_hand, reserved, version, updated_at) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::timestamptz[]) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, reserved = excluded.reserved, \
                 version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(sku)
        .bind(on_hand)
        .bind(reserved)
        .bind(version)
        .bind(updated_at)
        .execute(tx)
        .await?;
        Ok(())
    }
}
