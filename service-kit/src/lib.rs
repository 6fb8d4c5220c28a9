//! Process plumbing shared by every service of the order system:
//! configuration from the environment, telemetry, shutdown, and the HTTP
//! pieces every API has (problem+json errors, request and correlation ids),
//! the advisory lock that makes one instance of a worker live, and the ops
//! endpoints (health, metrics) every service serves.
//! Thin on purpose: anything domain-specific lives in the services.

pub mod auth;
pub mod config;
pub mod http;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
