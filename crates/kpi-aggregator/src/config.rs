//! The aggregator's settings: command line and environment, validated before anything starts.

use std::time::Duration;

use kpi_core::Period;
pub use kpi_service::ConfigError;

/// `--store-interval-ms` when not given (NATS: one stored update per topic per second).
pub const DEFAULT_STORE_INTERVAL_MS: u64 = 1000;

/// How late (by ingest receive time, after the bucket's end) an event may
/// still change its bucket, per period.
#[derive(Debug, Clone, Copy)]
pub struct Lateness {
    pub minute: Duration,
    pub hour: Duration,
    pub day: Duration,
    /// An event whose time is further than this from its receive time is
    /// not applied. [`crate::run`] sets it to half the bus's duplicate
    /// window: any two accepted copies of one event id then reach the bus
    /// less than a window apart, so the bus stores the second once.
    pub max_skew: Duration,
}

impl Lateness {
    pub fn for_period(&self, p: Period) -> Duration {
        match p {
            Period::Minute => self.minute,
            Period::Hour => self.hour,
            Period::Day => self.day,
        }
    }
}

impl Default for Lateness {
    fn default() -> Self {
        Lateness {
            minute: Duration::from_secs(120),
            hour: Duration::from_secs(600),
            day: Duration::from_secs(3600),
            max_skew: Duration::from_secs(300),
        }
    }
}

/// What [`crate::run`] needs; `kpi-stack` builds one directly.
#[derive(Debug, Clone)]
pub struct AggregatorSettings {
    /// Partitions in the deployment (must match ingest's).
    pub partitions: u32,
    /// This replica owns the partitions `p` with `p % replica_count == replica_index`.
    pub replica_index: u32,
    pub replica_count: u32,
    /// Updates of one KPI and period are published at most once per interval; zero publishes after every event.
    pub coalesce: Duration,
    /// Every update goes out live; a changing topic's update is also stored
    /// at least once per this interval (and on bucket boundaries, and every
    /// [`crate::store_policy::STORE_EVERY`] seqs); zero stores every update.
    pub store_interval: Duration,
    /// Stored updates per second this replica aims to stay under, beyond
    /// the forced ones (bucket closes and corrections, every
    /// [`crate::store_policy::STORE_EVERY`] seqs); shared by its partitions
    /// per render. Zero: no limit.
    pub max_stores_per_sec: u32,
    pub checkpoint_interval: Duration,
    pub lateness: Lateness,
    /// Per-KPI publish thresholds (default: publish every change).
    pub thresholds: crate::threshold::ThresholdPolicy,
    /// A topic that received nothing for this long (by ingest receive time)
    /// and whose buckets no event can change any more leaves memory and the
    /// checkpoint; its `seq` continues from the bus when it returns.
    pub topic_idle: Duration,
    /// Render every topic live, watched or not (for NATS subscribers that
    /// do not announce their topics); otherwise unwatched topics render
    /// only when stored.
    pub live_all: bool,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        AggregatorSettings {
            partitions: 4,
            replica_index: 0,
            replica_count: 1,
            coalesce: Duration::from_millis(100),
            store_interval: Duration::from_millis(1000),
            max_stores_per_sec: 5000,
            checkpoint_interval: Duration::from_secs(1),
            lateness: Lateness::default(),
            thresholds: Default::default(),
            topic_idle: Duration::from_secs(3600),
            live_all: false,
        }
    }
}

impl AggregatorSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.partitions == 0 || self.partitions > kpi_service::bus_args::MAX_PARTITIONS {
            return Err(ConfigError::new(
                "--partitions",
                format!(
                    "must be between 1 and {}",
                    kpi_service::bus_args::MAX_PARTITIONS
                ),
            ));
        }
        if self.replica_count == 0 || self.replica_index >= self.replica_count {
            return Err(ConfigError::new(
                "--replica-index",
                format!(
                    "replica index {} is not below replica count {}",
                    self.replica_index, self.replica_count
                ),
            ));
        }
        if self.replica_count > self.partitions {
            return Err(ConfigError::new(
                "--replica-count",
                "more replicas than partitions: some would own nothing",
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return Err(ConfigError::new("--checkpoint-ms", "must be positive"));
        }
        if self.topic_idle.is_zero() {
            return Err(ConfigError::new("--topic-idle-secs", "must be positive"));
        }
        Ok(())
    }

    /// The store policy of one partition worker: its share of
    /// `max_stores_per_sec` per render (one render per coalescing interval).
    pub fn store_policy(&self) -> crate::store_policy::StorePolicy {
        let policy = crate::store_policy::StorePolicy::new(self.store_interval);
        if self.max_stores_per_sec == 0 {
            return policy;
        }
        let owned = self.owned_partitions().len().max(1) as u128;
        let per_render_ms = self.coalesce.max(Duration::from_millis(1)).as_millis();
        let budget = u128::from(self.max_stores_per_sec) * per_render_ms / 1000 / owned;
        policy.with_budget(usize::try_from(budget).unwrap_or(usize::MAX))
    }

    /// The partitions this replica owns.
    pub fn owned_partitions(&self) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| p % self.replica_count == self.replica_index)
            .collect()
    }
}

/// Command line of the `kpi-aggregator` binary: its listener and bus, then [`AggregatorArgs`].
#[derive(Debug, clap::Parser)]
#[command(name = "kpi-aggregator", version, about = "kpistream aggregator")]
pub struct Cli {
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "KPI_LISTEN", default_value = "0.0.0.0:9102")]
    pub listen: std::net::SocketAddr,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: String,
    /// Stream layout and retention, shared by every service.
    #[command(flatten)]
    pub bus: kpi_service::BusArgs,
    /// Seconds to finish in-flight work after SIGTERM.
    #[arg(long, env = "KPI_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
    #[command(flatten)]
    pub aggregator: AggregatorArgs,
}

