//! The standalone `kpi-gateway` binary: flags, NATS, listen, serve until SIGTERM.

use anyhow::Context;
use clap::Parser;
use kpi_gateway::Cli;
use kpi_service::{connect_bus, Shutdown, CONNECT_PATIENCE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    let settings = cli.settings();
    settings.validate().context("invalid configuration")?;
    let config = cli.bus.config().context("invalid configuration")?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Some(bus) = connect_bus(&cli.nats_url, config, CONNECT_PATIENCE, &shutdown).await? else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    kpi_gateway::run(listener, bus, settings, shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}
