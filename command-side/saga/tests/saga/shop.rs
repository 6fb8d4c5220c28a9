//! The whole write side running against real servers: the command API on
//! port 0, the relay, the saga participants and the payment gateway
//! simulator, over a database and JetStream streams of the test's own
//! (deleted at the end). Shared by the saga tests and the saga benchmark.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use application::{commands, Application, Settings};
use async_nats::jetstream;
use command_api::{App, Config};
use domain::inventory::{Inventory, InventoryState};
use domain::order::{CancelledBy, Order, OrderEvent, OrderState, PlacedOrder};
use domain::payment::{Payment, PaymentState};
use domain::{Aggregate, EventPayload};
use event_store::{EventStore, PgEventStore, RecordedEvent};

use migrations::testing::with_database;
use payment_gateway::{Faults, Totals};
use relay::RelayConfig;
use saga::gateway::{Gateway, GatewayConfig};
use saga::participants::Reactor;
use saga::SagaConfig;
use serde_json::{json, Value};
use service_kit::{Shutdown, Trigger};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct Shop {
    pub pool: PgPool,
    pub store: PgEventStore,
    pub js: jetstream::Context,
    pub config: SagaConfig,
    pub gateway: Gateway,
    pub api: String,
    pub gateway_url: String,
    pub http: reqwest::Client,
    stop: Trigger,
    tasks: Vec<JoinHandle<()>>,
}

/// How the shop under test is set up.
#[derive(Clone)]
pub struct Setup {
    pub nats_url: String,
    /// `ORDER_DEADLINE` of the command API.
    pub order_deadline: &'static str,
    pub redeliver_once: bool,
    pub max_deliveries: i64,
    pub faults: Faults,
    /// Saga processes sharing the durable consumers: each with a store, a
    /// state cache and participants of its own, as separate processes
    /// would have (they race for the same streams' versions).
    pub saga_instances: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            nats_url: std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into()),
            order_deadline: "15m",
            redeliver_once: false,
            max_deliveries: 3,
            faults: Faults::default(),
            saga_instances: 1,
        }
    }
}

