//! The dispatcher: sends what the deliveries' table holds as due, as it
//! comes due. Each attempt leases its delivery (a notifier that dies
//! mid-attempt leaves it to be sent again, with the same id, once the lease
//! is over: at most one duplicate). Failures are retried with exponential
//! backoff and jitter (`backon`) until `NOTIFY_RETRY_FOR` after the event,
//! then the delivery is dead, listed with its attempts. Each recipient (a
//! webhook endpoint, the SMTP server) has its own circuit breaker
//! (`failsafe`) and at most `NOTIFY_PER_RECIPIENT` attempts in flight, so a
//! dead endpoint takes a few slots for a few seconds, not the notifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use service_kit::personal_data::{Opened, Vault};
use service_kit::Shutdown;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::outbox::{self, Attempted, Due, Next};
use crate::record::ERASED;
use crate::send::{Mailer, Sent, WebhookSender};

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// `NOTIFY_CONCURRENCY`: attempts in flight at once, all recipients.
    pub concurrency: usize,
    /// `NOTIFY_PER_RECIPIENT`: attempts in flight to one endpoint (or the SMTP server).
    pub per_recipient: usize,
    /// `NOTIFY_RETRY_FOR`: how long after its event a delivery is retried before it is dead.
    pub retry_for: Duration,
    /// `NOTIFY_RETRY_MIN`, `NOTIFY_RETRY_MAX`: the first pause after a failure, and the longest.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// `NOTIFY_BREAKER_FAILURES`: consecutive failures that open a recipient's breaker.
    pub breaker_failures: u32,
    /// `NOTIFY_BREAKER_OPEN`: how long it stays open before one attempt may try.
    pub breaker_open: Duration,
    /// `WEBHOOK_TIMEOUT`: longest attempt (SMTP too).
    pub timeout: Duration,
    /// How often due deliveries are looked for when nothing wakes the dispatcher.
    pub poll: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            per_recipient: 4,
            retry_for: Duration::from_secs(24 * 3600),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
        }
    }
}

impl DispatchConfig {
    /// How long an attempt holds its delivery: its timeout and a margin.
    fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(10)
    }

    /// When to try again after `attempt` failed attempts, or `None` once
    /// that would be past `retry_for` after the delivery was recorded.
    pub fn retry_at(&self, attempt: i32, created_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let pause = ExponentialBuilder::default()
            .with_min_delay(self.retry_min)
            .with_max_delay(self.retry_max)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(usize::try_from(attempt.max(1) - 1).unwrap_or(0))
            .unwrap_or(self.retry_max);
        let at = now + chrono::Duration::from_std(pause).ok()?;
        (at <= created_at + chrono::Duration::from_std(self.retry_for).ok()?).then_some(at)
    }
}

type Breaker = StateMachine<ConsecutiveFailures<Constant>, Watch>;

/// Logs and counts a recipient's breaker turning.
#[derive(Clone)]
struct Watch(Uuid);

impl Instrument for Watch {
    fn on_call_rejected(&self) {
        metrics::counter!("notifier_breaker_rejected_total").increment(1);
    }
    fn on_open(&self) {
        tracing::warn!(recipient = %self.0, "circuit breaker opened: attempts to this recipient pause");
        metrics::gauge!("notifier_breakers_open").increment(1.0);
    }
    fn on_half_open(&self) {
        tracing::info!(recipient = %self.0, "circuit breaker half-open: one attempt may try");
        metrics::gauge!("notifier_breakers_open").decrement(1.0);
    }
    fn on_closed(&self) {
        tracing::info!(recipient = %self.0, "circuit breaker closed");
    }
}

