//! A payment gateway simulator, so the saga has a real HTTP peer to talk to.
//!
//! - `POST /v1/charges {idempotency_key, amount_cents, currency, token}`:
//!   `tok_visa` is captured, `tok_declined` is declined, any other token is
//!   declined as invalid. The same key again answers the first result and
//!   charges nothing; the same key with another body is 422.
//! - `POST /v1/charges/void {idempotency_key}`: closes a charge's key. The
//!   charge made under it, if any, is answered (captured or declined); if
//!   none was made, none ever will be (answered `voided`, and a charge with
//!   the key later is answered `voided` too). A client unsure whether a
//!   charge reached the gateway finds out this way, without a race.
//! - `POST /v1/refunds {idempotency_key, charge_id, amount_cents}`: gives back
//!   (part of) a captured charge, at most what is left of it; idempotent by key.
//! - `GET /v1/ledger`: what was charged and refunded, in sums; `GET
//!   /v1/charges`: every charge and void with its key. For tests and operators.
//! - `GET|PUT /admin/faults {latency_ms, error_rate, down, lost_answer_rate,
//!   garbled_answer_rate}`: injected latency, a share of calls answered 503
//!   before anything is recorded, every call refused, and shares of calls
//!   carried out whose answer is then lost (503) or unreadable (a 200 that is
//!   not JSON). Start-up values come from the configuration.
//!
//! The ledger lives in memory: a restarted simulator forgets its keys.

mod config;
mod ledger;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::http::Problem;
use service_kit::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;
pub use ledger::{
    Charge, ChargeRequest, ChargeStatus, KeyedCharge, Ledger, LedgerError, Refund, RefundRequest, Totals, VoidRequest,
};

/// Faults injected into every call of the payment API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Added to every call before it is answered.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls (0 to 1) answered 503 without being recorded.
    #[serde(default)]
    pub error_rate: f64,
    /// Every call answered 503: the gateway is down.
    #[serde(default)]
    pub down: bool,
    /// Share of calls (0 to 1) carried out and recorded, whose answer is then
    /// lost: answered 503, as a proxy would after a timeout upstream.
    #[serde(default)]
    pub lost_answer_rate: f64,
    /// Share of calls (0 to 1) carried out and recorded, answered 200 with a
    /// body that is not the answer.
    #[serde(default)]
    pub garbled_answer_rate: f64,
}

impl Faults {
    /// The first rate that is not between 0 and 1, by name.
    pub fn bad_rate(&self) -> Option<&'static str> {
        [
            ("error_rate", self.error_rate),
            ("lost_answer_rate", self.lost_answer_rate),
            ("garbled_answer_rate", self.garbled_answer_rate),
        ]
        .into_iter()
        .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        .map(|(name, _)| name)
    }
}

#[derive(Clone, Default)]
struct AppState {
    ledger: Arc<Mutex<Ledger>>,
    faults: Arc<Mutex<Faults>>,
}

impl AppState {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct App {
    listener: TcpListener,
    router: Router,
}

impl App {
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let state = AppState::default();
        *state.faults.lock().unwrap_or_else(PoisonError::into_inner) = config.faults;
        let router = Router::new()
            .route("/v1/charges", post(charge).get(charges))
            .route("/v1/charges/void", post(void))
            .route("/v1/refunds", post(refund))
            .route("/v1/ledger", get(ledger))
            .route("/admin/faults", get(get_faults).put(put_faults))
            .merge(service_kit::ops::router(vec![]))
            .fallback(service_kit::http::not_found_route)
            .with_state(state);
        let router = service_kit::http::layers(router, Duration::from_secs(30));
        Ok(Self { listener: TcpListener::bind(config.http_addr).await?, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run_until(self, shutdown: Shutdown) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "payment gateway simulator listening");
        axum::serve(self.listener, self.router).with_graceful_shutdown(async move { shutdown.requested().await }).await
    }
}

/// Applies the injected faults before a call: waits the latency, then maybe refuses.
async fn weather(state: &AppState) -> Result<(), Problem> {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.down || roll(faults.error_rate) {
        return Err(Problem::unavailable("the payment gateway is unavailable (injected fault)", 1));
    }
    Ok(())
}

fn roll(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// The answer to a call that was carried out, unless a fault loses or garbles it.
fn answer<T: Serialize>(state: &AppState, done: T) -> Response {
    let faults = state.faults();
    if roll(faults.lost_answer_rate) {
        tracing::warn!("answer lost (injected fault)");
        return Problem::unavailable("the answer was lost (injected fault)", 1).into_response();
    }
    if roll(faults.garbled_answer_rate) {
        tracing::warn!("answer garbled (injected fault)");
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "<html>upstream glitch</html>").into_response();
    }
    Json(done).into_response()
}

fn status_label(status: ChargeStatus) -> &'static str {
    match status {
        ChargeStatus::Captured => "captured",
        ChargeStatus::Declined => "declined",
        ChargeStatus::Voided => "voided",
    }
}

async fn charge(
    State(state): State<AppState>,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    weather(&state).await?;
    let charge = state.ledger().charge(request).map_err(problem)?;
    tracing::info!(charge_id = %charge.charge_id, status = ?charge.status, "charge");
    metrics::counter!("gateway_charges_total", "status" => status_label(charge.status)).increment(1);
    Ok(answer(&state, charge))
}

async fn void(
    State(state): State<AppState>,
    body: Result<Json<VoidRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    weather(&state).await?;
    let charge = state.ledger().void(request).map_err(problem)?;
    tracing::info!(charge_id = %charge.charge_id, status = ?charge.status, "void");
    metrics::counter!("gateway_voids_total", "status" => status_label(charge.status)).increment(1);
    Ok(answer(&state, charge))
}

async fn refund(
    State(state): State<AppState>,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body?;
    weather(&state).await?;
    let refund = state.ledger().refund(request).map_err(problem)?;
    tracing::info!(refund_id = %refund.refund_id, charge_id = %refund.charge_id, "refund");
    Ok(answer(&state, refund))
}

fn problem(error: LedgerError) -> Problem {
    let detail = error.to_string();
    match error {
        LedgerError::UnknownCharge(_) => Problem::not_found(detail),
        LedgerError::NotCaptured(_) => Problem::conflict(detail),
        LedgerError::KeyReused(_) | LedgerError::Invalid(..) | LedgerError::TooMuch { .. } => {
            Problem::validation(vec![]).with_detail(detail)
        }
    }
}

async fn ledger(State(state): State<AppState>) -> Json<Totals> {
    Json(state.ledger().totals())
}

async fn charges(State(state): State<AppState>) -> Json<Vec<KeyedCharge>> {
    Json(state.ledger().charges())
}

async fn get_faults(State(state): State<AppState>) -> Json<Faults> {
    Json(state.faults())
}

async fn put_faults(
    State(state): State<AppState>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Result<StatusCode, Problem> {
    let Json(faults) = body?;
    if let Some(rate) = faults.bad_rate() {
        return Err(Problem::validation(vec![]).with_detail(format!("{rate} must be between 0 and 1")));
    }
    tracing::warn!(?faults, "injected faults changed");
    *state.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    Ok(StatusCode::NO_CONTENT)
}
