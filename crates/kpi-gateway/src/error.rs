//! The gateway's error type: what can stop `run` or fail a subscription.

/// Why the gateway could not start, serve, or subscribe to a topic.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Settings that make no sense; reported before anything is bound.
    #[error("invalid gateway settings: {0}")]
    Config(String),
    /// The bus refused or failed an operation (worth retrying).
    #[error(transparent)]
    Bus(#[from] kpi_bus::BusError),
    /// The HTTP server failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// Every topic this gateway may hold is watched by someone.
    #[error("this gateway follows {max} topics, its limit; retry later or on another gateway")]
    TopicLimit { max: usize },
    /// The gateway is shutting down and takes no new subscriptions.
    #[error("gateway is shutting down")]
    ShuttingDown,
}
