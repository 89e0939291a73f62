//! `kpi-aggregator`: reads its settings, connects to NATS, runs until SIGTERM.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kpi_aggregator::config::Cli;
use kpi_service::{connect_bus, Drained, Shutdown, CONNECT_PATIENCE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    // Typed and checked before any port is bound or NATS is dialled.
    let settings = cli.settings().context("invalid configuration")?;
    let bus_config = cli.bus.config().context("invalid configuration")?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Some(bus) = connect_bus(&cli.nats_url, bus_config, CONNECT_PATIENCE, &shutdown).await?
    else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let drain = Duration::from_secs(cli.drain_secs);
    let run = kpi_aggregator::run(Some(listener), bus, settings, shutdown.clone());
    match kpi_service::drain(&shutdown, drain, run).await {
        Drained::Finished(r) | Drained::TasksLeft(r) => r?,
        Drained::GraceOver => anyhow::bail!("drain did not finish within {drain:?}"),
    }
    Ok(())
}
