//! Runtime plumbing every kpistream service shares: one shutdown signal, logging, metrics and health routes.

pub mod bus_args;
pub mod health;
pub mod shutdown;
pub mod telemetry;

pub use bus_args::BusArgs;
pub use health::{ops_router, Readiness};
pub use shutdown::Shutdown;
