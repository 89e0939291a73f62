//! Test harness shared by kpistream's integration tests: real NATS servers, spawned service binaries, HTTP probes.
//!
//! Only ever a dev-dependency. Helpers panic with a clear message instead of
//! returning errors, because a test that cannot set up its world should stop
//! right there and say why; only the HTTP probe, which callers retry, returns
//! a `Result`. A missing `nats-server` is a failure, never a skipped test:
//! a green run must mean the NATS paths were exercised.

pub mod cluster;
pub mod http;
pub mod nats;
pub mod port;
mod process;
pub mod service;
pub mod stack;

pub use cluster::{ClusterSpec, LocalCluster};
pub use http::{http_get, try_http_get, HttpError};
pub use nats::{NatsCluster, NatsServer};
pub use port::free_port;
pub use service::{bin_path, Service};
pub use stack::Stack;
