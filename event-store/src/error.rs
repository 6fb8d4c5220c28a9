//! What can go wrong in the event store, kept apart by kind: a concurrency
//! conflict, a bad request, an infrastructure failure.

use uuid::Uuid;

use crate::ExpectedVersion;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: someone else appended first.
    #[error("stream {stream_id} is at version {actual}, not at the expected {expected}")]
    WrongExpectedVersion { stream_id: String, expected: ExpectedVersion, actual: u64 },

    /// An event id is stored already, with other content or in another place:
    /// the retry is not the same append.
    #[error("event {event_id} is stored already with other content or in another stream")]
    DuplicateEventId { event_id: Uuid },

    /// The append itself is malformed (no events, duplicate ids, ...).
    #[error("invalid append: {0}")]
    InvalidAppend(String),

    /// The backend could not be reached or did not answer in time. An append
    /// that failed this way may or may not have been stored: retry it with
    /// the same event ids.
    #[error("the event store is unavailable: {0}")]
    Unavailable(#[source] BoxError),

    /// The backend answered with an error it should not have.
    #[error("the event store failed: {0}")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// `work`, or `Unavailable` if it takes longer than `limit`: no store
    /// operation hangs.
    pub(crate) async fn within<T>(
        limit: std::time::Duration,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {limit:?}").into())))
    }

    /// The same failure, for another caller of a shared operation (a batch
    /// of appends): of the same kind, with the same message.
    pub(crate) fn for_another_caller(&self) -> StoreError {
        match self {
            Self::WrongExpectedVersion { stream_id, expected, actual } => {
                Self::WrongExpectedVersion { stream_id: stream_id.clone(), expected: *expected, actual: *actual }
            }
            Self::DuplicateEventId { event_id } => Self::DuplicateEventId { event_id: *event_id },
            Self::InvalidAppend(why) => Self::InvalidAppend(why.clone()),
            Self::Unavailable(error) => Self::Unavailable(error.to_string().into()),
            Self::Backend(error) => Self::Backend(error.to_string().into()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            Self::Unavailable(error.into())
        } else {
            Self::Backend(error.into())
        }
    }
}

/// Whether a PostgreSQL error passes: the same work may succeed when tried
/// again (the connection, the server or another transaction was in the way),
/// as opposed to an error the work itself causes every time. The one
/// classification of the system: the event store, the projections and the
/// APIs retry (or answer 503 with `Retry-After`) on exactly these.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

/// The SQLSTATEs of passing trouble (PostgreSQL's appendix A).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources: too many connections, out of memory, disk full
        || matches!(
            code,
            "40001" // serialization failure
            | "40P01" // deadlock detected
            | "25006" // read-only transaction: a failover in progress
            | "55P03" // lock not available (lock_timeout)
            | "57014" // query cancelled (statement_timeout, an operator)
            | "57P01" // admin shutdown
            | "57P02" // crash shutdown
            | "57P03" // cannot connect now (starting up, shutting down)
            | "58030" // I/O error
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_trouble_is_told_from_errors_the_work_causes() {
        for code in ["08006", "53300", "40001", "40P01", "25006", "55P03", "57014", "57P01", "57P03", "58030"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "22P02", "42P01", "42703", "P0001", "XX000", "57P04"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
