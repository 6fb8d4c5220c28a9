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
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                Self::Unavailable(error.into())
            }
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                // connection exceptions, admin shutdown, cannot connect now
                Self::Unavailable(error.into())
            }
            other => Self::Backend(other.into()),
        }
    }
}
