//! The projections service: folds the global log into the read models
//! (`read-models` crate: each read model's table, rows, fold and queries).
//!
//! - `runtime`: runs one projection: one live instance (advisory lock, the
//!   others wait as hot standbys), events in batches, each batch's writes and
//!   its checkpoint in one transaction, a failing event stops it and is reported.
//! - `rebuild`: replays the whole log into shadow tables and swaps them in.
//! - `service`: every projection supervised, and the rebuilds asked for.
//! - `app`: the process: configuration, `build`, `run_until`.

pub mod app;
pub mod rebuild;
mod runtime;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

pub use app::{App, Config};
pub use read_models::checkpoints::{status, ProjectionStatus};
pub use read_models::{all, by_name, ApplyError, BatchError, Projection, RowModel, Rows};
pub use runtime::{run, ProjectorConfig, RunError};
