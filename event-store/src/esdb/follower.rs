//! A catch-up subscription to `$all`, filtered on the server to the store's
//! streams, that the store's subscribers follow.
//!
//! The client's subscription is driven by a task of its own, which hands on
//! what arrives (events, and the server's confirmations and checkpoints as
//! signs of life) through a channel. The follower subscribes again from the
//! last event it delivered:
//! - after a failure (which it also hands on, as the trait asks), after a
//!   backoff that doubles to the configured maximum;
//! - when nothing at all has arrived for `idle_resubscribe`: a connection
//!   that died without a word, or a gRPC stream the server ended with status
//!   OK (graceful shutdown), which the 4.0 client does not report. The old
//!   task is aborted; if it does not end (the client loops on an ended
//!   stream without ever yielding, holding a worker thread), the follower
//!   says so in the log and in `event_store_subscription_stuck_total`, and
//!   goes on with a new one: the process then runs with one worker thread
//!   less and should be restarted.
//!
//! An event of the store that cannot be read stops the subscription there
//! (an error each time it is reached), as on PostgreSQL: the log is never
//! skipped. An event another program wrote into the store's streams is
//! skipped and counted (see [`super::mapping::Found::in_the_log`]).

use std::time::Duration;

use eventstore::{SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::Lease;
use super::{mapping, EsdbEventStore};
use crate::{LogPosition, RecordedEvent, StoreError};

/// What the subscription's task hands on.
enum Item {
    Event(eventstore::ResolvedEvent),
    /// A confirmation, a checkpoint, caught up: the subscription is alive.
    Alive,
    Failed(eventstore::Error),
}

struct Feed {
    items: mpsc::Receiver<Item>,
    task: JoinHandle<()>,
    lease: Lease,
    delivered: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) struct Follower {
    store: EsdbEventStore,
    after: Option<LogPosition>,
    feed: Option<Feed>,
    backoff: Option<Duration>,
}

impl Follower {
    pub fn new(store: EsdbEventStore, after: Option<LogPosition>) -> Self {
        Self { store, after, feed: None, backoff: None }
    }

    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if self.feed.is_none() {
                if let Some(backoff) = self.backoff {
                    tokio::time::sleep(backoff).await;
                }
                self.feed = Some(self.subscribe());
            }
            let feed = self.feed.as_mut().expect("subscribed above");
            let item = match tokio::time::timeout(self.store.config.idle_resubscribe, feed.items.recv()).await {
                Ok(Some(item)) => item,
                // The task ended without a word (it panicked): subscribe again.
                Ok(None) => Item::Failed(eventstore::Error::InternalClientError),
                Err(_) => {
                    self.resubscribe_after_silence().await;
                    continue;
                }
            };
            let resolved = match item {
                Item::Alive => continue,
                Item::Event(resolved) => resolved,
                Item::Failed(error) => {
                    let feed = self.feed.take().expect("subscribed above");
                    let next = self.backoff.map_or(Duration::from_millis(100), |b| b * 2);
                    self.backoff = Some(next.min(self.store.config.max_error_backoff));
                    return Err(feed.lease.failed(error));
                }
            };
            self.backoff = None;
            if !feed.delivered {
                feed.delivered = true;
                feed.lease.succeeded();
            }
            let event = resolved.get_original_event();
            let position = mapping::log_position(event.position);
            if self.after.is_some_and(|after| position <= after) {
                continue;
            }
            match mapping::recorded_event(self.store.streams(), event) {
                Ok(found) => {
                    self.after = Some(position);
                    if let Some(event) = found.in_the_log() {
                        return Ok(event);
                    }
                }
                Err(damaged) => {
                    // Never skipped: subscribe again from before it, and say so each time.
                    self.feed = None;
                    self.backoff = Some(self.store.config.max_error_backoff);
                    return Err(damaged);
                }
            }
        }
    }

    fn subscribe(&self) -> Feed {
        let filter = self
            .store
            .streams()
            .filter_prefixes()
            .into_iter()
            .fold(SubscriptionFilter::on_stream_name(), SubscriptionFilter::add_prefix);
        let options = SubscribeToAllOptions::default().position(mapping::start_at(self.after)).filter(filter);
        let lease = self.store.connection.lease();
        let client = lease.client.clone();
        let (sender, items) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            let mut subscription = client.subscribe_to_all(&options).await;
            loop {
                let item = match subscription.next_subscription_event().await {
                    Ok(SubscriptionEvent::EventAppeared(event)) => Item::Event(event),
                    Ok(_) => Item::Alive,
                    Err(error) => {
                        let _ = sender.send(Item::Failed(error)).await;
                        return;
                    }
                };
                if sender.send(item).await.is_err() {
                    return; // the follower let go
                }
            }
        });
        Feed { items, task, lease, delivered: false }
    }

    /// Nothing arrived for `idle_resubscribe`: let go of the subscription
    /// and take a new one from the last event delivered.
    async fn resubscribe_after_silence(&mut self) {
        let Some(mut feed) = self.feed.take() else { return };
        feed.task.abort();
        let silence = self.store.config.idle_resubscribe;
        metrics::counter!("event_store_subscription_resubscribes_total", "reason" => "silence").increment(1);
        match tokio::time::timeout(Duration::from_secs(1), &mut feed.task).await {
            Ok(_) => tracing::debug!(?silence, "no word from the EventStoreDB subscription: subscribing again"),
            Err(_) => {
                metrics::counter!("event_store_subscription_stuck_total").increment(1);
                tracing::error!(
                    ?silence,
                    "the EventStoreDB client's subscription does not yield (it loops on a gRPC stream the server \
                     ended): subscribing again, but a worker thread stays lost; restart this process"
                );
            }
        }
    }
}
