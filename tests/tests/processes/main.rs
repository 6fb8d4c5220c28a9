//! The system as separate processes, as it is deployed: the binary
//! `command-api`, `relay` and `saga`, the
//! projections and the query API, against a database and JetStream streams of
//! the test's own, with the payment gateway simulator beside them. The saga process is killed (SIGKILL) while orders
//! are in flight and started again: every order still completes, once. Each
//! process serves its health and metrics, and the correlation id the test sends
//! with its requests is followed through every process's logs, and its
//! trace through every process's spans (exported to a fake OTLP collector).

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::order::{Order, OrderState, OrderStatus};
use event_store::PgEventStore;
use migrations::testing::with_database;
use serde_json::json;
use service_kit::auth::{self, Claims};
use system_tests::binaries;
use system_tests::books::state_of;
use system_tests::system::Ports;
use uuid::Uuid;

const SECRET: &str = "processes-test-secret-of-32-bytes-or-more";

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The trace id of the client's `traceparent`.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// An OTLP/HTTP collector that keeps every export's body (protobuf).
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let exports = Arc::new(Mutex::new(Vec::new()));
    let kept = exports.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.to_vec());
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, exports)
}

/// Starts the binary `name` with `env`, its JSON logs written to `log`.
fn start(name: &str, env: &[(String, String)], log: &std::path::Path) -> Service {
    start_binary(&binaries::path(name), &[], env, log)
}

