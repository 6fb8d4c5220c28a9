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

    async fn apply(&self, tx: &mut PgConnection, events: &[RecordedEvent]) -> Result<(), BatchError> {
        let mut changes = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            if let Some(change) = M::change(event).map_err(|source| BatchError::Event { index, source })? {
                changes.push(change);
            }
        }
        if changes.is_empty() {
            return Ok(());
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
        if !touched.is_empty() {
            M::save(tx, touched).await?;
        }
        Ok(())
    }
}

/// The uuid in a stream id such as `order-<uuid>`.
pub(crate) fn id_of_stream(event: &RecordedEvent) -> Result<uuid::Uuid, ApplyError> {
    let id = event.stream_id.split_once('-').map(|(_, id)| id).unwrap_or_default();
    uuid::Uuid::parse_str(id).map_err(|_| ApplyError::Inconsistent(format!("stream {} has no uuid", event.stream_id)))
}
