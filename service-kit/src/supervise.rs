//! The one supervisor of the system's long-running tasks (a relay, a
//! consumer, a projection): a task that ends on its own, failed or not,
//! starts again after a pause, until the process shuts down.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Runs `task` until `shutdown`; each time it ends before, logs why (`what`
/// names it) and starts it again after `pause`. The task watches `shutdown`
/// itself and ends when it is requested.
pub async fn supervise<F, Fut, E>(what: &str, shutdown: &Shutdown, pause: Duration, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    loop {
        let outcome = task().await;
        if shutdown.is_requested() {
            return;
        }
        match outcome {
            Ok(()) => tracing::warn!(task = what, ?pause, "stopped on its own; starting it again"),
            Err(error) => tracing::warn!(task = what, %error, ?pause, "failed; starting it again"),
        }
        tokio::select! {
            () = shutdown.requested() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_fails_starts_again_until_shutdown() {
        let (trigger, shutdown) = Shutdown::new();
        let runs = AtomicU32::new(0);
        supervise("test", &shutdown, Duration::from_millis(1), || async {
            if runs.fetch_add(1, Ordering::SeqCst) == 2 {
                trigger.fire();
                return Ok(());
            }
            Err("broken")
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
