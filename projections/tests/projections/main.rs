//! The projections against a real database: the runtime (read models, crash
//! safety, hot standby, failures) and rebuilds (by replay, without downtime).

mod health;
mod helpers;
mod rebuild;
mod runtime;
