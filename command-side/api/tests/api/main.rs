//! The command API over real HTTP, against a fresh database per test.

mod auth;
mod commands;
mod helpers;
mod idempotency;
mod openapi;
mod personal_data;
mod process;
mod webhooks;
