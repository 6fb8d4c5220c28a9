//! The relay: tails the global log and publishes every event to JetStream.
//!
//! - Subject `<prefix>.<category>.<EventType>` (`events.order.OrderPlaced`),
//!   the event as JSON (`RecordedEvent`), headers `Nats-Msg-Id` (the event
//!   id: JetStream drops a repeat within its duplicate window),
//!   `Correlation-Id` and `Causation-Id`.
//! - One live relay per stream: a session advisory lock keyed by the stream
//!   name; another instance waits as a hot standby.
//! - The checkpoint (`relay_checkpoints`) moves only after JetStream has
//!   acknowledged every event of a batch, and only from where this instance
//!   left it. Killed at any point, the relay publishes again from the
//!   checkpoint; what JetStream had already stored is dropped as a duplicate.
//!
//! - `relay`: the loop that publishes the log; `checkpoint`: its checkpoint
//!   (`relay_checkpoints`); `config`, `app`: the process; `worker`: what the
//!   processes that follow the log over NATS share (the saga uses it too).

mod app;
mod checkpoint;
mod config;
mod relay;
pub mod worker;

pub use app::App;
pub use config::{Config, RelayConfig};
pub use relay::{ensure_stream, headers, run, run_supervised, subject, RelayError};
pub use worker::StartupError;
