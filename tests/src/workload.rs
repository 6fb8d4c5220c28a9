//! A shop's clients: orders of one to three lines on a few hot items with
//! limited stock (some cards declined), cancels at random moments, stock
//! receipts. Every POST carries an `Idempotency-Key` and is sent again, with
//! the same key, until it is answered: through killed processes, restarted
//! servers and timeouts. What was acknowledged is recorded, so the books can
//! be checked against it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::system::Client;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The hot items every order draws from.
    pub skus: Vec<String>,
    /// Units of each received before the load starts.
    pub initial_stock: u64,
    /// Requests per second, all clients together.
    pub rate: f64,
    /// Clients sending at once.
    pub clients: usize,
    /// Shares of the requests that are stock receipts, cancels and shipments
    /// (of an order picked at random: it may be pending, confirmed or ended);
    /// the rest place orders.
    pub receipt_share: f64,
    pub cancel_share: f64,
    pub ship_share: f64,
    /// Share of orders paid with a card the gateway declines.
    pub declined_share: f64,
    /// Share of placed orders sent again under the same key after their
    /// answer, as a client that lost it would: the answer must be the same.
    pub resend_share: f64,
    /// Longest a request is retried before it counts as unanswered.
    pub give_up_after: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            skus: (1..=4).map(|n| format!("HOT-{n}")).collect(),
            initial_stock: 40,
            rate: 8.0,
            clients: 4,
            receipt_share: 0.1,
            cancel_share: 0.15,
            ship_share: 0.1,
            declined_share: 0.15,
            resend_share: 0.1,
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// An order the shop acknowledged (202).
#[derive(Debug, Clone)]
pub struct Placed {
    pub order_id: Uuid,
    /// `(sku, quantity, unit price in cents)`
    pub lines: Vec<(String, u32, u64)>,
    pub total_cents: u64,
    pub token: &'static str,
}

/// What the clients sent and what the shop acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Records {
    pub orders: Vec<Placed>,
    /// Units received per sku, acknowledged.
    pub received: BTreeMap<String, u64>,
    /// Cancels answered 202, and 409 (the order had ended already).
    pub cancels_accepted: u64,
    pub cancels_refused: u64,
    /// Shipments answered 202, and 409 (the order was not confirmed).
    pub ships_accepted: u64,
    pub ships_refused: u64,
    pub requests: u64,
    /// Sends beyond the first, because of an error or no answer.
    pub retries: u64,
    /// Orders sent again after their answer, and answered the same.
    pub resent: u64,
    /// Answers no client should get (a request that broke no rule refused).
    pub unexpected: Vec<String>,
    /// How long each answered request took, retries included, since the
    /// last time someone took them (the soak run does, every minute).
    pub answered_in: Vec<Duration>,
}

pub type Shared = Arc<Mutex<Records>>;

fn lock(records: &Shared) -> std::sync::MutexGuard<'_, Records> {
    records.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The answer to a request, once there is one.
#[derive(Debug)]
pub enum Answer {
    Answered(StatusCode, Value),
    /// No answer within `give_up_after`: a violation of its own.
    Unanswered(String),
}

/// Sends a POST with `key` until it is answered: a transport error, a 5xx,
/// a 429 or a 409 with `Retry-After` (contention, the same key still being
/// processed) is sent again after a pause that grows.
pub async fn post(
    client: &Client,
    path: &str,
    body: &Value,
    key: &str,
    config: &WorkloadConfig,
    records: &Shared,
) -> Answer {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    lock(records).requests += 1;
    loop {
        let sent = client
            .http
            .post(format!("{}{path}", client.api))
            .bearer_auth(&client.token)
            .header("idempotency-key", key)
            .timeout(Duration::from_secs(15))
            .json(body)
            .send()
            .await;
        let last_error = match sent {
            Ok(response) => {
                let status = response.status();
                let retry = status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || (status == StatusCode::CONFLICT && response.headers().contains_key("retry-after"));
                if !retry {
                    let body = response.json().await.unwrap_or(Value::Null);
                    lock(records).answered_in.push(started.elapsed());
                    return Answer::Answered(status, body);
                }
                format!("answered {status}")
            }
            Err(error) => error.to_string(),
        };
        if started.elapsed() > config.give_up_after {
            return Answer::Unanswered(format!("POST {path} (key {key}): {last_error}"));
        }
        lock(records).retries += 1;
        let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 2));
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Receives `units` of `sku`; records them once acknowledged.
pub async fn receive(client: &Client, sku: &str, units: u64, config: &WorkloadConfig, records: &Shared) {
    let key = Uuid::new_v4().to_string();
    let path = format!("/v1/inventory/{sku}/receipts");
    match post(client, &path, &json!({"quantity": units}), &key, config, records).await {
        Answer::Answered(StatusCode::ACCEPTED, _) => {
            *lock(records).received.entry(sku.to_owned()).or_default() += units
        }
        Answer::Answered(status, body) => lock(records).unexpected.push(format!("receipt {sku}: {status} {body}")),
        Answer::Unanswered(what) => lock(records).unexpected.push(format!("unanswered: {what}")),
    }
}

