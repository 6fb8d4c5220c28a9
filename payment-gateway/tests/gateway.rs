//! The simulator as a process, over HTTP: what the saga and the fault
//! suite rely on (this test also has its binary built for the suites that
//! start it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

struct Simulator {
    child: Child,
    base: String,
    http: Client,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Simulator {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_payment-gateway"))
            .env("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let simulator = Self { child, base: format!("http://127.0.0.1:{port}"), http: Client::new() };
        let started = Instant::now();
        while simulator.http.get(simulator.url("/health/live")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "the simulator did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        simulator
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(&body).send().await.unwrap()
    }

    async fn faults(&self, faults: Value) -> StatusCode {
        self.http.put(self.url("/admin/faults")).json(&faults).send().await.unwrap().status()
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }
}

fn charge(key: &str) -> Value {
    json!({"idempotency_key": key, "amount_cents": 500, "currency": "EUR", "token": "tok_visa"})
}

#[tokio::test]
async fn a_charge_whose_answer_is_lost_is_found_by_voiding_its_key() {
    let simulator = Simulator::start().await;
    assert_eq!(simulator.faults(json!({"lost_answer_rate": 1.0})).await, StatusCode::NO_CONTENT);
    let lost = simulator.post("/v1/charges", charge("order-1")).await;
    assert_eq!(lost.status(), StatusCode::SERVICE_UNAVAILABLE, "the answer is lost");
    simulator.faults(json!({})).await;

    // The charge was made: voiding its key answers it.
    let found: Value =
        simulator.post("/v1/charges/void", json!({"idempotency_key": "order-1"})).await.json().await.unwrap();
    assert_eq!((found["status"].as_str(), found["amount_cents"].as_u64()), (Some("captured"), Some(500)));
    // No charge under this key yet: none ever will be.
    let voided: Value =
        simulator.post("/v1/charges/void", json!({"idempotency_key": "order-2"})).await.json().await.unwrap();
    assert_eq!(voided["status"], "voided");
    let late: Value = simulator.post("/v1/charges", charge("order-2")).await.json().await.unwrap();
    assert_eq!(late["status"], "voided");

    let ledger = simulator.get("/v1/ledger").await;
    assert_eq!((ledger["charges_captured"].as_u64(), ledger["voids"].as_u64()), (Some(1), Some(1)));
    let charges = simulator.get("/v1/charges").await;
    let keys: Vec<(&str, &str)> = charges
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["idempotency_key"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(keys, [("order-1", "captured"), ("order-2", "voided")]);
}

#[tokio::test]
async fn a_garbled_answer_is_a_200_that_is_not_json_and_bad_rates_are_refused() {
    let simulator = Simulator::start().await;
    simulator.faults(json!({"garbled_answer_rate": 1.0})).await;
    let garbled = simulator.post("/v1/charges", charge("k")).await;
    assert_eq!(garbled.status(), StatusCode::OK);
    assert!(garbled.json::<Value>().await.is_err(), "the body is not the answer");
    assert_eq!(simulator.faults(json!({"lost_answer_rate": 2})).await, StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn a_bad_setting_stops_start_up_with_a_message_naming_it() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_payment-gateway")).env("GATEWAY_LOST_ANSWER_RATE", "1.5").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("GATEWAY_LOST_ANSWER_RATE"));
}