fn start_binary(binary: &std::path::Path, args: &[&str], env: &[(String, String)], log: &std::path::Path) -> Service {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
    Service(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_complete_once_when_the_saga_process_is_killed_and_started_again() {
    service_kit::telemetry::init_for_tests();
    with_database(5, |pool| async move {
        let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
        let server = std::env::var("DATABASE_URL").unwrap();
        let database_url = format!("{}/{database}", server.rsplit_once('/').unwrap().0);

        let gateway = payment_gateway::App::build(payment_gateway::Config::ephemeral()).await.unwrap();
        let gateway_url = format!("http://{}", gateway.local_addr());
        let gateway_task = tokio::spawn(gateway.run_until(service_kit::Shutdown::never()));

        let id = Uuid::new_v4().simple().to_string();
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| service_kit::config::DEFAULT_NATS_URL.into());
        let js = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
        service_kit::testing::drop_stale_streams(&js, &["PROCTEST", "PROCDLQ"]).await;
        let (collector_url, exports) = collector().await;
        let (stream, dead_letters) = (format!("PROCTEST_{id}"), format!("PROCDLQ_{id}"));
        let mut ports = Ports::default();
        let api_addr = ports.reserve();
        let (relay_ops, saga_ops) = (ports.reserve(), ports.reserve());
        let (projections_ops, query_addr) = (ports.reserve(), ports.reserve());
        let (api_ops, query_ops) = (ports.reserve(), ports.reserve());
        let env: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "5"),
            ("COMMAND_HTTP_ADDR", api_addr.as_str()),
            ("COMMAND_OPS_ADDR", api_ops.as_str()),
            ("QUERY_OPS_ADDR", query_ops.as_str()),
            ("RELAY_OPS_ADDR", relay_ops.as_str()),
            ("SAGA_OPS_ADDR", saga_ops.as_str()),
            ("PROJECTIONS_OPS_ADDR", projections_ops.as_str()),
            ("QUERY_HTTP_ADDR", query_addr.as_str()),
            ("RELAY_STREAM", stream.as_str()),
            // Small: JetStream reserves it of the shared server's storage, whatever a failed run leaves.
            ("RELAY_STREAM_MAX_BYTES", "67108864"),
            ("RELAY_SUBJECT_PREFIX", &format!("proctest{id}")),
            ("SAGA_DEAD_LETTER_STREAM", dead_letters.as_str()),
            ("PAYMENT_GATEWAY_URL", gateway_url.as_str()),
            ("LOG_LEVEL", "info,sqlx=warn,command_api=debug,relay=debug,saga=debug,projections=debug"),
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("JWT_SECRET", SECRET),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();

        let logs = std::env::temp_dir().join(format!("processes-test-{id}"));
        std::fs::create_dir_all(&logs).unwrap();
        let log = |name: &str| logs.join(format!("{name}.log"));
        let api_process = start("command-api", &env, &log("api"));
        let relay_process = start("relay", &env, &log("relay"));
        let mut saga = start("saga", &env, &log("saga"));
        let projections_process = start_binary(&binaries::path("projections"), &["serve"], &env, &log("projections"));
        let query_process = start_binary(&binaries::path("query-api"), &[], &env, &log("query"));
        let http = reqwest::Client::new();
        let api = format!("http://{api_addr}");
        let started = Instant::now();
        while http.get(format!("{api}/health/ready")).send().await.map_or(true, |r| !r.status().is_success()) {
            assert!(started.elapsed() < Duration::from_secs(30), "the command API did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let claims = Claims {
            sub: "operator".into(),
            iss: "order-system".into(),
            aud: "order-system".into(),
            exp: auth::now() + 600,
            nbf: None,
            scope: "admin orders:write orders:read inventory:write".into(),
        };
        let token = auth::mint(auth::Algorithm::HS256, SECRET.as_bytes(), &claims).unwrap();
        let correlation_id = format!("corr-e2e-{id}");
        let post = |path: String, body: serde_json::Value| {
            let request = http
                .post(format!("{api}{path}"))
                .bearer_auth(&token)
                .header("x-correlation-id", correlation_id.as_str())
                .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
                .json(&body);
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 202);
                response.json::<serde_json::Value>().await.unwrap()
            }
        };
        post("/v1/inventory/SKU-P/receipts".into(), json!({"quantity": 1000})).await;
        let mut orders = Vec::new();
        for n in 0..30 {
            if n == 10 {
                saga.0.kill().unwrap();
                saga.0.wait().unwrap();
            }
            if n == 20 {
                saga = start("saga", &env, &log("saga"));
            }
            let body = json!({"customer_id": "c-1", "currency": "EUR", "payment_token": "tok_visa",
                              "lines": [{"sku": "SKU-P", "quantity": 1, "unit_price_cents": 100}]});
            let accepted = post("/v1/orders".into(), body).await;
            orders.push(accepted["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }

        let store = PgEventStore::new(pool.clone());
        let started = Instant::now();
        for order_id in &orders {
            loop {
                let state = state_of::<Order>(&store, order_id).await.unwrap();
                if matches!(&state, OrderState::Placed(o) if o.status == OrderStatus::Confirmed) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "order {order_id} not confirmed: {state:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Every process answers its operators: ready, and counting its work.
        for (ops, metric) in [
            (&format!("http://{api_ops}"), "http_requests_total"),
            (&format!("http://{query_ops}"), "http_requests_total"),
            (&format!("http://{relay_ops}"), "relay_events_published_total"),
            (&format!("http://{saga_ops}"), "saga_messages_total"),
            // Placed to confirmed, once per order (the SLO of docs/slos.md).
            (&format!("http://{saga_ops}"), "saga_order_seconds_bucket{outcome=\"confirmed\""),
        ] {
            let ready = http.get(format!("{ops}/health/ready")).send().await.unwrap();
            assert_eq!(ready.status(), 204, "{ops}");
            let metrics = http.get(format!("{ops}/metrics")).send().await.unwrap().text().await.unwrap();
            assert!(metrics.contains(metric), "{ops} /metrics lacks {metric}");
        }
        // A query about the last order, with the same correlation id, once
        // the read model has it.
        let last = orders.last().unwrap();
        let started = Instant::now();
        loop {
            let response = http
                .get(format!("http://{query_addr}/v1/orders/{last}"))
                .bearer_auth(&token)
                .header("x-correlation-id", correlation_id.as_str())
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the query API never showed {last}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The correlation id runs through every process's logs: the
        // request, the relay's publish, each participant's handling, the
        // projections' folding, the query.
        for process in ["api", "relay", "saga", "projections", "query"] {
            let text = std::fs::read_to_string(log(process)).unwrap();
            let lines = text.lines().filter(|line| line.contains(&correlation_id)).count();
            assert!(lines > 0, "{process}'s log never names {correlation_id} (see {})", logs.display());
        }
        let saga_log = std::fs::read_to_string(log("saga")).unwrap();
        // A message several participants hear is handled once for all of
        // them: its lines name them all ("inventory+deadline").
        let names = |line: &str| -> Vec<String> {
            let Some((_, rest)) = line.split_once("\"participant\":\"") else { return Vec::new() };
            rest.split('"').next().unwrap_or_default().split('+').map(str::to_owned).collect()
        };
        for participant in ["inventory", "order", "payment", "deadline"] {
            assert!(
                saga_log
                    .lines()
                    .any(|line| line.contains(&correlation_id) && names(line).iter().any(|n| n == participant)),
                "the {participant} participant's log never names {correlation_id}"
            );
        }
        // Each process exported spans of the client's trace over OTLP: the
        // trace went from HTTP through the log and NATS to every participant.
        let trace_id: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&TRACE_ID[2 * i..2 * i + 2], 16).unwrap()).collect();
        let started = Instant::now();
        for service in ["command-api", "relay", "saga"] {
            loop {
                let traced = exports
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|body| contains(body, service.as_bytes()) && contains(body, &trace_id));
                if traced {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "{service} exported no span of the client's trace"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let ledger: payment_gateway::Totals =
            http.get(format!("{gateway_url}/v1/ledger")).send().await.unwrap().json().await.unwrap();
        assert_eq!((ledger.charges_captured, ledger.captured_cents), (30, 3000), "each order charged once");

        drop((saga, relay_process, api_process, projections_process, query_process));
        let _ = std::fs::remove_dir_all(&logs);
        gateway_task.abort();
        for name in [&stream, &dead_letters] {
            let _ = js.delete_stream(name).await;
        }
    })
    .await;
}
