//! The `kpi-ingest` binary: flags, NATS connection, listeners, signals; the work is in the library.

use anyhow::Context;
use clap::Parser;
use kpi_ingest::Config;
use kpi_service::{connect_bus, Shutdown, CONNECT_PATIENCE};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    kpi_service::telemetry::init_logging();
    // Typed and checked before any port is bound or NATS is dialled.
    let settings = config.settings().context("invalid configuration")?;
    let bus_config = config.bus_config().context("invalid configuration")?;

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let Some(bus) = connect_bus(&config.nats_url, bus_config, CONNECT_PATIENCE, &shutdown).await?
    else {
        return Ok(());
    };

    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;
    kpi_ingest::run(grpc, http, bus, settings, shutdown).await?;
    Ok(())
}
