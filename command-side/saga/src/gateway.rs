//! The payment gateway client: every call has a timeout, transient failures
//! are retried with exponential backoff and jitter (`backon`), and a circuit
//! breaker (`failsafe`) stops calling a gateway that keeps failing. While the
//! breaker is open a call fails at once with [`GatewayError::Unavailable`];
//! the payment participant then leaves the message to be delivered again
//! later. The gateway gets an idempotency key with every call, so a retry
//! never charges or refunds twice.
//!
//! An answer that does not come (a timeout, a 5xx, a 2xx that cannot be
//! read) leaves the call's effect unknown: the gateway may have charged. It is
//! `Unavailable`, never `Refused`: the caller asks again with the same key
//! (which answers what was done), or closes the key with [`Gateway::void`],
//! which answers the charge made under it, if any. Only a 4xx, which the
//! gateway answers without acting, is `Refused`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service_kit::config::{self, ConfigError, Source};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `PAYMENT_GATEWAY_URL`: base URL of the gateway's HTTP API.
    pub url: String,
    /// `PAYMENT_GATEWAY_TIMEOUT`: longest one call may take.
    pub timeout: Duration,
    /// `PAYMENT_GATEWAY_RETRIES`: further attempts after a transient failure.
    pub retries: usize,
    /// First retry delay; doubles up to `retry_max_delay`, with jitter.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// `PAYMENT_GATEWAY_BREAKER_FAILURES`: consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// `PAYMENT_GATEWAY_BREAKER_OPEN`: how long the breaker stays open before
    /// it lets one trial call through (half-open).
    pub breaker_open: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8090".into(),
            timeout: Duration::from_secs(2),
            retries: 3,
            retry_min_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
        }
    }
}

impl GatewayConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let url: String = config::parsed(source, "PAYMENT_GATEWAY_URL", defaults.url.clone())?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new("PAYMENT_GATEWAY_URL", url, "must be an http:// or https:// URL"));
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            timeout: config::nonzero_duration(source, "PAYMENT_GATEWAY_TIMEOUT", defaults.timeout)?,
            retries: config::ranged(source, "PAYMENT_GATEWAY_RETRIES", defaults.retries, 0, 20)?,
            breaker_failures: config::ranged(
                source,
                "PAYMENT_GATEWAY_BREAKER_FAILURES",
                defaults.breaker_failures,
                1,
                1000,
            )?,
            breaker_open: config::nonzero_duration(source, "PAYMENT_GATEWAY_BREAKER_OPEN", defaults.breaker_open)?,
            ..defaults
        })
    }
}

/// What the gateway did with a charge, or under a charge's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured {
        charge_id: String,
    },
    Declined {
        reason: String,
    },
    /// No charge was made under the key, and none ever will be (see [`Gateway::void`]).
    Voided,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// Down, slow, or the breaker is open: try again later.
    #[error("the payment gateway is unavailable: {0}")]
    Unavailable(String),
    /// The gateway refused the request itself (4xx), without acting on it:
    /// retrying will not help.
    #[error("the payment gateway refused the request: {0}")]
    Refused(String),
}

/// The breaker's state, as the metric `payment_gateway_breaker_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug, Clone, Default)]
struct BreakerWatch(Arc<AtomicU8>);

impl BreakerWatch {
    fn set(&self, state: BreakerState) {
        self.0.store(state as u8, Ordering::Relaxed);
        metrics::gauge!("payment_gateway_breaker_state").set(f64::from(state as u8));
    }
}

impl Instrument for BreakerWatch {
    fn on_call_rejected(&self) {
        metrics::counter!("payment_gateway_calls_rejected_total").increment(1);
    }
    fn on_open(&self) {
        tracing::warn!("payment gateway circuit breaker opened");
        self.set(BreakerState::Open);
    }
    fn on_half_open(&self) {
        tracing::info!("payment gateway circuit breaker half-open: trying a call");
        self.set(BreakerState::HalfOpen);
    }
    fn on_closed(&self) {
        tracing::info!("payment gateway circuit breaker closed");
        self.set(BreakerState::Closed);
    }
}

