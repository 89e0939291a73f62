//! Starts a worker per owned partition and the HTTP ops endpoint; drains on shutdown.

use std::time::Duration;

use kpi_bus::Bus;
use kpi_service::{ops_routes, Endpoint, Readiness, Routes, Shutdown};
use tokio::net::TcpListener;

use crate::config::AggregatorSettings;
use crate::interest::Interest;
use crate::worker::Worker;

/// The HTTP port serves only the ops routes.
fn http_routes() -> Routes<Readiness> {
    ops_routes()
}

/// The endpoints of the HTTP port (`--listen`). docs/openapi.yaml lists the same.
pub fn http_route_table() -> Vec<Endpoint> {
    http_routes().table().to_vec()
}

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("invalid settings: {0}")]
    Config(#[from] kpi_service::ConfigError),
    #[error(transparent)]
    Bus(#[from] kpi_bus::BusError),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

/// Runs the aggregator until `shutdown` fires, then finishes publishing and
/// checkpoints every partition before returning. `http` serves /metrics,
/// /healthz and /readyz (pass `None` when embedded in kpi-stack, whose gateway
/// serves them).
pub async fn run(
    http: Option<TcpListener>,
    bus: Bus,
    mut settings: AggregatorSettings,
    shutdown: Shutdown,
) -> Result<(), AggregatorError> {
    settings.validate()?;
    // No event further from its receive time than half the duplicate window
    // is applied: that keeps a retry after the window from counting twice.
    // Ingest refuses exactly these events, so none is acknowledged and lost.
    settings.lateness.max_skew = bus.config().duplicate_window / 2;
    // Install the recorder before the first event is counted; counts made
    // before it exists are lost.
    let _ = kpi_service::telemetry::prometheus();
    let bus_for_ready = bus.clone();
    let readiness = Readiness::new(move || {
        if bus_for_ready.is_connected() {
            Ok(())
        } else {
            Err("NATS disconnected".into())
        }
    });
    let interest = Interest::follow(&bus, &settings, shutdown.clone()).await;
    let mut workers = Vec::new();
    for partition in settings.owned_partitions() {
        let worker =
            Worker::load(partition, bus.clone(), settings.clone(), interest.clone()).await?;
        workers.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    readiness.set_serving(true);
    tracing::info!(partitions = ?settings.owned_partitions(), "aggregator running");

    let http_task = http.map(|listener| {
        let router = http_routes().with_state(readiness.clone()).into_router();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { sd.recv().await })
                .await
        })
    });

    shutdown.recv().await;
    readiness.set_serving(false);
    for w in workers {
        if let Err(e) = w.await {
            tracing::error!(error = %e, "partition worker panicked");
        }
    }
    if let Some(t) = http_task {
        // The ops endpoint has nothing in flight worth waiting long for.
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    Ok(())
}
