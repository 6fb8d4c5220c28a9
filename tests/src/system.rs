//! The whole shop as processes: the payment gateway simulator, the command
//! API, the relay, the saga participants, the notifier, the projections and
//! the query API, each from its binary (the notifier mails an SMTP sink of
//! the system's own), on a PostgreSQL server and a NATS server of the
//! system's own (so a test may restart either without touching anything
//! else), with free ports and its own stream names. Logs go to files in a
//! directory of its own, kept when a test fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_store::testing::{PgServer, Stop};
use payment_gateway::{Faults, KeyedCharge, Totals};
use serde_json::Value;
use service_kit::auth::{self, Algorithm, Claims};
use service_kit::testing::smtp::SmtpSink;
use service_kit::testing::NatsServer;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::binaries;
use crate::process::Process;

const SECRET: &str = "system-tests-secret-of-32-bytes-or-more";

/// The kinds of process the shop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Gateway,
    Api,
    Relay,
    Saga,
    Notifier,
    Projections,
    Query,
    /// A second saga process on the same consumers (`Settings::saga_instances`).
    SecondSaga,
}

impl Kind {
    /// In the order they start: the command API applies the migrations.
    /// (A system may run a second saga process too, see [`System::kinds`].)
    pub const ALL: [Kind; 7] =
        [Kind::Gateway, Kind::Api, Kind::Relay, Kind::Saga, Kind::Notifier, Kind::Projections, Kind::Query];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Api => "api",
            Kind::Relay => "relay",
            Kind::Saga => "saga",
            Kind::Notifier => "notifier",
            Kind::Projections => "projections",
            Kind::Query => "query",
            Kind::SecondSaga => "saga-2",
        }
    }
}

/// Settings of the shop under test beyond the defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ORDER_DEADLINE`
    pub order_deadline: &'static str,
    /// `PAYMENT_GATEWAY_TIMEOUT`
    pub gateway_timeout: &'static str,
    /// Saga processes sharing the consumers: 1 or 2.
    pub saga_instances: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { order_deadline: "20s", gateway_timeout: "1s", saga_instances: 1 }
    }
}

/// What a client needs to talk to the shop (cheap to clone).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub api: String,
    pub query: String,
    pub gateway: String,
    /// A token with every scope.
    pub token: String,
}

pub struct System {
    pub dir: PathBuf,
    pub pg: PgServer,
    pub nats: NatsServer,
    pub database_url: String,
    pub stream: String,
    pub dead_letter_stream: String,
    pub client: Client,
    /// Where the notifier sends its e-mail.
    pub smtp: SmtpSink,
    ops: BTreeMap<Kind, String>,
    /// The processes it runs, in the order they start.
    kinds: Vec<Kind>,
    processes: BTreeMap<Kind, Process>,
    env: Vec<(String, String)>,
    pool: Option<PgPool>,
    _ports: Ports,
}

/// The ports of a system's services, held for as long as the system lives.
pub use event_store::testing::Ports;