type Breaker = StateMachine<ConsecutiveFailures<Constant>, BreakerWatch>;

#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    config: GatewayConfig,
    breaker: Arc<Breaker>,
    watch: BreakerWatch,
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    idempotency_key: &'a str,
    amount_cents: u64,
    currency: &'a str,
    token: &'a str,
}

#[derive(Deserialize)]
struct ChargeAnswer {
    charge_id: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
struct VoidBody<'a> {
    idempotency_key: &'a str,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    idempotency_key: &'a str,
    charge_id: &'a str,
    amount_cents: u64,
}

#[derive(Deserialize)]
struct RefundAnswer {
    refund_id: String,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Self {
        let watch = BreakerWatch::default();
        let policy =
            failure_policy::consecutive_failures(config.breaker_failures, backoff::constant(config.breaker_open));
        let breaker = failsafe::Config::new().failure_policy(policy).instrument(watch.clone()).build();
        let http = reqwest::Client::builder().timeout(config.timeout).build().expect("a plain HTTP client builds");
        Self { http, config, breaker: Arc::new(breaker), watch }
    }

    pub fn breaker_state(&self) -> BreakerState {
        match self.watch.0.load(Ordering::Relaxed) {
            2 => BreakerState::Open,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Charges a card once per `idempotency_key`. (A gateway away is an
    /// expected state, waited out: its errors are logged as warnings.)
    #[tracing::instrument(skip_all, fields(%idempotency_key), err(level = tracing::Level::WARN))]
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_cents: u64,
        currency: &str,
        token: &str,
        correlation_id: &str,
    ) -> Result<ChargeOutcome, GatewayError> {
        let body = ChargeBody { idempotency_key, amount_cents, currency, token };
        let answer: ChargeAnswer = self.call("/v1/charges", &body, correlation_id).await?;
        answer.outcome()
    }

    /// Closes the key of a charge whose outcome is unknown (its answer was
    /// lost, or a retry may still be on its way): answers the charge made
    /// under `idempotency_key`, or `Voided` if none was, in which case none
    /// ever will be. Idempotent.
    #[tracing::instrument(skip_all, fields(%idempotency_key), err(level = tracing::Level::WARN))]
    pub async fn void(&self, idempotency_key: &str, correlation_id: &str) -> Result<ChargeOutcome, GatewayError> {
        let answer: ChargeAnswer = self.call("/v1/charges/void", &VoidBody { idempotency_key }, correlation_id).await?;
        answer.outcome()
    }

    /// Refunds (part of) a charge once per `idempotency_key`; answers the refund id.
    #[tracing::instrument(skip_all, fields(%idempotency_key, %charge_id), err(level = tracing::Level::WARN))]
    pub async fn refund(
        &self,
        idempotency_key: &str,
        charge_id: &str,
        amount_cents: u64,
        correlation_id: &str,
    ) -> Result<String, GatewayError> {
        let body = RefundBody { idempotency_key, charge_id, amount_cents };
        let answer: RefundAnswer = self.call("/v1/refunds", &body, correlation_id).await?;
        Ok(answer.refund_id)
    }

    /// One call, retried while it fails transiently and the breaker lets it through.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        correlation_id: &str,
    ) -> Result<T, GatewayError> {
        let retry = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_min_delay)
            .with_max_delay(self.config.retry_max_delay)
            .with_max_times(self.config.retries)
            .with_jitter();
        (|| self.attempt(path, body, correlation_id))
            .retry(retry)
            .when(|error| matches!(error, Attempt::Failed(_)))
            .notify(|error, delay| tracing::debug!(%path, ?delay, error = %error.message(), "payment gateway call failed; retrying"))
            .await
            .map_err(|error| match error {
                Attempt::Failed(reason) => GatewayError::Unavailable(reason),
                Attempt::BreakerOpen => GatewayError::Unavailable("the circuit breaker is open".into()),
                Attempt::Refused(reason) => GatewayError::Refused(reason),
            })
    }

