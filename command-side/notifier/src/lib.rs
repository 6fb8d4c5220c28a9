//! The notification participant: tells customers (e-mail) and merchants
//! (webhooks) about their orders' milestones: confirmed, rejected,
//! cancelled (why, and any refund), shipped. ADR 0015.
//!
//! A JetStream consumer per milestone (`record`) records the messages each
//! event causes in the deliveries' table (`outbox`), with ids derived from
//! the event, then acknowledges it; the dispatcher (`dispatch`) sends what
//! is due (`send`: signed webhooks, `sign`; SMTP mail), retries, and gives up
//! after `NOTIFY_RETRY_FOR`. What a message says is `message`.
//! `config`, `app`: the process.

pub mod app;
pub mod config;
pub mod dispatch;
pub mod message;
pub mod outbox;
pub mod record;
pub mod send;
pub mod sign;

pub use app::App;
pub use config::Config;
