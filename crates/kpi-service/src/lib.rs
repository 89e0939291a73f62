//! The skeleton every kpistream service shares: typed config errors, connect-with-retry, one shutdown and drain, audit, token bucket, logging, metrics and health routes, and the route table every router is built with.

pub mod audit;
pub mod bus_args;
pub mod config;
pub mod connect;
pub mod drain;
pub mod health;
pub mod routes;
pub mod shutdown;
pub mod telemetry;
pub mod token_bucket;

pub use audit::{Audit, Who};
pub use bus_args::BusArgs;
pub use config::ConfigError;
pub use connect::{connect_bus, ConnectError, CONNECT_PATIENCE};
pub use drain::{drain, Drained};
pub use health::{ops_routes, Readiness};
pub use routes::{Endpoint, Method, Routes};
pub use shutdown::Shutdown;
pub use token_bucket::TokenBucket;
