//! `notifier`: e-mail and webhooks about orders' milestones, until SIGTERM.

use anyhow::Context;
use notifier::{App, Config};
use service_kit::{telemetry, Shutdown};

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = telemetry::init("notifier", &config.common.log_level, config.common.log_format);
    let app = App::build(config).await.context("the notifier cannot start")?;
    app.run_until(Shutdown::on_signal()).await?;
    Ok(())
}
