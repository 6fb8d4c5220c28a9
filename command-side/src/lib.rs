//! The command side: an HTTP API whose handlers load an aggregate's stream,
//! let the domain decide, and append the resulting events.
//!
//! - `http/`: the routes, one file per aggregate, and the problem+json mapping.
//! - `commands`: load, decide, append, retry on a concurrency conflict;
//!   `cached`: the same from a kept state, for the saga participants.
//! - `idempotency`: `Idempotency-Key` handling.
//! - `relay`: publishes the log to JetStream; `saga`: the participants that react to it.
//! - `app`: building and running the service (`main.rs` only calls it).

mod app;
pub mod cached;
pub mod commands;
pub mod config;
mod http;
pub mod idempotency;
pub mod relay;
pub mod saga;

pub use app::{migrate, App, StartupError};
pub use config::Config;
pub use http::openapi;
