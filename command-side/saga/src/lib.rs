//! The saga participants: choreography over JetStream, no orchestrator.
//!
//! Each participant listens to the events the relay publishes, turns each one
//! into a command on its own aggregate through the application layer
//! (`participants`), and acknowledges the message once the append committed
//! (`consumer`). The payment participant talks to the payment gateway
//! (`gateway`); the deadline participant expires orders left pending too long
//! (`deadline`). Messages are checked like any input (`trigger`); the ones
//! that cannot be handled end in a dead-letter stream with their error.
//! `run` runs them all; `config`, `app`: the process.

mod app;
pub mod config;
pub mod consumer;
pub mod deadline;
pub mod gateway;
pub mod participants;
mod run;
pub mod trigger;

pub use app::App;
pub use config::{Config, Deliveries, SagaConfig};
pub use relay::StartupError;
pub use run::{ensure_dead_letter_stream, run, SagaError};
