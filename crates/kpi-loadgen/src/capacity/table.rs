//! The scenario's rows and ceilings, as JSON and as Markdown tables for benches/README.md.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::step::Measured;
use crate::report::Percentiles;

/// One step of one load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRow {
    /// `kpistream` (ingest + JetStream + aggregator) or `raw` (JetStream alone).
    pub target: String,
    pub partitions: u32,
    /// Aggregator processes (raw: 0).
    pub aggregators: u32,
    pub offered_per_sec: f64,
    /// Events handed to ingest (or to JetStream) per second.
    pub sent_per_sec: f64,
    /// Events acknowledged as stored per second.
    pub stored_per_sec: f64,
    /// stored / offered.
    pub achieved: f64,
    pub refused: u64,
    pub failed: u64,
    /// kpistream: event time to the minute update's arrival on NATS (event -> render);
    /// raw: event time to its arrival at the ordered consumer.
    pub lag_ms: Percentiles,
    /// The worst lag in each second of the window: a steady climb means
    /// falling behind, isolated peaks mean stalls.
    pub lag_max_ms_by_second: Vec<f64>,
    /// Updates (kpistream, watched KPIs only) or events read back (raw) per second.
    pub read_per_sec: f64,
    pub window_secs: f64,
    pub cpu_secs_by_process: BTreeMap<String, f64>,
    /// kpistream: nats-server + kpi-ingest + kpi-aggregator; raw: nats-server.
    pub pipeline_cpu_secs: f64,
    pub pipeline_cpu_us_per_event: f64,
    /// The publisher and the lag reader, and for raw the client work that
    /// ingest and the aggregator would otherwise do.
    pub loadgen_cpu_secs: f64,
    pub loadavg_1m: f64,
    /// CPU-seconds used in the window by processes that are not part of
    /// this measurement (other builds and benchmarks on a shared machine).
    pub other_cpu_secs: f64,
    pub sustained: bool,
    /// `sustained`, or why not.
    pub verdict: String,
}

impl StepRow {
    pub fn new(target: &str, partitions: u32, aggregators: u32, m: Measured) -> StepRow {
        let secs = m.window_secs.max(1e-3);
        StepRow {
            target: target.to_string(),
            partitions,
            aggregators,
            offered_per_sec: m.offered,
            sent_per_sec: m.sent as f64 / secs,
            stored_per_sec: m.stored as f64 / secs,
            achieved: m.stored as f64 / secs / m.offered.max(1.0),
            refused: m.refused,
            failed: m.failed,
            lag_ms: m.lag,
            lag_max_ms_by_second: m.lag_max_ms_by_second,
            read_per_sec: m.read as f64 / secs,
            window_secs: m.window_secs,
            pipeline_cpu_us_per_event: m.counted_cpu_secs * 1e6 / (m.stored.max(1) as f64),
            pipeline_cpu_secs: m.counted_cpu_secs,
            cpu_secs_by_process: m.cpu_secs_by_process,
            loadgen_cpu_secs: m.loadgen_cpu_secs,
            loadavg_1m: m.loadavg,
            other_cpu_secs: m.other_cpu_secs,
            sustained: false,
            verdict: String::new(),
        }
    }
}

/// The highest rate one load sustained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceiling {
    pub target: String,
    pub partitions: u32,
    pub aggregators: u32,
    /// The highest offered rate sustained; `None` when not even the lowest was.
    pub sustained_per_sec: Option<f64>,
    /// Every step was sustained: the real ceiling lies above the ladder.
    pub lower_bound: bool,
    /// The lowest rate tried that was not sustained, and why.
    pub failed_at_per_sec: Option<f64>,
    pub failed_because: Option<String>,
    /// At the sustained rate.
    pub stored_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub pipeline_cpu_us_per_event: f64,
    pub cpu_secs_by_process: BTreeMap<String, f64>,
    /// sustained_per_sec / raw's, from the same run.
    pub fraction_of_raw: Option<f64>,
}

