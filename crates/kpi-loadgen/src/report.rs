//! What a run measured, as JSON: latency percentiles, deliveries, server CPU and memory.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Microseconds from 1 µs to one hour, three significant digits.
pub fn new_hist() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// A histogram as (value, count) pairs, for passing between processes.
pub fn hist_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for (v, c) in pairs {
        h.saturating_record_n(*v, *c);
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One target measured under one load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `kpistream`, `plain` or `nats-ws`.
    pub target: String,
    /// How the target ran (processes, flags).
    pub setup: String,
    pub connections_wanted: usize,
    pub connections_open: u64,
    /// Connections that never opened, retries included.
    pub connect_failures: u64,
    /// Failed attempts that a retry then recovered or not (`--connect-retries`).
    #[serde(default)]
    pub connect_retries: u64,
    pub first_error: Option<String>,
    pub connect_ms: Percentiles,
    pub connect_wall_secs: f64,
    pub kpis: usize,
    pub rate_per_kpi: f64,
    pub events_published: u64,
    pub publish_errors: u64,
    pub window_secs: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// deliveries / (events published in the window x subscribers per KPI), about 1 when nothing is lost.
    pub delivery_ratio: f64,
    pub dropped_connections: u64,
    pub unparsed: u64,
    pub latency_ms: Percentiles,
    /// The latency histogram as (upper bound µs, count), for plots and merging.
    pub latency_us: Vec<(u64, u64)>,
    /// From `updated_at` to receipt: for kpistream the hop from the
    /// aggregator's render through NATS and the gateway to the client, so
    /// `latency_ms` minus this is ingest, JetStream and the aggregator. For
    /// the baselines it equals `latency_ms`.
    #[serde(default)]
    pub fanout_ms: Percentiles,
    pub per_sec: Vec<u64>,
    /// CPU seconds of the server processes (the gateway alone for kpistream split) in the window.
    pub server_cpu_secs: f64,
    /// Of every process of the target (NATS, ingest, aggregator too).
    pub total_cpu_secs: f64,
    pub loadgen_cpu_secs: f64,
    /// CPU seconds in the window per process name: the target's processes
    /// (`nats-server`, `kpi-ingest`, ...) and the loadgen's own
    /// (`kpi-loadgen`: coordinator, publisher and client workers).
    #[serde(default)]
    pub cpu_secs_by_process: std::collections::BTreeMap<String, f64>,
    pub deliveries_per_server_cpu_sec: f64,
    pub deliveries_per_total_cpu_sec: f64,
    pub server_rss_before: u64,
    pub server_rss_idle: u64,
    pub server_rss_end: u64,
    /// (idle RSS - RSS before connecting) / connections open.
    pub rss_per_idle_connection: f64,
}
