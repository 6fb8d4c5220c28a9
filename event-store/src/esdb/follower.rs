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
    Event(Box<eventstore::ResolvedEvent>),
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

/// A test's stand-in for the server: starts a task that sends what a
/// subscription from a position would.
#[cfg(test)]
type Script = std::sync::Arc<dyn Fn(Option<LogPosition>, mpsc::Sender<Item>) -> JoinHandle<()> + Send + Sync>;

/// Where subscriptions come from: the server, or a test's script.
#[derive(Clone)]
enum Source {
    Server,
    #[cfg(test)]
    Script(Script),
}

pub(super) struct Follower {
    store: EsdbEventStore,
    source: Source,
    after: Option<LogPosition>,
    feed: Option<Feed>,
    backoff: Option<Duration>,
}

impl Follower {
    pub fn new(store: EsdbEventStore, after: Option<LogPosition>) -> Self {
        Self { store, source: Source::Server, after, feed: None, backoff: None }
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
        let lease = self.store.connection.lease();
        let (sender, items) = mpsc::channel(256);
        let task = match &self.source {
            Source::Server => self.pump(lease.client.clone(), sender),
            #[cfg(test)]
            Source::Script(script) => script(self.after, sender),
        };
        Feed { items, task, lease, delivered: false }
    }

    /// The task that drives the client's subscription.
    fn pump(&self, client: eventstore::Client, sender: mpsc::Sender<Item>) -> JoinHandle<()> {
        let filter = self
            .store
            .streams()
            .filter_prefixes()
            .into_iter()
            .fold(SubscriptionFilter::on_stream_name(), SubscriptionFilter::add_prefix);
        let options = SubscribeToAllOptions::default().position(mapping::start_at(self.after)).filter(filter);
        tokio::spawn(async move {
            let mut subscription = client.subscribe_to_all(&options).await;
            loop {
                let item = match subscription.next_subscription_event().await {
                    Ok(SubscriptionEvent::EventAppeared(event)) => Item::Event(Box::new(event)),
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
        })
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::esdb::EsdbConfig;

    /// What one subscription of a test does.
    type Step = Box<dyn Fn(mpsc::Sender<Item>) -> JoinHandle<()> + Send + Sync>;

    fn store() -> EsdbEventStore {
        let config = EsdbConfig {
            idle_resubscribe: Duration::from_millis(300),
            ..EsdbConfig::new("esdb://127.0.0.1:1?tls=false", &["order"])
        };
        EsdbEventStore::connect(config).unwrap()
    }

    /// The store's `n`th event as the server would send it.
    fn event(n: u64) -> Item {
        let custom = serde_json::json!({ "schema_version": 1, "correlation_id": "", "causation_id": "", "actor": "" });
        let event = eventstore::RecordedEvent {
            stream_id: format!("order-{n}"),
            id: uuid::Uuid::new_v4(),
            revision: 0,
            event_type: "OrderPlaced".into(),
            data: b"{}".to_vec().into(),
            metadata: HashMap::new(),
            custom_metadata: serde_json::to_vec(&custom).unwrap().into(),
            is_json: true,
            position: eventstore::Position { commit: n * 100, prepare: n * 100 },
            created: chrono::Utc::now(),
        };
        Item::Event(Box::new(eventstore::ResolvedEvent {
            event: Some(event),
            link: None,
            commit_position: Some(n * 100),
        }))
    }

    /// A follower whose `k`th subscription runs `scripts[k]`, recording where each started.
    fn follower(scripts: Vec<Step>) -> (Follower, Arc<Mutex<Vec<Option<LogPosition>>>>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let (calls, record) = (AtomicUsize::new(0), started.clone());
        let script = move |after: Option<LogPosition>, sender: mpsc::Sender<Item>| {
            record.lock().unwrap().push(after);
            scripts[calls.fetch_add(1, Ordering::SeqCst)](sender)
        };
        let mut follower = Follower::new(store(), None);
        follower.source = Source::Script(std::sync::Arc::new(script));
        (follower, started)
    }

    /// Sends `n` and then keeps the subscription open without a word.
    fn then_silence(n: u64) -> Step {
        Box::new(move |sender| {
            tokio::spawn(async move {
                sender.send(event(n)).await.unwrap();
                std::future::pending::<()>().await;
            })
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_that_goes_silent_is_taken_again_from_the_last_event() {
        let (mut follower, started) = follower(vec![then_silence(1), then_silence(2)]);
        assert_eq!(follower.next().await.unwrap().stream_id, "order-1");
        let second = tokio::time::timeout(Duration::from_secs(10), follower.next()).await.unwrap().unwrap();
        assert_eq!(second.stream_id, "order-2");
        let first = LogPosition { commit: 100, position: 100 };
        assert_eq!(*started.lock().unwrap(), [None, Some(first)]);
    }

    /// The 4.0 client loops without yielding on a gRPC stream the server
    /// ended with status OK; the follower goes on with a new subscription
    /// (and says the old one is stuck).
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_subscription_stuck_in_the_client_does_not_stop_the_follower() {
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = stop.clone();
        let spin: Step = Box::new(move |sender| {
            let spinning = spinning.clone();
            tokio::spawn(async move {
                sender.send(event(1)).await.unwrap();
                while !spinning.load(Ordering::Relaxed) {
                    std::hint::spin_loop(); // never yields: abort cannot stop it
                }
            })
        });
        let (mut follower, started) = follower(vec![spin, then_silence(2)]);
        assert_eq!(follower.next().await.unwrap().stream_id, "order-1");
        let second = tokio::time::timeout(Duration::from_secs(10), follower.next()).await;
        stop.store(true, Ordering::Relaxed);
        assert_eq!(second.unwrap().unwrap().stream_id, "order-2");
        assert_eq!(started.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_is_handed_on_and_the_follower_subscribes_again_after_it() {
        let fail: Step = Box::new(|sender| {
            tokio::spawn(async move {
                sender.send(event(1)).await.unwrap();
                let unavailable = tonic::Status::new(tonic::Code::Unavailable, "shutting down");
                sender.send(Item::Failed(eventstore::Error::from_grpc(unavailable))).await.unwrap();
            })
        });
        let (mut follower, started) = follower(vec![fail, then_silence(2)]);
        assert_eq!(follower.next().await.unwrap().stream_id, "order-1");
        assert!(matches!(follower.next().await, Err(StoreError::Unavailable(_))));
        assert_eq!(follower.next().await.unwrap().stream_id, "order-2");
        assert_eq!(started.lock().unwrap()[1], Some(LogPosition { commit: 100, position: 100 }));
    }
}
