//! The query API over real HTTP, reading read models that the real
//! projections build from events in a fresh database per test.

mod auth;
mod dead_letters;
mod helpers;
mod openapi;
mod queries;
mod story;
mod streams;
