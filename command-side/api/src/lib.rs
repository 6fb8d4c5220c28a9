//! The HTTP command API: each handler extracts the request, calls the
//! application layer (`application` crate) and maps its answer to HTTP:
//! `202 Accepted` with `Location` and `ETag`, or problem+json.
//!
//! - `http/`: the routes, one file per aggregate; `http/mod.rs` the request
//!   extractor (who asks, ids, `Idempotency-Key`, `If-Match`, the JSON body),
//!   the answer and the error mapping.
//! - `config`, `app`: the process: configuration, `build`, `run_until`.

mod app;
mod config;
mod http;

pub use app::{App, StartupError};
pub use config::Config;
pub use http::openapi;
