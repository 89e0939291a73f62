//! The aggregator: turns each partition's event log into per-bucket aggregates and coalesced updates.
//!
//! One [`worker`] per owned partition reads that partition's events in log
//! order, applies them to a [`state::PartitionState`], publishes what changed
//! every coalescing interval and checkpoints the state together with the log
//! position it covers. Restarting loads the checkpoint and replays only what
//! follows, so no acknowledged event is lost or counted twice.

pub mod config;
pub mod dedupe;
pub mod interest;
pub mod metrics;
pub mod server;
pub mod state;
pub mod store_policy;
pub mod threshold;
pub mod worker;

pub use config::{AggregatorArgs, AggregatorSettings, Lateness};
pub use server::{http_route_table, run, AggregatorError};
pub use threshold::ThresholdPolicy;
