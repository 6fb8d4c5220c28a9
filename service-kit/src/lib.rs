//! Process plumbing shared by every service of the order system:
//! configuration from the environment, telemetry, shutdown, and the HTTP
//! pieces every API has (problem+json errors, request and correlation ids),
//! the advisory lock that makes one instance of a worker live, and the ops
//! endpoints (health, metrics) every service serves.
//! Thin on purpose: anything domain-specific lives in the services.
//!
//! Features: `postgres` (the pool builder, the database readiness check, the
//! advisory lock of one live instance), `nats` (connecting, the NATS
//! readiness check), `event-store` (`EVENT_STORE_URL`, its readiness check).
//! A process enables what it uses; the payment gateway simulator none.

/// The services' allocator (mimalloc): each binary installs it with
/// `#[global_allocator] static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;
pub use shutdown::{Shutdown, Trigger};
pub use supervise::supervise;

pub mod auth;
pub mod config;
pub mod http;
#[cfg(feature = "postgres")]
pub mod live;
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;
pub mod openapi;
pub mod ops;
#[cfg(feature = "postgres")]
pub mod personal_data;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(all(feature = "postgres", feature = "event-store"))]
pub mod process;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
