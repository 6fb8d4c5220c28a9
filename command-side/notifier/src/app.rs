//! The notifier process: a worker (see `relay::worker`) serving health and
//! metrics on `NOTIFIER_OPS_ADDR`, with one durable consumer per milestone
//! event that records deliveries, the dispatcher that sends them, and a
//! janitor that forgets finished ones after `NOTIFY_KEEP`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use relay::worker::{Connections, StartupError, Worker};
use saga::consumer::{self, Subscription};
use saga::SagaError;
use service_kit::personal_data::Vault;
use service_kit::{supervise, Shutdown};
use tokio::sync::Notify;

use crate::dispatch::Dispatcher;
use crate::record::Recorder;
use crate::send::{Mailer, WebhookSender};
use crate::{outbox, Config};

/// The events the notifier hears: an order's milestones.
pub const MILESTONES: [(&str, &str); 4] =
    [("order", "OrderConfirmed"), ("order", "OrderRejected"), ("order", "OrderCancelled"), ("order", "OrderShipped")];

/// How often finished deliveries older than `NOTIFY_KEEP` are forgotten.
const JANITOR_EVERY: Duration = Duration::from_secs(3600);

pub struct App {
    config: Config,
    worker: Worker,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let ops = (config.ops_addr, "NOTIFIER_OPS_ADDR");
        let worker = Worker::connect(&config.common, &config.nats_url, ops).await?;
        Ok(Self { config, worker })
    }

    /// Records and sends until `shutdown`.
    pub async fn run_until(self, shutdown: Shutdown) -> Result<(), SagaError> {
        let (Connections { pool, store, nats }, ops) = self.worker.serve_ops(shutdown.clone());
        let config = self.config;
        let js = jetstream::new(nats);
        relay::ensure_stream(&js, &config.deliveries.events).await?;
        saga::ensure_dead_letter_stream(&js, &config.deliveries).await?;
        let vault = Vault::new(pool.clone(), config.master_keys.clone());
        let wake = Arc::new(Notify::new());
        let mailer = config.smtp.as_ref().map(|smtp| {
            let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp.url.expose())
                .expect("SMTP_URL was checked at start-up")
                .timeout(Some(config.dispatch.timeout))
                .build();
            Mailer::new(transport, smtp.from.clone())
        });
        match &config.smtp {
            Some(smtp) => tracing::info!(from = %smtp.from, "e-mail on"),
            None => tracing::warn!("SMTP_URL is not set: no e-mail is sent, only webhooks"),
        }
        let recorder =
            Recorder { store, pool: pool.clone(), vault: vault.clone(), email: mailer.is_some(), wake: wake.clone() };
        let webhooks = WebhookSender::new(config.url_policy.clone(), config.dispatch.timeout);
        let dispatcher =
            Arc::new(Dispatcher::new(pool.clone(), vault, webhooks, mailer, config.dispatch.clone(), wake));

        let mut tasks = tokio::task::JoinSet::new();
        for event in MILESTONES {
            let subscription = Subscription {
                start: config.start,
                ..Subscription::new("notifications", event, config.consumer_concurrency)
            };
            let (js, recorder, deliveries, shutdown) =
                (js.clone(), recorder.clone(), config.deliveries.clone(), shutdown.clone());
            tasks.spawn(async move {
                supervise(&subscription.name, &shutdown, Duration::from_secs(1), || {
                    consumer::consume(&js, &deliveries, &subscription, &recorder, &shutdown)
                })
                .await;
            });
        }
        tasks.spawn(dispatcher.run(shutdown.clone()));
        let (janitor_pool, keep, janitor_shutdown) = (pool, config.keep, shutdown.clone());
        tasks.spawn(async move {
            loop {
                match outbox::forget_finished(&janitor_pool, keep, 1000).await {
                    Ok(0) => {}
                    Ok(forgotten) => tracing::info!(forgotten, "finished deliveries forgotten"),
                    Err(error) => tracing::warn!(%error, "cannot forget finished deliveries"),
                }
                tokio::select! {
                    () = tokio::time::sleep(JANITOR_EVERY) => {}
                    () = janitor_shutdown.requested() => return,
                }
            }
        });
        tracing::info!(stream = %config.deliveries.events.stream, "notifier running");
        while tasks.join_next().await.is_some() {}
        let _ = ops.await;
        tracing::info!("notifier stopped");
        Ok(())
    }
}