pub struct Dispatcher {
    pool: PgPool,
    vault: Vault,
    webhooks: WebhookSender,
    mailer: Option<Mailer>,
    config: DispatchConfig,
    breakers: Mutex<HashMap<Uuid, Arc<Breaker>>>,
    in_flight: Mutex<HashMap<Uuid, usize>>,
    wake: Arc<Notify>,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        vault: Vault,
        webhooks: WebhookSender,
        mailer: Option<Mailer>,
        config: DispatchConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let (breakers, in_flight) = (Mutex::default(), Mutex::default());
        Self { pool, vault, webhooks, mailer, config, breakers, in_flight, wake }
    }

    /// Sends until `shutdown`, then lets the attempts under way finish.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut attempts = JoinSet::new();
        while !shutdown.is_requested() {
            while attempts.try_join_next().is_some() {}
            let free = slots.available_permits();
            let claimed = if free == 0 { Ok(Vec::new()) } else { self.claim(free).await };
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the due deliveries; trying again");
                    self.pause(&shutdown).await;
                    continue;
                }
            };
            let more = free > 0 && claimed.len() == free;
            for due in claimed {
                let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
                let this = self.clone();
                attempts.spawn(async move {
                    let recipient = due.recipient();
                    this.deliver(due).await;
                    this.release(recipient);
                    drop(slot);
                    this.wake.notify_one();
                });
            }
            if !more {
                self.pause(&shutdown).await;
            }
        }
        while attempts.join_next().await.is_some() {}
    }

    async fn pause(&self, shutdown: &Shutdown) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(self.config.poll) => {}
            () = shutdown.requested() => {}
        }
    }

    /// Leases up to `free` due deliveries to recipients with room; the ones
    /// beyond a recipient's room are handed back at once.
    async fn claim(&self, free: usize) -> Result<Vec<Due>, sqlx::Error> {
        let busy: Vec<Uuid> = {
            let in_flight = self.in_flight.lock().expect("not poisoned");
            in_flight.iter().filter(|(_, n)| **n >= self.config.per_recipient).map(|(id, _)| *id).collect()
        };
        let claimed = outbox::claim(&self.pool, free as i64, &busy, self.config.lease()).await?;
        let mut taken = Vec::with_capacity(claimed.len());
        let mut handed_back = Vec::new();
        {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            for due in claimed {
                let n = in_flight.entry(due.recipient()).or_default();
                if *n < self.config.per_recipient {
                    *n += 1;
                    taken.push(due);
                } else {
                    handed_back.push(due.delivery_id);
                }
            }
        }
        for id in handed_back {
            outbox::postpone(&self.pool, id, Utc::now()).await?;
        }
        Ok(taken)
    }

    fn release(&self, recipient: Uuid) {
        let mut in_flight = self.in_flight.lock().expect("not poisoned");
        if let Some(n) = in_flight.get_mut(&recipient) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&recipient);
            }
        }
    }

    fn breaker(&self, recipient: Uuid) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().expect("not poisoned");
        breakers
            .entry(recipient)
            .or_insert_with(|| {
                let policy = failure_policy::consecutive_failures(
                    self.config.breaker_failures,
                    backoff::constant(self.config.breaker_open),
                );
                Arc::new(failsafe::Config::new().failure_policy(policy).instrument(Watch(recipient)).build())
            })
            .clone()
    }

    /// One attempt at one delivery, and its record.
    async fn deliver(&self, due: Due) {
        let span = tracing::info_span!("delivery", delivery_id = %due.delivery_id, channel = %due.channel,
            event_type = %due.event_type, correlation_id = %due.correlation_id, attempt = due.attempts + 1);
        self.attempt(due).instrument(span).await;
    }

    async fn attempt(&self, due: Due) {
        let breaker = self.breaker(due.recipient());
        if !breaker.is_call_permitted() {
            let until = Utc::now() + chrono::Duration::from_std(self.config.breaker_open).unwrap_or_default();
            tracing::debug!("the recipient's breaker is open; postponed");
            self.record(&due, None, &Next::RetryAt(until), "postponed").await;
            return;
        }
        let at = Utc::now();
        let started = Instant::now();
        let sent = match due.channel.as_str() {
            "webhook" => self.webhooks.send(&due).await,
            _ => match self.recipient_address(&due).await {
                Ok(Some(address)) => match &self.mailer {
                    Some(mailer) => mailer.send(&due, &address).await,
                    None => Sent::Failed { status_code: None, error: "SMTP_URL is not set".into(), permanent: false },
                },
                Ok(None) => {
                    self.record(&due, None, &Next::Skipped(ERASED.into()), "skipped").await;
                    return;
                }
                Err(error) => Sent::Failed { status_code: None, error, permanent: false },
            },
        };
        let latency = started.elapsed();
        metrics::histogram!("notifier_attempt_seconds", "channel" => channel(&due)).record(latency.as_secs_f64());
        let (attempted, next, outcome) = match sent {
            Sent::Taken { status_code } => {
                breaker.on_success();
                tracing::info!(?status_code, latency_ms = latency.as_millis() as u64, "delivered");
                (Attempted { at, status_code, latency, error: None }, Next::Delivered, "delivered")
            }
            Sent::Failed { status_code, error, permanent } => {
                breaker.on_error();
                let next = match self.config.retry_at(due.attempts + 1, due.created_at, Utc::now()) {
                    Some(at) if !permanent => Next::RetryAt(at),
                    _ if permanent => Next::Dead(error.clone()),
                    _ => Next::Dead(format!(
                        "{error} (gave up after {} attempts: NOTIFY_RETRY_FOR is {})",
                        due.attempts + 1,
                        humantime::format_duration(self.config.retry_for)
                    )),
                };
                let outcome = if matches!(next, Next::Dead(_)) { "dead" } else { "retried" };
                tracing::warn!(?status_code, %error, outcome, "attempt failed");
                (Attempted { at, status_code, latency, error: Some(error) }, next, outcome)
            }
        };
        self.record(&due, Some(&attempted), &next, outcome).await;
    }

    /// The address of an e-mail, opened from its sealed form now: `None` if
    /// the customer was erased meanwhile.
    async fn recipient_address(&self, due: &Due) -> Result<Option<String>, String> {
        let (Some(key_id), Some(sealed)) = (due.recipient_key_id, &due.recipient_sealed) else {
            return Err("the e-mail has no recipient".into());
        };
        match self.vault.open(key_id, sealed).await.map_err(|e| e.to_string())? {
            Opened::Clear(address) => Ok(Some(address)),
            Opened::Erased => Ok(None),
            Opened::Unreadable => Err("the recipient's address does not open with its key".into()),
        }
    }

    /// Records the attempt; a database away is asked again a few times, then
    /// the lease runs out and the delivery is attempted again (a duplicate
    /// with the same id, which receivers drop).
    async fn record(&self, due: &Due, attempted: Option<&Attempted>, next: &Next, outcome: &'static str) {
        metrics::counter!("notifier_deliveries_total", "channel" => channel(due), "outcome" => outcome).increment(1);
        for pause in [100, 500, 2000] {
            match outbox::finish(&self.pool, due.delivery_id, attempted, next).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot record the attempt; trying again");
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
        tracing::error!("the attempt is not recorded; the delivery is attempted again after its lease");
    }
}

fn channel(due: &Due) -> &'static str {
    if due.channel == "webhook" {
        "webhook"
    } else {
        "email"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_end_after_retry_for() {
        let config = DispatchConfig::default();
        let created = Utc::now();
        let first = config.retry_at(1, created, created).unwrap() - created;
        assert!((5..=10).contains(&first.num_seconds()), "{first}");
        let fifth = config.retry_at(5, created, created).unwrap() - created;
        assert!((80..=160).contains(&fifth.num_seconds()), "{fifth}");
        let late = config.retry_at(30, created, created).unwrap() - created;
        assert!((3600..=7200).contains(&late.num_seconds()), "capped near the maximum: {late}");
        let almost_a_day_later = created + chrono::Duration::hours(23) + chrono::Duration::minutes(59);
        assert_eq!(config.retry_at(30, created, almost_a_day_later), None);
    }
}
