//! Helpers shared by the aggregator's integration tests.

use kpi_aggregator::{run, AggregatorSettings};
use kpi_bus::Bus;
use kpi_service::Shutdown;

/// Runs the aggregator on `bus` in a task; trigger the shutdown and await
/// the handle to stop it (stopping also checkpoints).
pub async fn start(
    bus: &Bus,
    settings: AggregatorSettings,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let sd = Shutdown::new();
    let h = tokio::spawn({
        let (bus, sd) = (bus.clone(), sd.clone());
        async move { run(None, bus, settings, sd).await.expect("aggregator runs") }
    });
    (sd, h)
}