impl System {
    /// Starts the servers and every process, and waits until each is ready.
    pub async fn start(settings: Settings) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("system-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PgServer::start();
        let nats = NatsServer::start();
        let database_url = pg.url("orders");
        let mut ports = Ports::default();
        let mut kinds = Kind::ALL.to_vec();
        if settings.saga_instances > 1 {
            kinds.insert(kinds.iter().position(|k| *k == Kind::Saga).unwrap() + 1, Kind::SecondSaga);
        }
        let addrs: BTreeMap<Kind, String> = kinds.iter().map(|kind| (*kind, ports.reserve())).collect();
        // The APIs serve `/metrics` and readiness with reasons on an ops address of their own.
        let mut ops = addrs.clone();
        ops.insert(Kind::Api, ports.reserve());
        ops.insert(Kind::Query, ports.reserve());
        let (stream, dead_letter_stream) = (format!("EVENTS_{id}"), format!("DEADLETTER_{id}"));
        let smtp = SmtpSink::start().await;
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "8"),
            ("NATS_URL", &nats.url()),
            ("RELAY_STREAM", &stream),
            ("RELAY_SUBJECT_PREFIX", &format!("events{id}")),
            ("SAGA_DEAD_LETTER_STREAM", &dead_letter_stream),
            ("SAGA_RETRY_DELAY", "200ms"),
            ("DEADLINE_POLL", "500ms"),
            ("ORDER_DEADLINE", settings.order_deadline),
            ("PAYMENT_GATEWAY_URL", &format!("http://{}", addrs[&Kind::Gateway])),
            ("PAYMENT_GATEWAY_TIMEOUT", settings.gateway_timeout),
            ("GATEWAY_HTTP_ADDR", &addrs[&Kind::Gateway]),
            ("COMMAND_HTTP_ADDR", &addrs[&Kind::Api]),
            ("COMMAND_OPS_ADDR", &ops[&Kind::Api]),
            ("RELAY_OPS_ADDR", &addrs[&Kind::Relay]),
            ("SAGA_OPS_ADDR", &addrs[&Kind::Saga]),
            ("NOTIFIER_OPS_ADDR", &addrs[&Kind::Notifier]),
            ("SMTP_URL", &smtp.url()),
            ("EMAIL_FROM", "Shop <orders@shop.test>"),
            ("NOTIFY_RETRY_MIN", "200ms"),
            ("NOTIFY_RETRY_MAX", "2s"),
            ("PROJECTIONS_OPS_ADDR", &addrs[&Kind::Projections]),
            ("QUERY_HTTP_ADDR", &addrs[&Kind::Query]),
            ("QUERY_OPS_ADDR", &ops[&Kind::Query]),
            ("JWT_SECRET", SECRET),
            // The workload sends from one principal, faster than a customer would.
            ("RATE_LIMIT_PER_SECOND", "100000"),
            ("RATE_LIMIT_BURST", "100000"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info,sqlx=warn"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let processes = kinds
            .iter()
            .map(|kind| {
                let (binary, args): (&str, &[&str]) = match kind {
                    Kind::Gateway => ("payment-gateway", &[]),
                    Kind::Api => ("command-api", &[]),
                    Kind::Relay => ("relay", &[]),
                    Kind::Saga | Kind::SecondSaga => ("saga", &[]),
                    Kind::Notifier => ("notifier", &[]),
                    Kind::Projections => ("projections", &["serve"]),
                    Kind::Query => ("query-api", &[]),
                };
                let mut env = env.clone();
                if *kind == Kind::SecondSaga {
                    env.push(("SAGA_OPS_ADDR".to_owned(), addrs[kind].clone()));
                }
                let log = dir.join(format!("{}.log", kind.name()));
                (*kind, Process::new(kind.name(), binaries::path(binary), args, env, log))
            })
            .collect();
        let claims = Claims {
            sub: "operator".into(),
            iss: "order-system".into(),
            aud: "order-system".into(),
            exp: auth::now() + 24 * 3600,
            nbf: None,
            scope: "admin orders:write orders:read orders:fulfil inventory:write inventory:read".into(),
        };
        let client = Client {
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            api: format!("http://{}", addrs[&Kind::Api]),
            query: format!("http://{}", addrs[&Kind::Query]),
            gateway: format!("http://{}", addrs[&Kind::Gateway]),
            token: auth::mint(Algorithm::HS256, SECRET.as_bytes(), &claims).unwrap(),
        };
        let ops = ops.into_iter().map(|(kind, addr)| (kind, format!("http://{addr}"))).collect();
        let mut system = Self {
            dir,
            pg,
            nats,
            database_url,
            stream,
            dead_letter_stream,
            client,
            smtp,
            ops,
            kinds,
            processes,
            env,
            pool: None,
            _ports: ports,
        };
        for kind in system.kinds.clone() {
            system.process(kind).start();
            system.wait_ready(kind, Duration::from_secs(60)).await;
        }
        system
    }

    /// The processes this system runs, in the order they start.
    pub fn kinds(&self) -> Vec<Kind> {
        self.kinds.clone()
    }

    pub fn process(&mut self, kind: Kind) -> &mut Process {
        self.processes.get_mut(&kind).expect("every kind has a process")
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Where the process of `kind` answers `/health/*` and `/metrics`.
    pub fn ops(&self, kind: Kind) -> &str {
        &self.ops[&kind]
    }

    /// Waits until the process answers `/health/ready` with success.
    pub async fn wait_ready(&mut self, kind: Kind, within: Duration) {
        let url = format!("{}/health/ready", self.ops(kind));
        let started = Instant::now();
        loop {
            let ready = self.client.http.get(&url).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            let process = self.process(kind);
            if let Some(status) = process.exited() {
                panic!("{} exited ({status}) while starting:\n{}", kind.name(), process.log_tail(20));
            }
            assert!(
                started.elapsed() < within,
                "{} not ready within {within:?}:\n{}",
                kind.name(),
                self.process(kind).log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the process, then starts it again after `pause`.
    pub async fn kill_and_restart(&mut self, kind: Kind, pause: Duration) {
        self.process(kind).kill();
        tokio::time::sleep(pause).await;
        self.process(kind).start();
    }

    /// Stops PostgreSQL (cleanly or as a crash) and starts it again after `pause`.
    pub async fn restart_postgres(&mut self, how: Stop, pause: Duration) {
        self.pg.stop(how);
        tokio::time::sleep(pause).await;
        self.pg.restart();
    }

    /// Stops NATS and starts it again after `pause`.
    pub async fn restart_nats(&mut self, pause: Duration) {
        self.nats.stop();
        tokio::time::sleep(pause).await;
        self.nats.restart();
    }

    /// The processes that are not running though they should be.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for kind in self.kinds() {
            let process = self.process(kind);
            if let Some(status) = process.exited() {
                crashed.push(format!("{} exited ({status}):\n{}", kind.name(), process.log_tail(20)));
            }
        }
        crashed
    }

    /// A pool on the shop's database, for the checks.
    pub async fn pool(&mut self) -> PgPool {
        if let Some(pool) = &self.pool {
            return pool.clone();
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.database_url)
            .await
            .expect("the shop's database answers");
        self.pool = Some(pool.clone());
        pool
    }

    /// Runs `projections rebuild <name>` to its end; answers whether it succeeded.
    pub async fn rebuild_from_the_command_line(&self, name: &str) -> bool {
        let binary = binaries::path("projections");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("rebuild-{name}.log")))
            .unwrap();
        let mut command = std::process::Command::new(binary);
        command
            .args(["rebuild", name])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let status = tokio::task::spawn_blocking(move || command.status()).await.unwrap().unwrap();
        status.success()
    }