    async fn attempt<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        correlation_id: &str,
    ) -> Result<T, Attempt> {
        if !self.breaker.is_call_permitted() {
            return Err(Attempt::BreakerOpen);
        }
        let started = std::time::Instant::now();
        let outcome = self.send(path, body, correlation_id).await;
        metrics::histogram!("payment_gateway_call_seconds", "path" => path.to_owned())
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Err(Attempt::Failed(_)) => self.breaker.on_error(),
            _ => self.breaker.on_success(),
        }
        outcome
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        correlation_id: &str,
    ) -> Result<T, Attempt> {
        let mut request = self.http.post(format!("{}{path}", self.config.url)).json(body);
        if !correlation_id.is_empty() {
            // The gateway's logs carry the order's correlation id too.
            request = request.header("x-correlation-id", correlation_id);
        }
        let traceparent = service_kit::telemetry::traceparent(&tracing::Span::current());
        if !traceparent.is_empty() {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| Attempt::Failed(e.to_string()))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Failed(format!("answered {status}")));
        }
        if !status.is_success() {
            let detail = response.text().await.unwrap_or_default();
            return Err(Attempt::Refused(format!("answered {status}: {detail}")));
        }
        // The gateway acted, but what it did cannot be read: unknown, as if
        // the answer were lost. Asking again with the same key tells.
        response.json().await.map_err(|e| Attempt::Failed(format!("unreadable answer: {e}")))
    }
}

impl ChargeAnswer {
    fn outcome(self) -> Result<ChargeOutcome, GatewayError> {
        match self.status.as_str() {
            "captured" => Ok(ChargeOutcome::Captured { charge_id: self.charge_id }),
            "declined" => Ok(ChargeOutcome::Declined { reason: self.reason.unwrap_or_else(|| "declined".into()) }),
            "voided" => Ok(ChargeOutcome::Voided),
            // Unknown: it may be a capture. Asked again later, never taken as a refusal.
            other => Err(GatewayError::Unavailable(format!("unknown charge status {other:?}"))),
        }
    }
}

enum Attempt {
    Failed(String),
    BreakerOpen,
    Refused(String),
}

impl Attempt {
    fn message(&self) -> &str {
        match self {
            Self::Failed(reason) | Self::Refused(reason) => reason,
            Self::BreakerOpen => "the circuit breaker is open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::config::Vars;

    #[test]
    fn gateway_settings_are_checked() {
        let config = GatewayConfig::from_source(&Vars(&[("PAYMENT_GATEWAY_URL", "http://gw:9000/")])).unwrap();
        assert_eq!(config.url, "http://gw:9000");
        for (name, value) in [
            ("PAYMENT_GATEWAY_URL", "gw:9000"),
            ("PAYMENT_GATEWAY_TIMEOUT", "0s"),
            ("PAYMENT_GATEWAY_RETRIES", "100"),
            ("PAYMENT_GATEWAY_BREAKER_FAILURES", "0"),
            ("PAYMENT_GATEWAY_BREAKER_OPEN", "never"),
        ] {
            assert_eq!(GatewayConfig::from_source(&Vars(&[(name, value)])).unwrap_err().name, name);
        }
    }

    #[tokio::test]
    async fn an_unreachable_gateway_opens_the_breaker_and_is_then_not_called() {
        // Nothing listens on port 9 (discard) here; connections are refused at once.
        let config = GatewayConfig {
            url: "http://127.0.0.1:9".into(),
            retries: 1,
            retry_min_delay: Duration::from_millis(1),
            breaker_failures: 2,
            breaker_open: Duration::from_secs(60),
            ..GatewayConfig::default()
        };
        let gateway = Gateway::new(config);
        assert_eq!(gateway.breaker_state(), BreakerState::Closed);
        let first = gateway.charge("k", 1, "EUR", "tok_visa", "corr").await;
        assert!(matches!(first, Err(GatewayError::Unavailable(_))), "{first:?}");
        assert_eq!(gateway.breaker_state(), BreakerState::Open);
        let second = gateway.charge("k", 1, "EUR", "tok_visa", "corr").await.unwrap_err();
        assert!(second.to_string().contains("circuit breaker is open"), "{second}");
    }
}
