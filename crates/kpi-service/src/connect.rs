//! Connecting to the bus at start-up, retried with backoff: a service may start before NATS does.

use std::time::Duration;

use kpi_bus::{Bus, BusConfig, BusError};

use crate::Shutdown;

/// How long a starting service keeps trying NATS before it gives up.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(4);

/// The bus could not be reached within the patience.
#[derive(Debug, thiserror::Error)]
#[error("connecting to NATS at {url} (gave up after {patience:?}): {source}")]
pub struct ConnectError {
    pub url: String,
    pub patience: Duration,
    #[source]
    pub source: BusError,
}

/// Connects to NATS at `url`, retrying every failure with exponential
/// backoff for up to `patience` (a JetStream cluster refuses to create
/// streams until it has elected a meta leader, so setup errors are retried
/// too). `Ok(None)` when `shutdown` fired first: the caller exits cleanly.
pub async fn connect_bus(
    url: &str,
    config: BusConfig,
    patience: Duration,
    shutdown: &Shutdown,
) -> Result<Option<Bus>, ConnectError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = FIRST_DELAY;
    loop {
        let attempt = tokio::select! {
            r = Bus::connect_nats(url, config.clone()) => r,
            () = shutdown.recv() => return Ok(None),
        };
        match attempt {
            Ok(bus) => {
                tracing::info!(%url, "connected to NATS");
                return Ok(Some(bus));
            }
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%url, error = %e, retry_in_ms = delay.as_millis() as u64, "NATS not reachable yet");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.recv() => return Ok(None),
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(source) => {
                return Err(ConnectError {
                    url: url.to_string(),
                    patience,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_after_the_patience_naming_the_url() {
        // A port nothing listens on: refused at once, so only the backoff waits.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let url = format!("nats://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let r = connect_bus(
            &url,
            BusConfig::default(),
            Duration::from_millis(700),
            &Shutdown::new(),
        )
        .await;
        let e = r.err().expect("nothing listens there");
        assert!(e.to_string().contains(&url), "{e}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "it retried"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_the_retries() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let r = connect_bus(
            "nats://127.0.0.1:1",
            BusConfig::default(),
            Duration::from_secs(60),
            &shutdown,
        )
        .await;
        assert!(matches!(r, Ok(None)));
    }
}