impl Ceiling {
    pub fn of(rows: &[StepRow], target: &str, partitions: u32, aggregators: u32) -> Ceiling {
        let mine = || {
            rows.iter().filter(move |r| {
                r.target == target && r.partitions == partitions && r.aggregators == aggregators
            })
        };
        let best = mine()
            .filter(|r| r.sustained)
            .max_by(|a, b| a.offered_per_sec.total_cmp(&b.offered_per_sec));
        let first_bad = mine()
            .filter(|r| !r.sustained)
            .min_by(|a, b| a.offered_per_sec.total_cmp(&b.offered_per_sec));
        Ceiling {
            target: target.to_string(),
            partitions,
            aggregators,
            sustained_per_sec: best.map(|r| r.offered_per_sec),
            lower_bound: best.is_some() && first_bad.is_none(),
            failed_at_per_sec: first_bad.map(|r| r.offered_per_sec),
            failed_because: first_bad.map(|r| r.verdict.clone()),
            stored_per_sec: best.map_or(0.0, |r| r.stored_per_sec),
            p50_ms: best.map_or(f64::NAN, |r| r.lag_ms.p50),
            p99_ms: best.map_or(f64::NAN, |r| r.lag_ms.p99),
            pipeline_cpu_us_per_event: best.map_or(f64::NAN, |r| r.pipeline_cpu_us_per_event),
            cpu_secs_by_process: best
                .map(|r| r.cpu_secs_by_process.clone())
                .unwrap_or_default(),
            fraction_of_raw: None,
        }
    }
}

fn cpu_cell(r: &StepRow, name: &str) -> String {
    r.cpu_secs_by_process
        .get(name)
        .map_or("-".into(), |s| format!("{s:.2}"))
}

/// Every step, in the order measured.
pub fn steps_markdown(rows: &[StepRow]) -> String {
    let mut s = String::from(
        "| load | partitions x aggregators | offered ev/s | stored ev/s | lag p50 / p99 ms | lost | CPU-s nats / ingest / aggregator / loadgen | pipeline µs/event | other CPU-s | verdict |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} x {} | {:.0} | {:.0} | {:.1} / {:.1} | {} | {} / {} / {} / {:.2} | {:.1} | {:.1} | {} |",
            r.target,
            r.partitions,
            r.aggregators,
            r.offered_per_sec,
            r.stored_per_sec,
            r.lag_ms.p50,
            r.lag_ms.p99,
            r.refused + r.failed,
            cpu_cell(r, "nats-server"),
            cpu_cell(r, "kpi-ingest"),
            cpu_cell(r, "kpi-aggregator"),
            r.loadgen_cpu_secs,
            r.pipeline_cpu_us_per_event,
            r.other_cpu_secs,
            r.verdict,
        );
    }
    s
}

/// One line per load and layout: its ceiling and what it cost there.
pub fn ceilings_markdown(ceilings: &[Ceiling]) -> String {
    let mut s = String::from(
        "| load | partitions x aggregators | highest sustained ev/s | p50 / p99 ms there | pipeline µs/event there | of raw | first failed at |\n|---|---|---:|---:|---:|---:|---|\n",
    );
    for c in ceilings {
        let rate = match (c.sustained_per_sec, c.lower_bound) {
            (None, _) => "none".to_string(),
            (Some(r), true) => format!(">= {r:.0}"),
            (Some(r), false) => format!("{r:.0}"),
        };
        let failed = match (&c.failed_at_per_sec, &c.failed_because) {
            (Some(r), Some(why)) => format!("{r:.0} ({why})"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} x {} | {rate} | {:.1} / {:.1} | {:.1} | {} | {failed} |",
            c.target,
            c.partitions,
            c.aggregators,
            c.p50_ms,
            c.p99_ms,
            c.pipeline_cpu_us_per_event,
            c.fraction_of_raw
                .map_or("-".to_string(), |f| format!("{f:.2}")),
        );
    }
    s
}
