//! Limits and retention of the bus, shared by both implementations.

use std::time::Duration;

/// How the streams are laid out. Every service of one deployment must use the
/// same `partitions`; the rest only matters to whoever creates the streams.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Aggregator partitions; an event's subject carries its partition.
    pub partitions: u32,
    /// A repeated `event_id` inside this window counts once.
    pub duplicate_window: Duration,
    /// How long events are kept (they are replayed after a crash from the last checkpoint).
    pub events_max_age: Duration,
    /// Updates kept per topic for resume (`since`) and catch-up.
    pub updates_per_topic: i64,
    /// Closed buckets kept per topic for `/history`.
    pub history_per_topic: i64,
    /// JetStream replicas for every stream (1 on a laptop, 3 on a cluster).
    pub replicas: usize,
    /// Bytes the event log may hold. When full, new events are refused
    /// (never the oldest dropped: they may not be aggregated yet).
    pub events_max_bytes: i64,
    /// Bytes of stored updates; the oldest go first.
    pub updates_max_bytes: i64,
    /// Bytes of closed-bucket records; the oldest go first.
    pub history_max_bytes: i64,
    /// Bytes of checkpoints (and of the small named states).
    pub checkpoints_max_bytes: i64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            partitions: 4,
            duplicate_window: Duration::from_secs(600),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            updates_per_topic: 256,
            history_per_topic: 1500,
            replicas: 1,
            // JetStream reserves these against each server's storage
            // (`max_file_store`) when the streams are created: together
            // they fit the 2 GB of the local cluster script.
            events_max_bytes: 1 << 30,
            updates_max_bytes: 256 << 20,
            history_max_bytes: 256 << 20,
            checkpoints_max_bytes: 256 << 20,
        }
    }
}