/// The aggregator's own flags, beyond its listener, bus and drain: what
/// `kpi-stack` flattens into its command line too.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatorArgs {
    /// This replica's index (a StatefulSet ordinal); `pod-name-3` style values are accepted.
    #[arg(long, env = "KPI_REPLICA_INDEX", default_value = "0")]
    pub replica_index: String,
    #[arg(long, env = "KPI_REPLICA_COUNT", default_value_t = 1)]
    pub replica_count: u32,
    /// Coalescing interval in milliseconds (0 = publish after every event).
    #[arg(long, env = "KPI_COALESCE_MS", default_value_t = 100)]
    pub coalesce_ms: u64,
    /// Store a changing KPI period's update at least this often, in
    /// milliseconds (every update goes out live; bucket boundaries are
    /// always stored; 0 = store every update). Default 1000; kpi-stack on
    /// its in-process bus, where a stored update costs nothing extra,
    /// defaults to 0.
    #[arg(long, env = "KPI_STORE_INTERVAL_MS")]
    pub store_interval_ms: Option<u64>,
    /// Stored updates per second to stay under, beyond bucket closes and
    /// corrections (JetStream stores a few tens of thousands a second; 0 = no limit).
    #[arg(long, env = "KPI_MAX_STORES_PER_SEC", default_value_t = 5000)]
    pub max_stores_per_sec: u32,
    /// Checkpoint at most this often, in milliseconds; longer while
    /// checkpoints are costly (at least 50 times the last one's time, at
    /// most 30 s apart).
    #[arg(long, env = "KPI_CHECKPOINT_MS", default_value_t = 1000)]
    pub checkpoint_ms: u64,
    #[arg(long, env = "KPI_LATENESS_MINUTE_SECS", default_value_t = 120)]
    pub lateness_minute_secs: u64,
    #[arg(long, env = "KPI_LATENESS_HOUR_SECS", default_value_t = 600)]
    pub lateness_hour_secs: u64,
    #[arg(long, env = "KPI_LATENESS_DAY_SECS", default_value_t = 3600)]
    pub lateness_day_secs: u64,
    /// Publish thresholds, e.g. `pending_approvals=2%,fx_*=0.01` (default: every change).
    #[arg(long, env = "KPI_THRESHOLDS", default_value = "")]
    pub thresholds: String,
    /// A KPI period silent this long (and final) leaves memory; its seq continues when it returns.
    #[arg(long, env = "KPI_TOPIC_IDLE_SECS", default_value_t = 3600)]
    pub topic_idle_secs: u64,
    /// Render every KPI period live, whether or not a gateway announced it
    /// as watched (for subscribers to `kpi.updates.>` that do not announce
    /// on `kpi.interest`). Unwatched ones otherwise render only when stored.
    #[arg(long, env = "KPI_LIVE_ALL")]
    pub live_all: bool,
}

impl Cli {
    pub fn settings(&self) -> Result<AggregatorSettings, ConfigError> {
        self.aggregator.settings(&self.bus)
    }
}

impl AggregatorArgs {
    /// The checked settings; the partition count comes from the bus layout.
    pub fn settings(&self, bus: &kpi_service::BusArgs) -> Result<AggregatorSettings, ConfigError> {
        let s = AggregatorSettings {
            partitions: bus.partitions,
            replica_index: parse_ordinal(&self.replica_index)
                .map_err(|e| ConfigError::new("--replica-index", e))?,
            replica_count: self.replica_count,
            coalesce: Duration::from_millis(self.coalesce_ms),
            store_interval: Duration::from_millis(
                self.store_interval_ms.unwrap_or(DEFAULT_STORE_INTERVAL_MS),
            ),
            max_stores_per_sec: self.max_stores_per_sec,
            checkpoint_interval: Duration::from_millis(self.checkpoint_ms),
            lateness: Lateness {
                minute: Duration::from_secs(self.lateness_minute_secs),
                hour: Duration::from_secs(self.lateness_hour_secs),
                day: Duration::from_secs(self.lateness_day_secs),
                max_skew: bus.config()?.duplicate_window / 2,
            },
            thresholds: crate::threshold::ThresholdPolicy::parse(&self.thresholds)
                .map_err(|e| ConfigError::new("--thresholds", e))?,
            topic_idle: Duration::from_secs(self.topic_idle_secs),
            live_all: self.live_all,
        };
        s.validate()?;
        Ok(s)
    }
}

/// `3` or `kpi-aggregator-3` (a StatefulSet pod name) -> 3.
pub fn parse_ordinal(raw: &str) -> Result<u32, String> {
    let digits = raw.rsplit('-').next().unwrap_or(raw);
    digits
        .parse()
        .map_err(|_| format!("replica index {raw:?} is neither a number nor ends in -<number>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_from_pod_names() {
        assert_eq!(parse_ordinal("2"), Ok(2));
        assert_eq!(parse_ordinal("kpi-aggregator-7"), Ok(7));
        assert!(parse_ordinal("kpi-aggregator").is_err());
    }

    #[test]
    fn replicas_own_disjoint_covering_partitions() {
        let mut seen = vec![];
        for i in 0..3 {
            let s = AggregatorSettings {
                partitions: 8,
                replica_index: i,
                replica_count: 3,
                ..Default::default()
            };
            seen.extend(s.owned_partitions());
        }
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
    }
}
