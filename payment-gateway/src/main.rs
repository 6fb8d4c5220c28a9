//! `payment-gateway`: the payment gateway simulator (see the crate docs).

use anyhow::Context;
use payment_gateway::{App, Config};
use service_kit::{telemetry, Shutdown};

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _telemetry = telemetry::init("payment-gateway", &config.log_level, config.log_format);
    let addr = config.http_addr;
    let app = App::build(config).await.with_context(|| format!("cannot listen on {addr} (GATEWAY_HTTP_ADDR)"))?;
    app.run_until(Shutdown::on_signal()).await?;
    Ok(())
}
