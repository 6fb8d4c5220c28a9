//! A payment gateway simulator, so the saga has a real HTTP peer to talk to.
//!
//! - `POST /v1/charges {idempotency_key, amount_cents, currency, token}`:
//!   `tok_visa` is captured, `tok_declined` is declined, any other token is
//!   declined as invalid. The same key again answers the first result and
//!   charges nothing; the same key with another body is 422.
//! - `POST /v1/refunds {idempotency_key, charge_id, amount_cents}`: gives back
//!   (part of) a captured charge, at most what is left of it; idempotent by key.
//! - `GET /v1/ledger`: what was charged and refunded, for tests and operators.
//! - `GET|PUT /admin/faults {latency_ms, error_rate, down}`: injected latency,
//!   a share of calls answered 503 (before anything is recorded), or every
//!   call refused. Start-up values come from the configuration.
//!
//! The ledger lives in memory: a restarted simulator forgets its keys.

mod config;
mod ledger;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::http::Problem;
use tokio::net::TcpListener;

pub use config::Config;
pub use ledger::{Charge, ChargeRequest, ChargeStatus, Ledger, LedgerError, Refund, RefundRequest, Totals};

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
}

#[derive(Clone, Default)]
struct AppState {
    ledger: Arc<Mutex<Ledger>>,
    faults: Arc<Mutex<Faults>>,
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
            .route("/v1/charges", post(charge))
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

    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "payment gateway simulator listening");
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown).await
    }
}

/// Applies the injected faults: waits the latency, then maybe refuses.
async fn weather(state: &AppState) -> Result<(), Problem> {
    let faults = *state.faults.lock().unwrap_or_else(PoisonError::into_inner);
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.down || (faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate) {
        return Err(Problem::unavailable("the payment gateway is unavailable (injected fault)", 1));
    }
    Ok(())
}

async fn charge(
    State(state): State<AppState>,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Result<Json<Charge>, Problem> {
    let Json(request) = body?;
    weather(&state).await?;
    let charge = state.ledger.lock().unwrap_or_else(PoisonError::into_inner).charge(request).map_err(problem)?;
    tracing::info!(charge_id = %charge.charge_id, status = ?charge.status, "charge");
    let status = match charge.status {
        ChargeStatus::Captured => "captured",
        ChargeStatus::Declined => "declined",
    };
    metrics::counter!("gateway_charges_total", "status" => status).increment(1);
    Ok(Json(charge))
}

async fn refund(
    State(state): State<AppState>,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Result<Json<Refund>, Problem> {
    let Json(request) = body?;
    weather(&state).await?;
    let refund = state.ledger.lock().unwrap_or_else(PoisonError::into_inner).refund(request).map_err(problem)?;
    tracing::info!(refund_id = %refund.refund_id, charge_id = %refund.charge_id, "refund");
    Ok(Json(refund))
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
    Json(state.ledger.lock().unwrap_or_else(PoisonError::into_inner).totals())
}

async fn get_faults(State(state): State<AppState>) -> Json<Faults> {
    Json(*state.faults.lock().unwrap_or_else(PoisonError::into_inner))
}

async fn put_faults(
    State(state): State<AppState>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Result<StatusCode, Problem> {
    let Json(faults) = body?;
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return Err(Problem::validation(vec![]).with_detail("error_rate must be between 0 and 1"));
    }
    tracing::warn!(?faults, "injected faults changed");
    *state.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    Ok(StatusCode::NO_CONTENT)
}
