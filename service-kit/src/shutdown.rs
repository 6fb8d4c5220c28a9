//! Shutting down: one [`Shutdown`] that every task of a process watches
//! (tokio-rs/mini-redis `src/shutdown.rs`). It is requested by a signal
//! (SIGTERM, Ctrl-C), by a [`Trigger`], or when a future completes (tests),
//! and every clone sees it.

use std::future::Future;

use tokio::sync::watch;

/// Whether the process is shutting down, and a way to wait until it is.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

/// Requests the shutdown of its [`Shutdown`]'s clones: when fired, or when dropped.
#[derive(Debug)]
pub struct Trigger {
    sender: watch::Sender<bool>,
}

impl Trigger {
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// A shutdown requested through the returned trigger.
    pub fn new() -> (Trigger, Shutdown) {
        let (sender, requested) = watch::channel(false);
        (Trigger { sender }, Shutdown { requested })
    }

    /// Requested on SIGTERM or Ctrl-C (SIGINT).
    pub fn on_signal() -> Shutdown {
        Self::when(signal())
    }

    /// Requested when `future` completes.
    pub fn when(future: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            future.await;
            trigger.fire();
        });
        shutdown
    }

    /// Never requested (a test that drops the process's tasks itself).
    pub fn never() -> Shutdown {
        Self::when(std::future::pending())
    }

    pub fn is_requested(&self) -> bool {
        *self.requested.borrow() || self.requested.has_changed().is_err()
    }

    /// Completes once the shutdown is requested (at once if it was).
    pub async fn requested(&self) {
        let mut requested = self.requested.clone();
        // An error means the trigger is gone: that is a request too.
        let _ = requested.wait_for(|requested| *requested).await;
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_request_whether_fired_or_dropped() {
        let (trigger, shutdown) = Shutdown::new();
        let clone = shutdown.clone();
        assert!(!clone.is_requested());
        trigger.fire();
        clone.requested().await;
        assert!(shutdown.is_requested());

        let (trigger, shutdown) = Shutdown::new();
        drop(trigger);
        shutdown.requested().await;
        assert!(shutdown.is_requested());
    }
}