    /// The last `OrderPlaced` the relay published, put in the dead-letter
    /// stream as if `consumer` had given up on it with `error`.
    pub async fn dead_letter_last_order_placed(&self, consumer: &str, error: &str) {
        use service_kit::nats::dead_letters::{CONSUMER, DELIVERIES, ERROR, SUBJECT};
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        let events = js.get_stream(&self.stream).await.unwrap();
        let prefix = &self.env.iter().find(|(k, _)| k == "RELAY_SUBJECT_PREFIX").expect("a subject prefix").1;
        let subject = format!("{prefix}.order.OrderPlaced");
        let placed = events.get_last_raw_message_by_subject(&subject).await.unwrap();
        let mut headers = placed.headers.clone();
        headers.insert(ERROR, error);
        headers.insert(CONSUMER, consumer);
        headers.insert(SUBJECT, subject.as_str());
        headers.insert(DELIVERIES, "5");
        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("dead-{consumer}-{}", placed.sequence).as_str());
        let to = format!("{prefix}_deadletter.{consumer}");
        js.publish_with_headers(to, headers, placed.payload.clone()).await.unwrap().await.unwrap();
    }

    /// Stops every process (SIGTERM), then the servers; removes the logs
    /// unless `keep_logs` (or `SYSTEM_TESTS_KEEP_LOGS` is set).
    pub fn stop(mut self, keep_logs: bool) {
        for kind in self.kinds().into_iter().rev() {
            self.process(kind).terminate(Duration::from_secs(10));
        }
        if keep_logs || std::env::var_os("SYSTEM_TESTS_KEEP_LOGS").is_some() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Client {
    /// The gateway simulator's faults, from now on.
    pub async fn set_faults(&self, faults: Faults) {
        let response = self.http.put(format!("{}/admin/faults", self.gateway)).json(&faults).send().await.unwrap();
        assert_eq!(response.status(), 204, "the gateway takes its faults");
    }

    /// Every charge and void the gateway made, with its key.
    pub async fn charges(&self) -> Vec<KeyedCharge> {
        self.http.get(format!("{}/v1/charges", self.gateway)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn ledger(&self) -> Totals {
        self.http.get(format!("{}/v1/ledger", self.gateway)).send().await.unwrap().json().await.unwrap()
    }

    /// A request with the all-scopes token to `url` (either API), with `body`
    /// as JSON unless it is `Null`, which must succeed; its JSON answer
    /// (`Null` for none).
    pub async fn call(&self, method: &str, url: &str, body: Value) -> Value {
        let mut request = self.http.request(method.parse().expect("an HTTP method"), url).bearer_auth(&self.token);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{method} {url}: {}", response.status());
        response.json().await.unwrap_or(Value::Null)
    }

    /// A command to the command API (`POST /v1/orders`, ...), which must succeed.
    pub async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("{}{path}", self.api), body).await
    }

    /// The order as the query API shows it once its status is one of
    /// `wanted`; panics after 60 s naming what it last saw.
    pub async fn order_in(&self, order_id: &str, wanted: &[&str]) -> Value {
        let started = Instant::now();
        loop {
            let order = self.query(&format!("/v1/orders/{order_id}")).await;
            if let Some(order) = order.as_ref().filter(|o| wanted.iter().any(|w| o["status"] == *w)) {
                return order.clone();
            }
            assert!(started.elapsed() < Duration::from_secs(60), "order {order_id} is not {wanted:?}: {order:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Receives `stock` of `sku`, places an order of `quantity` of it and
    /// waits until it is confirmed: the order's id.
    pub async fn confirmed_order(&self, sku: &str, stock: u32, quantity: u32, unit_price_cents: u64) -> String {
        self.command("POST", &format!("/v1/inventory/{sku}/receipts"), serde_json::json!({"quantity": stock})).await;
        let order = self
            .command(
                "POST",
                "/v1/orders",
                serde_json::json!({"customer_id": "c-1", "currency": "EUR", "payment_token": "tok_visa",
                    "lines": [{"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents}]}),
            )
            .await;
        let order_id = order["order_id"].as_str().expect("an order id").to_owned();
        self.order_in(&order_id, &["confirmed"]).await;
        order_id
    }

    /// A GET on the query API; `None` unless it answers 200.
    pub async fn query(&self, path: &str) -> Option<Value> {
        let response = self.http.get(format!("{}{path}", self.query)).bearer_auth(&self.token).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }
}
