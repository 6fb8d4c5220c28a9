//! The notifier under test: the real process's `App` (config from
//! variables) with the relay, over a database and JetStream streams of the
//! test's own, an SMTP sink and a webhook receiver on free local ports.
//! Events are appended to the store directly, as the command side would.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use application::webhooks::{Registered, Registry, UrlPolicy};
use async_nats::jetstream;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use domain::order::{OrderEvent, OrderLine};
use domain::personal::Sealed;
use domain::EventPayload;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, PgEventStore};
use migrations::testing::with_database;
use relay::RelayConfig;
use service_kit::config::Vars;
use service_kit::personal_data::{MasterKeys, Vault};
use service_kit::testing::smtp::SmtpSink;
use service_kit::{Shutdown, Trigger};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct Office {
    pub pool: PgPool,
    pub store: Arc<PgEventStore>,
    pub js: jetstream::Context,
    pub events: RelayConfig,
    pub smtp: SmtpSink,
    pub hooks: Hooks,
    pub vault: Vault,
    pub registry: Registry,
    stop: Trigger,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn with_office<F, Fut>(env: &[(&str, &str)], test: F)
where
    F: FnOnce(Office) -> Fut,
    Fut: Future<Output = ()>,
{
    service_kit::telemetry::init_for_tests();
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
    let nats = async_nats::connect(nats_url.as_str()).await.expect("NATS must be running (see README)");
    let js = jetstream::new(nats);
    service_kit::testing::drop_stale_streams(&js, &["NOTIFY", "NOTIFYDLQ"]).await;
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (stream, prefix, dead_letters) = (format!("NOTIFY_{id}"), format!("n{id}"), format!("NOTIFYDLQ_{id}"));
    let cleanup = js.clone();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let streams = [stream.clone(), dead_letters.clone()];
    with_database(10, |pool| async move {
        let smtp = SmtpSink::start().await;
        let hooks = Hooks::start().await;
        let options = pool.connect_options();
        let database_url = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().expect("a test database")
        );
        let smtp_url = smtp.url();
        let mut vars: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", &database_url),
            ("NATS_URL", &nats_url),
            ("RELAY_STREAM", &stream),
            // Small: JetStream reserves it of the shared server's storage (see the saga's tests).
            ("RELAY_STREAM_MAX_BYTES", "67108864"),
            ("RELAY_SUBJECT_PREFIX", &prefix),
            ("SAGA_DEAD_LETTER_STREAM", &dead_letters),
            ("SAGA_RETRY_DELAY", "100ms"),
            ("NOTIFIER_OPS_ADDR", "127.0.0.1:0"),
            ("NOTIFY_START", "all"),
            ("SMTP_URL", &smtp_url),
            ("EMAIL_FROM", "Shop <orders@shop.test>"),
            ("NOTIFY_RETRY_MIN", "50ms"),
            ("NOTIFY_RETRY_MAX", "200ms"),
            ("NOTIFY_POLL", "50ms"),
            ("NOTIFY_BREAKER_OPEN", "300ms"),
            ("WEBHOOK_TIMEOUT", "2s"),
        ];
        vars.retain(|(name, _)| !env.iter().any(|(k, _)| k == name));
        vars.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let config = notifier::Config::from_source(&Vars(&vars)).unwrap();
        let events = config.deliveries.events.clone();
        let url_policy = config.url_policy.clone();
        let app = notifier::App::build(config).await.unwrap();
        let (stop, shutdown) = Shutdown::new();
        let store = Arc::new(PgEventStore::new(pool.clone()));
        let relay_config = RelayConfig { standby_poll: Duration::from_millis(100), ..events.clone() };
        let tasks = vec![
            tokio::spawn(relay::run_supervised(
                store.clone(),
                pool.clone(),
                js.clone(),
                relay_config,
                shutdown.clone(),
            )),
            tokio::spawn(async move { app.run_until(shutdown).await.unwrap() }),
        ];
        let office = Office {
            vault: Vault::new(pool.clone(), MasterKeys::development()),
            registry: Registry::new(pool.clone(), url_policy),
            pool,
            store,
            js,
            events,
            smtp,
            hooks,
            stop,
            tasks,
        };
        test(office).await;
    })
    .await;
    for name in streams {
        let _ = tokio::time::timeout(Duration::from_secs(2), cleanup.delete_stream(&name)).await;
    }
}

impl Office {
    /// Stops the notifier and the relay, and waits for them.
    pub async fn stop(self) {
        self.stop.fire();
        for task in self.tasks {
            task.await.unwrap();
        }
    }

    /// Registers an endpoint of the receiver, named `name`, for `events`.
    pub async fn register(&self, name: &str, events: &[&str]) -> Registered {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        self.registry.register(&self.hooks.url(name), &events, name).await.unwrap()
    }