pub async fn with_shop<F, Fut>(setup: Setup, test: F)
where
    F: FnOnce(Shop) -> Fut,
    Fut: Future<Output = ()>,
{
    service_kit::telemetry::init_for_tests();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(setup.nats_url.as_str())
        .await
        .expect("NATS must be running (see README)");
    let js = jetstream::new(client);
    service_kit::testing::drop_stale_streams(&js, &["SAGATEST", "SAGADLQ"]).await;
    let cleanup = js.clone();
    let id = Uuid::new_v4().simple().to_string();
    let events = RelayConfig {
        stream: format!("SAGATEST_{id}"),
        subject_prefix: format!("sagatest{id}"),
        standby_poll: Duration::from_millis(100),
        // JetStream reserves a stream's max_bytes of the shared server's
        // storage, and streams that failed runs leave must not use it up: 1 GiB,
        // not the default 10, yet room for the saga benchmark (which uses this
        // shop) at its highest rates, about 1 KB a message.
        max_bytes: 1 << 30,
        ..RelayConfig::default()
    };
    let gateway_config = GatewayConfig {
        retries: 2,
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        breaker_failures: 3,
        breaker_open: Duration::from_millis(300),
        timeout: Duration::from_secs(2),
        ..GatewayConfig::default()
    };
    let mut config = SagaConfig::new(saga::Deliveries::new(events), gateway_config);
    config.deliveries.dead_letter_stream = format!("SAGADLQ_{id}");
    config.deliveries.max_deliveries = setup.max_deliveries;
    config.deliveries.retry_delay = Duration::from_millis(100);
    config.deadline_poll = Duration::from_millis(100);
    config.deliveries.redeliver_once = setup.redeliver_once;
    let streams = [config.deliveries.events.stream.clone(), config.deliveries.dead_letter_stream.clone()];
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(with_database(40, |pool| async move {
            let (shop, gateway_server) = Shop::start(pool, js, config, &setup).await;
            test(shop).await;
            gateway_server.abort();
        })))
        .await;
    // Left-overs go; a server the test stopped for good has nothing to clean.
    for stream in streams {
        let _ = tokio::time::timeout(Duration::from_secs(2), cleanup.delete_stream(&stream)).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Shop {
    async fn start(
        pool: PgPool,
        js: jetstream::Context,
        mut config: SagaConfig,
        setup: &Setup,
    ) -> (Self, JoinHandle<()>) {
        let gateway_app = payment_gateway::App::build(payment_gateway::Config {
            faults: setup.faults,
            ..payment_gateway::Config::ephemeral()
        })
        .await
        .unwrap();
        let gateway_url = format!("http://{}", gateway_app.local_addr());
        let gateway_server = tokio::spawn(async move {
            let _ = gateway_app.run_until(service_kit::Shutdown::never()).await;
        });
        config.gateway.url = gateway_url.clone();

        let env = [
            ("COMMAND_HTTP_ADDR", "127.0.0.1:0"),
            ("COMMAND_OPS_ADDR", "127.0.0.1:0"),
            ("ORDER_DEADLINE", setup.order_deadline),
            ("AUTH_MODE", "off"),
            // Load tests and benchmarks send hundreds of orders a second from one peer.
            ("RATE_LIMIT_PER_SECOND", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
        ];
        let app = App::build_with_pool(Config::from_source(&service_kit::config::Vars(&env)).unwrap(), pool.clone())
            .await
            .unwrap();
        let api = format!("http://{}", app.local_addr());
        // The streams exist before any test step publishes (the services would create them too).
        relay::ensure_stream(&js, &config.deliveries.events).await.unwrap();
        saga::ensure_dead_letter_stream(&js, &config.deliveries).await.unwrap();
        let (stop, shutdown) = Shutdown::new();
        let store = PgEventStore::new(pool.clone());
        let gateway = Gateway::new(config.gateway.clone());
        let settings = Settings {
            max_attempts: config.command_max_attempts,
            kept_states: config.state_cache,
            ..Settings::default()
        };
        let mut tasks = vec![
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move { app.run_until(shutdown).await.unwrap() }
            }),
            tokio::spawn(relay::run_supervised(
                std::sync::Arc::new(store.clone()),
                pool.clone(),
                js.clone(),
                config.deliveries.events.clone(),
                shutdown.clone(),
            )),
        ];
        for instance in 0..setup.saga_instances.max(1) {
            // The first instance shares the shop's store; the others have their own, as other processes would.
            let store = if instance == 0 { store.clone() } else { PgEventStore::new(pool.clone()) };
            let application = Application::new(std::sync::Arc::new(store), pool.clone(), settings.clone());
            let reactor = Reactor::new(application, pool.clone(), gateway.clone());
            let run = saga::run(reactor, js.clone(), config.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move { run.await.unwrap() }));
        }
        let shop =
            Self { pool, store, js, config, gateway, api, gateway_url, http: reqwest::Client::new(), stop, tasks };
        (shop, gateway_server)
    }

    /// Stops every service and waits for them.
    pub async fn stop(self) {
        self.stop.fire();
        for task in self.tasks {
            task.await.unwrap();
        }
    }

    pub async fn post(&self, path: &str, body: Value, correlation_id: Option<&str>) -> Value {
        post(&self.http, &self.api, path, body, correlation_id).await
    }

    pub async fn receive(&self, sku: &str, quantity: u64) {
        self.post(&format!("/v1/inventory/{sku}/receipts"), json!({"quantity": quantity}), None).await;
    }

    /// Places an order of `(sku, quantity, unit price)` lines; answers its id.
    pub async fn place(&self, lines: &[(&str, u32, u64)], token: &str) -> Uuid {
        self.place_correlated(lines, token, None).await
    }

    pub async fn place_correlated(
        &self,
        lines: &[(&str, u32, u64)],
        token: &str,
        correlation_id: Option<&str>,
    ) -> Uuid {
        place(&self.http, &self.api, lines, token, correlation_id).await
    }

    pub async fn cancel(&self, order_id: Uuid) {
        self.post(&format!("/v1/orders/{order_id}/cancel"), json!({"reason": "changed my mind"}), None).await;
    }

    pub async fn order(&self, order_id: Uuid) -> PlacedOrder {
        match commands::load::<Order>(&self.store, &Order::stream_id(order_id)).await.unwrap() {
            OrderState::Placed(order) => order,
            OrderState::NotPlaced => panic!("order {order_id} does not exist"),
        }
    }

    /// Who cancelled the order, if it was cancelled.
    pub async fn cancelled_by(&self, order_id: Uuid) -> Option<CancelledBy> {
        self.events(&Order::stream_id(order_id)).await.iter().find_map(|stored| {
            match OrderEvent::from_stored(&stored.event_type, stored.schema_version, stored.payload.clone()).ok()? {
                OrderEvent::OrderCancelled { by, .. } => Some(by),
                _ => None,
            }
        })
    }

    pub async fn inventory(&self, sku: &str) -> InventoryState {
        commands::load::<Inventory>(&self.store, &Inventory::stream_id(sku)).await.unwrap()
    }

    pub async fn payment(&self, order_id: Uuid) -> PaymentState {
        commands::load::<Payment>(&self.store, &Payment::stream_id(order_id)).await.unwrap()
    }

    /// The event types of a stream, in order.
    pub async fn types(&self, stream_id: &str) -> Vec<String> {
        self.events(stream_id).await.into_iter().map(|e| e.event_type).collect()
    }

    pub async fn events(&self, stream_id: &str) -> Vec<RecordedEvent> {
        self.store.read_stream(stream_id, 1).await.unwrap()
    }

    pub async fn ledger(&self) -> Totals {
        self.http.get(format!("{}/v1/ledger", self.gateway_url)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn set_faults(&self, faults: Faults) {
        let response = self.http.put(format!("{}/admin/faults", self.gateway_url)).json(&faults).send().await.unwrap();
        assert_eq!(response.status(), 204);
    }

    /// Waits until `done` holds for the order, up to `within`.
    pub async fn until_order(
        &self,
        order_id: Uuid,
        within: Duration,
        done: impl Fn(&PlacedOrder) -> bool,
    ) -> PlacedOrder {
        let started = Instant::now();
        loop {
            let order = self.order(order_id).await;
            if done(&order) {
                return order;
            }
            assert!(started.elapsed() < within, "order {order_id} still {:?} after {within:?}", order.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// POSTs to the command API at `api`; answers the 202's body.
async fn post(http: &reqwest::Client, api: &str, path: &str, body: Value, correlation_id: Option<&str>) -> Value {
    let mut request = http.post(format!("{api}{path}")).json(&body);
    if let Some(id) = correlation_id {
        request = request.header("x-correlation-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202, "POST {path}: {}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Places an order of `(sku, quantity, unit price)` lines through the
/// command API at `api` (no shop needed: the saga benchmark's load generator
/// runs in a process of its own); answers its id.
pub async fn place(
    http: &reqwest::Client,
    api: &str,
    lines: &[(&str, u32, u64)],
    token: &str,
    correlation_id: Option<&str>,
) -> Uuid {
    let lines: Vec<Value> =
        lines.iter().map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price_cents": p})).collect();
    let body = json!({"customer_id": "c-1", "currency": "EUR", "payment_token": token, "lines": lines});
    let accepted = post(http, api, "/v1/orders", body, correlation_id).await;
    accepted["order_id"].as_str().unwrap().parse().unwrap()
}
