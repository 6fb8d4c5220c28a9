//! Read models folded from the global log.
//!
//! - `runtime`: runs one projection: one live instance (advisory lock, the
//!   others wait as hot standbys), events in batches, each batch's writes and
//!   its checkpoint in one transaction, a failing event stops it and is reported.
//! - `orders`, `inventory`, `payments`: the projectors, one small file each.
//!   To add a read model: a table in `migrations/`, a file like these, and
//!   its name in [`all`].

mod checkpoint;
pub mod inventory;
pub mod orders;
pub mod payments;
mod runtime;
pub mod service;

use std::sync::Arc;

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;

pub use checkpoint::{status, ProjectionStatus};
pub use runtime::{run, ProjectorConfig, RunError};

/// A read model: how one event changes its tables.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name; the checkpoint and the advisory lock are keyed by it.
    fn name(&self) -> &'static str;

    /// Applies one event inside the batch's transaction. Events of no
    /// interest are ignored. Writes must not depend on anything but the
    /// event and the tables, so a replay builds the same rows.
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), ApplyError>;
}

/// An event a projection cannot apply.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot decode the event: {0}")]
    Decode(#[from] domain::DecodeError),
    #[error("the event does not fit the read model: {0}")]
    Inconsistent(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Every projection of the system.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(orders::OrdersProjection),
        Arc::new(inventory::InventoryProjection),
        Arc::new(payments::PaymentsProjection),
    ]
}
