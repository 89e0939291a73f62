//! The bus layout flags every binary shares, so all services of a deployment describe the streams alike.

use std::time::Duration;

use kpi_bus::BusConfig;

use crate::ConfigError;

/// Whichever service starts first creates the streams, so every service must
/// take the same layout and retention flags; defining them once guarantees
/// the same names, defaults and checks everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// Aggregator partitions; must match every other service of the deployment.
    #[arg(long, env = "KPI_PARTITIONS", default_value_t = 4)]
    pub partitions: u32,
    /// JetStream replicas of the streams (1 on one server, 3 on a cluster; at most 5).
    #[arg(long, env = "KPI_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// A repeated event_id within this many seconds is stored once.
    #[arg(long, env = "KPI_DUPLICATE_WINDOW_SECS", default_value_t = 600)]
    pub duplicate_window_secs: u64,
    /// How long events are kept; the aggregator replays from its checkpoint within this.
    #[arg(long, env = "KPI_EVENTS_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub events_max_age_secs: u64,
    /// Stored updates kept per KPI and period (the aggregator stores some of
    /// its updates: see its --store-interval-ms), for gateways taking a KPI up.
    #[arg(long, env = "KPI_UPDATES_PER_TOPIC", default_value_t = 256)]
    pub updates_per_topic: i64,
    /// Closed buckets kept per KPI and period, for `/history`.
    #[arg(long, env = "KPI_HISTORY_PER_TOPIC", default_value_t = 1500)]
    pub history_per_topic: i64,
    /// Bytes the event stream may hold; when full, new events are refused.
    #[arg(long, env = "KPI_EVENTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub events_max_bytes: i64,
    /// Bytes of stored updates (oldest dropped first).
    #[arg(long, env = "KPI_UPDATES_MAX_BYTES", default_value_t = 256 << 20)]
    pub updates_max_bytes: i64,
    /// Bytes of closed-bucket history (oldest dropped first).
    #[arg(long, env = "KPI_HISTORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub history_max_bytes: i64,
    /// Bytes of checkpoints; must exceed twice the largest partition's state.
    #[arg(long, env = "KPI_CHECKPOINTS_MAX_BYTES", default_value_t = 256 << 20)]
    pub checkpoints_max_bytes: i64,
}

pub const MAX_PARTITIONS: u32 = 1024;
pub const MAX_REPLICAS: usize = 5;
/// Below this a stream could not hold even one large checkpoint part.
pub const MIN_STREAM_BYTES: i64 = 4 << 20;

impl BusArgs {
    /// The checked configuration; the error names the flag.
    pub fn config(&self) -> Result<BusConfig, ConfigError> {
        self.check()
            .map_err(|problem| ConfigError::new("bus layout", problem))
    }

    fn check(&self) -> Result<BusConfig, String> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(format!(
                "--partitions must be 1 to {MAX_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(format!(
                "--replicas must be 1 to {MAX_REPLICAS}, got {}",
                self.replicas
            ));
        }
        if self.duplicate_window_secs == 0 {
            return Err("--duplicate-window-secs must be at least 1".into());
        }
        if self.events_max_age_secs < self.duplicate_window_secs {
            return Err(
                "--events-max-age-secs must not be shorter than the duplicate window".into(),
            );
        }
        if self.updates_per_topic < 1 || self.history_per_topic < 1 {
            return Err("--updates-per-topic and --history-per-topic must be at least 1".into());
        }
        let bytes = [
            ("--events-max-bytes", self.events_max_bytes),
            ("--updates-max-bytes", self.updates_max_bytes),
            ("--history-max-bytes", self.history_max_bytes),
            ("--checkpoints-max-bytes", self.checkpoints_max_bytes),
        ];
        if let Some((flag, _)) = bytes.iter().find(|(_, b)| *b < MIN_STREAM_BYTES) {
            return Err(format!("{flag} must be at least {MIN_STREAM_BYTES}"));
        }
        Ok(BusConfig {
            partitions: self.partitions,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            events_max_age: Duration::from_secs(self.events_max_age_secs),
            updates_per_topic: self.updates_per_topic,
            history_per_topic: self.history_per_topic,
            replicas: self.replicas,
            events_max_bytes: self.events_max_bytes,
            updates_max_bytes: self.updates_max_bytes,
            history_max_bytes: self.history_max_bytes,
            checkpoints_max_bytes: self.checkpoints_max_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bus: BusArgs,
    }

    fn parse(args: &[&str]) -> Result<BusConfig, String> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .bus
            .config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_bus_defaults() {
        let c = parse(&[]).expect("defaults are valid");
        let d = BusConfig::default();
        assert_eq!(
            (c.partitions, c.replicas, c.updates_per_topic),
            (d.partitions, d.replicas, d.updates_per_topic)
        );
        assert_eq!(
            (c.duplicate_window, c.events_max_age, c.history_per_topic),
            (d.duplicate_window, d.events_max_age, d.history_per_topic)
        );
        assert_eq!(
            (c.events_max_bytes, c.updates_max_bytes),
            (d.events_max_bytes, d.updates_max_bytes)
        );
        assert_eq!(
            (c.history_max_bytes, c.checkpoints_max_bytes),
            (d.history_max_bytes, d.checkpoints_max_bytes)
        );
    }

    #[test]
    fn refuses_layouts_that_cannot_work() {
        for bad in [
            &["--partitions", "0"][..],
            &["--replicas", "6"],
            &["--duplicate-window-secs", "0"],
            &["--events-max-age-secs", "10"],
            &["--updates-per-topic", "0"],
            &["--events-max-bytes", "1000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
