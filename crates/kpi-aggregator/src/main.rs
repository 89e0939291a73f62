//! `kpi-aggregator`: reads its settings, connects to NATS, runs until SIGTERM.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kpi_aggregator::config::Cli;
use kpi_bus::{Bus, BusConfig};
use kpi_service::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    let settings = cli
        .settings()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let bus_config = cli
        .bus
        .config()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let bus = connect_with_retry(&cli.nats_url, bus_config).await?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let drain = Duration::from_secs(cli.drain_secs);
    let run = kpi_aggregator::run(Some(listener), bus, settings, shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r?,
        _ = async { shutdown.recv().await; tokio::time::sleep(drain).await } => {
            anyhow::bail!("drain did not finish within {drain:?}");
        }
    }
    Ok(())
}

/// NATS may start after us (a pod restarting beside its server): retry for a while.
async fn connect_with_retry(url: &str, config: BusConfig) -> anyhow::Result<Bus> {
    let mut delay = Duration::from_millis(200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Bus::connect_nats(url, config.clone()).await {
            Ok(bus) => return Ok(bus),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(e).context("connecting to NATS"),
        }
    }
}