    /// Places an order of customer `customer` (2 x SKU-1 at 19.99 EUR),
    /// with its address sealed if given; answers its id.
    pub async fn place(&self, customer: &str, email: Option<&str>) -> Uuid {
        let order_id = Uuid::new_v4();
        let contact_email = match email {
            Some(address) => {
                let (key_id, sealed) = self.vault.seal(customer, address).await.unwrap();
                Some(Sealed { key_id, sealed })
            }
            None => None,
        };
        let placed = OrderEvent::OrderPlaced {
            order_id,
            customer_id: customer.into(),
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            lines: vec![OrderLine { sku: "SKU-1".into(), quantity: 2, unit_price_cents: 1999 }],
            total_cents: 3998,
            placed_at: chrono::Utc::now(),
            deadline: chrono::Utc::now() + chrono::Duration::minutes(15),
            contact_email,
        };
        self.append(order_id, placed).await;
        order_id
    }

    /// Appends an event to the order's stream; answers its event id.
    pub async fn append(&self, order_id: Uuid, event: OrderEvent) -> Uuid {
        let event_id = Uuid::new_v4();
        let new = NewEvent {
            event_id,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
            metadata: Metadata {
                correlation_id: format!("corr-{order_id}"),
                causation_id: String::new(),
                actor: "test".into(),
                trace_context: String::new(),
            },
        };
        self.store.append(&format!("order-{order_id}"), ExpectedVersion::Any, vec![new]).await.unwrap();
        event_id
    }

    /// Publishes an event again under a new message id, as a JetStream
    /// redelivery (or a relay that published twice) would bring it.
    pub async fn publish_again(&self, order_id: Uuid, event_id: Uuid) {
        let events = self.store.read_stream(&format!("order-{order_id}"), 1).await.unwrap();
        let recorded = events.into_iter().find(|e| e.event_id == event_id).expect("the event");
        let subject = format!("{}.order.{}", self.events.subject_prefix, recorded.event_type);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, Uuid::new_v4().to_string().as_str());
        headers.insert("Correlation-Id", recorded.metadata.correlation_id.as_str());
        let body = serde_json::to_vec(&recorded).unwrap();
        self.js.publish_with_headers(subject, headers, body.into()).await.unwrap().await.unwrap();
    }

    /// Waits (up to 20 s) until `check` holds.
    pub async fn eventually<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(status, attempts, last_error)` of each delivery of an order, by channel.
    pub async fn deliveries(&self, order_id: Uuid, channel: &str) -> Vec<(String, i32, Option<String>)> {
        sqlx::query_as(
            "SELECT status, attempts, last_error FROM notification_deliveries
             WHERE order_id = $1 AND channel = $2 ORDER BY created_at",
        )
        .bind(order_id)
        .bind(channel)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// A webhook as the receiver got it.
#[derive(Debug, Clone)]
pub struct Hook {
    pub endpoint: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Hook {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }
}

#[derive(Default)]
struct Inbox {
    received: Vec<Hook>,
    /// Statuses to answer, per endpoint, before the default 200.
    scripts: HashMap<String, VecDeque<u16>>,
}

/// A scripted "status" that answers 200 only after a second: longer than the tests' timeouts.
pub const SLOW: u16 = 999;

/// Webhook endpoints on a free local port: `POST /hooks/{name}`.
#[derive(Clone)]
pub struct Hooks {
    port: u16,
    inbox: Arc<Mutex<Inbox>>,
}

impl Hooks {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox: Arc<Mutex<Inbox>> = Arc::default();
        let app = axum::Router::new().route("/hooks/{name}", axum::routing::post(take)).with_state(inbox.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { port, inbox }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/hooks/{name}", self.port)
    }

    /// The endpoint answers these statuses first (then 200).
    pub fn script(&self, name: &str, statuses: &[u16]) {
        self.inbox.lock().unwrap().scripts.insert(name.into(), statuses.iter().copied().collect());
    }

    pub fn received(&self, name: &str) -> Vec<Hook> {
        self.inbox.lock().unwrap().received.iter().filter(|h| h.endpoint == name).cloned().collect()
    }
}

async fn take(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let status = {
        let mut inbox = inbox.lock().unwrap();
        let status = inbox.scripts.get_mut(&name).and_then(VecDeque::pop_front).unwrap_or(200);
        inbox.received.push(Hook { endpoint: name, headers, body });
        status
    };
    if status == SLOW {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return StatusCode::OK;
    }
    StatusCode::from_u16(status).unwrap()
}

/// The production URL policy with private addresses allowed (the receiver is local).
pub fn local_policy() -> UrlPolicy {
    UrlPolicy { allowed_hosts: Vec::new(), allow_private: true }
}
