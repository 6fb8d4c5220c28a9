//! `relay`: publishes every event of the log to NATS JetStream, until SIGTERM.

use anyhow::Context;
use relay::{App, Config};
use service_kit::{telemetry, Shutdown};

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = telemetry::init("relay", &config.common.log_level, config.common.log_format);
    let app = App::build(config).await.context("the relay cannot start")?;
    app.run_until(Shutdown::on_signal()).await?;
    Ok(())
}
