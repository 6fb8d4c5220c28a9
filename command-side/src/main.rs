//! `command-side [serve|migrate]`: the command API, or only its migrations.

use anyhow::{bail, Context};
use command_side::{App, Config};
use service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(&config.log_level, config.log_format);
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let app = App::build(config).await.context("the command API cannot start")?;
            app.run_until(shutdown::signal()).await?;
        }
        Some("migrate") => {
            command_side::migrate(&config).await?.close().await;
            tracing::info!("migrations applied");
        }
        Some(other) => bail!("unknown command {other:?}: use `serve` (the default) or `migrate`"),
    }
    Ok(())
}
