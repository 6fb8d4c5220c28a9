//! `projections [serve]`: runs every projection, and the rebuilds requested
//! through the admin API, until SIGTERM; health and metrics on `PROJECTIONS_OPS_ADDR`.
//! `projections rebuild <name>`: rebuilds one read model now, with a progress bar.

use anyhow::anyhow;
use projections::app::{App, Command, Config};
use service_kit::{telemetry, Shutdown};

#[global_allocator]
static ALLOCATOR: service_kit::Allocator = service_kit::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::parse(std::env::args().skip(1)).map_err(|usage| anyhow!(usage))?;
    let config = Config::from_env(command)?;
    let _telemetry = telemetry::init("projections", &config.common.log_level, config.common.log_format);
    App::build(config).await?.run_until(Shutdown::on_signal()).await?;
    Ok(())
}
