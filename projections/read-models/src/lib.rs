//! The read models, each with everything about it in one module: its table
//! (created in `migrations/`), its row, the fold of events into rows (its
//! projector, a [`RowModel`]), and the queries that read it
//! (disintegrate's `read_model.rs` is the model). The query API calls these
//! queries and holds no SQL of its own; the projections service runs the
//! folds (`projections` crate: runtime, rebuilds).
//!
//! - `orders`, `inventory`, `payments`: the read models the queries serve;
//!   `story`: every event's correlation, for the admin API's order stories. To add one: a table
//!   in `migrations/`, a module like these, and its name in [`all`].
//! - `rows`: [`RowModel`], a read model as a pure fold of events into rows,
//!   and [`Rows`], which applies one in batches of one `SELECT` and one upsert.
//! - `checkpoints`: where each projection stands (`projection_checkpoints`).
//! - `rebuilds`: the rebuilds asked for and how far they are (`projection_rebuilds`).

pub mod checkpoints;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod rebuilds;
mod rows;
pub mod story;

use std::sync::Arc;

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;

pub use rows::{Keyed, RowModel, Rows};

/// A read model: how a batch of events changes its tables.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the checkpoint and the advisory lock are keyed by it.
    fn name(&self) -> &'static str;

    /// The tables this projection alone writes, in schema `public`. A rebuild
    /// builds copies of them and swaps the copies in.
    fn tables(&self) -> &'static [&'static str];

    /// Whether `event` may change this projection's tables. Batches of events
    /// of no concern are passed over without a transaction of their own.
    fn concerns(&self, event: &RecordedEvent) -> bool {
        let _ = event;
        true
    }

    /// Applies events, in log order, inside the batch's transaction, and
    /// returns how many rows it wrote (0: the events were of no interest).
    /// Table names must not be schema-qualified (a rebuild points
    /// `search_path` at its shadow tables), and writes must depend on nothing
    /// but the events and the tables, so a replay builds the same rows.
    async fn apply(&self, tx: &mut PgConnection, events: &[RecordedEvent]) -> Result<usize, BatchError>;
}

/// An event a projection cannot apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot decode the event: {0}")]
    Decode(#[from] domain::DecodeError),
    #[error("the event does not fit the read model: {0}")]
    Inconsistent(String),
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The event at `index` in the batch cannot be applied.
    #[error("{source}")]
    Event { index: usize, source: ApplyError },
    /// The batch's writes failed; which event caused it is not known.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The names of the read models, as the admin API and the CLI know them.
pub const NAMES: [&str; 4] = [orders::Orders::NAME, inventory::Inventory::NAME, payments::Payments::NAME, story::NAME];

/// Every projection of the system.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(Rows(orders::Orders)),
        Arc::new(Rows(inventory::Inventory)),
        Arc::new(Rows(payments::Payments)),
        Arc::new(story::Story),
    ]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|projection| projection.name() == name)
}
