//! kpi-ingest: the gRPC server publishers call to push KPI data points into kpistream.
//!
//! Every format (gRPC [`service`], JSON and InfluxDB line protocol over
//! [`http`], OpenTelemetry metrics [`otlp`]) goes through one accept path
//! ([`accept`]): each event is validated ([`validate`]), then stored durably
//! on the bus before it is acknowledged; the `event_id` is the idempotency
//! key, so a publisher that retries after a timeout never counts an event
//! twice. [`server::run`] serves the `kpi.v1.Ingest` service with gRPC health,
//! reflection and an optional bearer token, plus `/metrics`, `/healthz` and
//! `/readyz` on a second port, and drains on shutdown.
//!
//! The binary (`src/main.rs`) only parses [`config::Config`], connects to NATS
//! and calls [`server::run`]; `kpi-stack` calls the same `run` with an
//! in-process bus.

pub mod accept;
pub mod cardinality;
pub mod config;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod publishers;
pub mod recent;
pub mod server;
pub mod service;
pub mod validate;

pub use accept::Accept;
pub use config::{Config, ConfigError, IngestArgs, IngestSettings, TlsFiles};
pub use server::{http_route_table, run, run_with};
pub use service::IngestService;

/// Why the ingest server could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid settings: {0}")]
    Config(#[from] ConfigError),
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("reading a listener's address: {0}")]
    Listener(#[source] std::io::Error),
}
