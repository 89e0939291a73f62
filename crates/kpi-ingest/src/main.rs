//! The `kpi-ingest` binary: flags, NATS connection, listeners, signals; the work is in the library.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kpi_bus::{Bus, BusConfig};
use kpi_ingest::Config;
use kpi_service::Shutdown;

/// How long to keep trying NATS at startup, so ingest may start before it.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    kpi_service::telemetry::init_logging();
    config.validate().context("invalid configuration")?;

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();

    let bus = tokio::select! {
        bus = connect(&config.nats_url, config.bus_config()) => bus?,
        () = shutdown.recv() => return Ok(()),
    };

    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;

    let settings = config.settings();
    let grace = settings.drain_grace;
    kpi_ingest::run(grpc, http, bus, settings, shutdown.clone()).await?;
    if !shutdown.wait_idle(grace).await {
        tracing::warn!("some publish streams were still open after the drain grace period");
    }
    Ok(())
}

/// Connects with exponential backoff for up to [`CONNECT_PATIENCE`].
async fn connect(url: &str, config: BusConfig) -> anyhow::Result<Bus> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match Bus::connect_nats(url, config.clone()).await {
            Ok(bus) => {
                tracing::info!(%url, "connected to NATS");
                return Ok(bus);
            }
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(%url, error = %e, retry_in_ms = delay.as_millis() as u64, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("connecting to NATS at {url} (gave up after {CONNECT_PATIENCE:?})")
                })
            }
        }
    }
}
