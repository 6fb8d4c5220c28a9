//! Read models folded from the global log.
//!
//! - `runtime`: runs one projection: one live instance (advisory lock, the
//!   others wait as hot standbys), events in batches, each batch's writes and
//!   its checkpoint in one transaction, a failing event stops it and is reported.
//! - `rows`: most read models are a pure fold of events into rows; a
//!   [`RowModel`] says how, and becomes a [`Projection`] that reads and writes
//!   each batch's rows with one statement each.
//! - `orders`, `inventory`, `payments`: the read models, one small file each.
//!   To add one: a table in `migrations/`, a file like these, and its name in [`all`].
//! - `rebuild`: replays the whole log into shadow tables and swaps them in.

mod checkpoint;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod rebuild;
mod rows;
mod runtime;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;

pub use checkpoint::{status, ProjectionStatus};
pub use rows::{RowModel, Rows};
pub use runtime::{run, ProjectorConfig, RunError};

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
    /// returns how many rows it wrote (0: the events were of no interest). Table names must not be schema-qualified
    /// (a rebuild points `search_path` at its shadow tables), and writes must
    /// depend on nothing but the events and the tables, so a replay builds
    /// the same rows.
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

/// Every projection of the system.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(Rows(orders::Orders)), Arc::new(Rows(inventory::Inventory)), Arc::new(Rows(payments::Payments))]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|projection| projection.name() == name)
}
