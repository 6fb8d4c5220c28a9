//! Connecting to NATS (feature `nats`).

/// Connects to `url`; while the server is not up yet, keeps trying in the
/// background instead of failing (the caller is not ready until it connects).
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url).await
}

pub mod dead_letters;
