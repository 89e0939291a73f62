//! Runtime plumbing every kpistream service shares: one shutdown signal, logging, metrics and health routes.

pub mod health;
pub mod shutdown;
pub mod telemetry;

pub use health::{ops_router, Readiness};
pub use shutdown::Shutdown;
