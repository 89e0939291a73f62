//! The standalone `kpi-gateway` binary: flags, NATS, listen, serve until SIGTERM.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kpi_bus::{Bus, BusConfig};
use kpi_gateway::Cli;
use kpi_service::Shutdown;

/// How long to keep retrying NATS at startup (it may start after us).
const CONNECT_FOR: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    let settings = cli.settings();
    settings.validate()?;
    let config = cli
        .bus
        .config()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let bus = connect(&cli.nats_url, config).await?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    kpi_gateway::run(listener, bus, settings, shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn connect(url: &str, config: BusConfig) -> anyhow::Result<Bus> {
    let deadline = tokio::time::Instant::now() + CONNECT_FOR;
    let mut backoff = Duration::from_millis(200);
    loop {
        match Bus::connect_nats(url, config.clone()).await {
            Ok(bus) => return Ok(bus),
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in = ?backoff, "NATS not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to NATS"),
        }
    }
}
