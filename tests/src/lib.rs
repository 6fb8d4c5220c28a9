//! The system as it is deployed, under test: every service the workspace
//! builds (command API, relay, saga participants, projections, query API,
//! payment gateway simulator) started as its own process, from its real
//! binary, against real PostgreSQL and NATS servers.
//!
//! - `binaries`: where the built binaries are.
//! - `process`: one service process: start, SIGKILL, start again.
//! - `system`: the whole shop on a PostgreSQL and a NATS server of its own.
//! - `workload`: a shop's clients: orders, cancels, stock receipts, each
//!   POST under an `Idempotency-Key` and retried until it is answered.
//! - `chaos`: the faults injected while the workload runs.
//! - `books`: the checks that nothing acknowledged was lost and nothing was
//!   applied twice: orders, stock, money, the log, the read models.

pub mod binaries;
pub mod books;
pub mod chaos;
pub mod process;
pub mod system;
pub mod workload;