async fn place(client: &Client, config: &WorkloadConfig, records: &Shared) {
    let mut skus = config.skus.clone();
    fastrand::shuffle(&mut skus);
    let lines: Vec<(String, u32, u64)> = skus
        .into_iter()
        .take(fastrand::usize(1..=3.min(config.skus.len())))
        .map(|sku| (sku, fastrand::u32(1..=3), fastrand::u64(100..=5000)))
        .collect();
    let token = if fastrand::f64() < config.declined_share { "tok_declined" } else { "tok_visa" };
    let body = json!({
        "customer_id": format!("c-{}", fastrand::u32(1..=20)),
        "currency": "EUR",
        "payment_token": token,
        "lines": lines.iter().map(|(sku, q, p)| json!({"sku": sku, "quantity": q, "unit_price_cents": p})).collect::<Vec<_>>(),
    });
    let key = Uuid::new_v4().to_string();
    match post(client, "/v1/orders", &body, &key, config, records).await {
        Answer::Answered(StatusCode::ACCEPTED, answer) => {
            let Some(order_id) = answer["order_id"].as_str().and_then(|id| id.parse().ok()) else {
                lock(records).unexpected.push(format!("an order accepted without an id: {answer}"));
                return;
            };
            let total_cents = lines.iter().map(|(_, q, p)| u64::from(*q) * p).sum();
            lock(records).orders.push(Placed { order_id, lines, total_cents, token });
            if fastrand::f64() < config.resend_share {
                match post(client, "/v1/orders", &body, &key, config, records).await {
                    Answer::Answered(StatusCode::ACCEPTED, again) if again["order_id"] == answer["order_id"] => {
                        lock(records).resent += 1
                    }
                    other => lock(records).unexpected.push(format!("order {order_id} sent again: {other:?}")),
                }
            }
        }
        Answer::Answered(status, answer) => lock(records).unexpected.push(format!("order: {status} {answer}")),
        Answer::Unanswered(what) => lock(records).unexpected.push(format!("unanswered: {what}")),
    }
}

/// Cancels, or ships, an order acknowledged earlier, picked at random.
async fn end_order(client: &Client, config: &WorkloadConfig, records: &Shared, ship: bool) {
    let order_id = {
        let records = lock(records);
        if records.orders.is_empty() {
            return;
        }
        records.orders[fastrand::usize(..records.orders.len())].order_id
    };
    let key = Uuid::new_v4().to_string();
    let (path, body) = if ship {
        (format!("/v1/orders/{order_id}/ship"), json!({}))
    } else {
        (format!("/v1/orders/{order_id}/cancel"), json!({"reason": "changed my mind"}))
    };
    let answer = post(client, &path, &body, &key, config, records).await;
    let mut records = lock(records);
    match (answer, ship) {
        (Answer::Answered(StatusCode::ACCEPTED, _), false) => records.cancels_accepted += 1,
        (Answer::Answered(StatusCode::ACCEPTED, _), true) => records.ships_accepted += 1,
        // Cancel: rejected, cancelled or shipped already; ship: not confirmed.
        (Answer::Answered(StatusCode::CONFLICT, _), false) => records.cancels_refused += 1,
        (Answer::Answered(StatusCode::CONFLICT, _), true) => records.ships_refused += 1,
        (Answer::Answered(status, answer), _) => records.unexpected.push(format!("{path}: {status} {answer}")),
        (Answer::Unanswered(what), _) => records.unexpected.push(format!("unanswered: {what}")),
    }
}

/// Receives the initial stock of every item.
pub async fn stock_up(client: &Client, config: &WorkloadConfig, records: &Shared) {
    for sku in &config.skus {
        receive(client, sku, config.initial_stock, config, records).await;
    }
}

/// Runs the clients for `duration`.
pub async fn run(client: Client, config: WorkloadConfig, duration: Duration, records: Shared) {
    let until = Instant::now() + duration;
    let every = Duration::from_secs_f64(config.clients as f64 / config.rate);
    let clients = (0..config.clients).map(|_| {
        let (client, config, records) = (client.clone(), config.clone(), records.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                let started = Instant::now();
                let draw = fastrand::f64();
                if draw < config.receipt_share {
                    let sku = &config.skus[fastrand::usize(..config.skus.len())];
                    receive(&client, sku, fastrand::u64(5..=15), &config, &records).await;
                } else if draw < config.receipt_share + config.cancel_share {
                    end_order(&client, &config, &records, false).await;
                } else if draw < config.receipt_share + config.cancel_share + config.ship_share {
                    end_order(&client, &config, &records, true).await;
                } else {
                    place(&client, &config, &records).await;
                }
                tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
            }
        })
    });
    for client in futures_util::future::join_all(clients).await {
        client.expect("a client task does not panic");
    }
}
