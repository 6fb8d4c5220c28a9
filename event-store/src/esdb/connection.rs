//! The client, replaced when it has died.
//!
//! The 4.0 client ends its connection task for good when it cannot select a
//! node (nothing listens yet, a leader that cannot be reached, a refused
//! connection surfacing as status Unknown): that call fails with a
//! connection error and every later one with `ConnectionClosed`, at once and
//! forever. So the adapter holds one client at a time and builds a new one
//! after such an error, no sooner than a backoff that doubles with each
//! rebuild (from 100 ms to the configured maximum) and starts again from
//! 100 ms once a call through the client succeeds. Calls in between fail
//! fast as unavailable, which every caller retries.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventstore::{Client, ClientSettings};

use super::mapping;
use crate::StoreError;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub(super) struct Connection {
    settings: ClientSettings,
    max_backoff: Duration,
    current: Mutex<Current>,
}

struct Current {
    client: Client,
    generation: u64,
    /// Set when the client was found dead: the earliest moment to replace it.
    replace_at: Option<Instant>,
    backoff: Duration,
}

/// The client of the moment, and which one it is: an error seen through an
/// older client says nothing about the current one.
pub(super) struct Lease {
    pub client: Client,
    generation: u64,
    connection: Arc<Connection>,
}

impl Connection {
    /// Builds the first client (inside a Tokio runtime); it connects on first use.
    pub fn new(settings: ClientSettings, max_backoff: Duration) -> Result<Self, StoreError> {
        let client = Client::new(settings.clone()).map_err(mapping::store_error)?;
        let current = Current { client, generation: 0, replace_at: None, backoff: FIRST_BACKOFF };
        Ok(Self { settings, max_backoff: max_backoff.max(FIRST_BACKOFF), current: Mutex::new(current) })
    }

    /// The client to use now, a new one if the last has died and its backoff has passed.
    pub fn lease(self: &Arc<Self>) -> Lease {
        let mut current = self.current.lock().expect("the client lock is never poisoned");
        if current.replace_at.is_some_and(|at| Instant::now() >= at) {
            match Client::new(self.settings.clone()) {
                Ok(client) => {
                    current.client = client;
                    current.generation += 1;
                    current.replace_at = None;
                    metrics::counter!("event_store_client_rebuilds_total").increment(1);
                    tracing::info!(
                        generation = current.generation,
                        "a new EventStoreDB client replaces the one that died"
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "could not build a new EventStoreDB client; trying again later");
                    current.replace_at = Some(Instant::now() + current.backoff);
                }
            }
        }
        Lease { client: current.client.clone(), generation: current.generation, connection: self.clone() }
    }
}

impl Lease {
    /// The error as the trait's; one that says the client is dead schedules its replacement.
    pub fn failed(&self, error: eventstore::Error) -> StoreError {
        if client_is_dead(&error) {
            let mut current = self.connection.current.lock().expect("the client lock is never poisoned");
            if current.generation == self.generation && current.replace_at.is_none() {
                current.replace_at = Some(Instant::now() + current.backoff);
                tracing::warn!(%error, retry_in = ?current.backoff, "the EventStoreDB client has stopped connecting");
                current.backoff = (current.backoff * 2).min(self.connection.max_backoff);
            }
        }
        mapping::store_error(error)
    }

    /// A call through this client succeeded: the next death starts the backoff afresh.
    pub fn succeeded(&self) {
        let mut current = self.connection.current.lock().expect("the client lock is never poisoned");
        if current.generation == self.generation && current.backoff != FIRST_BACKOFF {
            current.backoff = FIRST_BACKOFF;
        }
    }
}

/// The errors after which the 4.0 client never connects again: its
/// connection task ended on a failed node selection.
fn client_is_dead(error: &eventstore::Error) -> bool {
    matches!(error, eventstore::Error::ConnectionClosed | eventstore::Error::GrpcConnectionError(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Arc<Connection> {
        let settings = "esdb://127.0.0.1:1?tls=false".parse().unwrap();
        Arc::new(Connection::new(settings, Duration::from_millis(800)).unwrap())
    }

    fn generation(connection: &Arc<Connection>) -> u64 {
        connection.lease().generation
    }

    #[tokio::test]
    async fn a_client_that_stopped_connecting_is_replaced_after_a_backoff() {
        let connection = connection();
        let (first, late) = (connection.lease(), connection.lease());
        let error = first.failed(eventstore::Error::ConnectionClosed);
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(50)).await;
        let second = connection.lease();
        assert_eq!(second.generation, 1, "replaced once the backoff passed");

        // An error seen through the old client says nothing of the new one.
        late.failed(eventstore::Error::ConnectionClosed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(generation(&connection), 1);

        // Errors that do not mean a dead client replace nothing.
        for error in [eventstore::Error::DeadlineExceeded, eventstore::Error::ResourceNotFound] {
            connection.lease().failed(error);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(generation(&connection), 1);

        // The backoff doubled with the first death; a success starts it afresh.
        let grpc_failure =
            || eventstore::Error::GrpcConnectionError(eventstore::GrpcConnectionError::Grpc("refused".into()));
        second.failed(grpc_failure());
        assert_eq!(connection.current.lock().unwrap().backoff, FIRST_BACKOFF * 4, "next time: 400 ms");
        tokio::time::sleep(FIRST_BACKOFF * 2 + Duration::from_millis(50)).await;
        let third = connection.lease();
        assert_eq!(third.generation, 2);
        third.succeeded();
        assert_eq!(connection.current.lock().unwrap().backoff, FIRST_BACKOFF);
    }
}
