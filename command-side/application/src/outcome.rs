//! What a command answers: accepted (`OrderAccepted`, `StockAccepted`,
//! wrapped in [`Done`]), or a [`CommandError`], one of three kinds kept
//! apart: a [`Refusal`] (a rule of the client's broken, the aggregate's state
//! forbidding it, `If-Match` not met: remembered under the request's key), a
//! conflict that passes (contention, the key busy), or a failure of ours.

use domain::{DomainError, FieldError};
use event_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::ExecuteError;
use crate::idempotency::{KeyError, Saved};

/// A command on an order was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderAccepted {
    pub order_id: Uuid,
    /// The order stream's version after the command.
    pub version: u64,
    /// The global log position of the last event appended (read your writes with `min_position`).
    pub position: u64,
}

/// A stock receipt was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockAccepted {
    pub sku: String,
    pub version: u64,
    pub position: u64,
}

/// A command's answer, and whether it is the one saved under the request's
/// key by the request that ran first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> Done<T> {
    pub(crate) fn from_saved(saved: Saved<T>) -> Result<Self, CommandError> {
        match saved {
            Saved::Accepted(value) => Ok(Self { value, replayed: true }),
            Saved::Refused(refusal) => Err(CommandError::RefusedBefore(refusal)),
        }
    }
}

/// A command refused because of the request itself or the aggregate's
/// state: the same request is refused again, so it is remembered under its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// Rules of the command broken (every one).
    #[error("the command breaks {} rule(s)", errors.len())]
    Invalid { errors: Vec<FieldError> },
    /// The aggregate does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The aggregate's state forbids it.
    #[error("{reason}")]
    Conflict { reason: String },
    /// Who asks may not do this to this aggregate.
    #[error("{reason}")]
    Forbidden { reason: String },
    /// `If-Match` names another version.
    #[error("If-Match requires version {required}; the current version is {actual}")]
    VersionMismatch { required: u64, actual: u64 },
}

impl From<DomainError> for Refusal {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::Invalid(errors) => Self::Invalid { errors },
            DomainError::NotFound(what) => Self::NotFound { what: what.to_owned() },
            DomainError::Conflict(reason) => Self::Conflict { reason },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The refusal saved under the request's key, by the request that ran first.
    #[error("{0} (as the first request with this key was)")]
    RefusedBefore(Refusal),
    #[error("this Idempotency-Key was used with another request")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyBusy,
    /// Others kept changing the aggregate: try again.
    #[error("the resource changed under {0} attempts in a row; try again")]
    Contention(u32),
    /// The event store or the database is away: try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A failure of ours.
    #[error("{0}")]
    Failed(String),
}

impl From<ExecuteError> for CommandError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Rejected(domain) => Self::Refused(domain.into()),
            ExecuteError::Forbidden(reason) => Self::Refused(Refusal::Forbidden { reason }),
            ExecuteError::VersionMismatch { required, actual } => {
                Self::Refused(Refusal::VersionMismatch { required, actual })
            }
            ExecuteError::Contention(attempts) => Self::Contention(attempts),
            ExecuteError::Store(StoreError::Unavailable(error)) => Self::Unavailable(error.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<KeyError> for CommandError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Reused => Self::KeyReused,
            KeyError::Busy => Self::KeyBusy,
            KeyError::Database(error) if event_store::is_transient(&error) => Self::Unavailable(error.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}
