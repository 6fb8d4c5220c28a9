//! The query side: an HTTP API that reads the read-model tables the
//! projections write. It reads tables only: no event store, no aggregates
//! (the projections crate tells it which read models exist and takes its
//! rebuild requests).
//!
//! - `http/`: the routes, one file per read model.
//! - `progress`: waiting (bounded, woken by NOTIFY) until a read model has
//!   applied a global position, for `?min_position=`.

mod app;
pub mod config;
mod http;
pub mod progress;

pub use app::{App, StartupError};
pub use config::Config;
pub use http::openapi;
