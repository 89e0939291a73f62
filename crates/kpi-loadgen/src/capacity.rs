//! The `capacity` scenario: steps the event rate up until kpistream's pipeline falls behind, beside raw JetStream in the same run.
//!
//! Each layout (`--partitions` x `--aggregators`) gets a fresh nats-server,
//! kpi-ingest and aggregator process(es) and climbs the ladder of rates
//! (`ladder`). The raw JetStream baseline (`raw`) has its own nats-server
//! and climbs the same ladder, its steps interleaved with the first
//! layout's, so both see the same background load on a shared machine: the
//! figure that matters is kpistream's ceiling as a fraction of raw's.
//! Everything listens on loopback, and every step, hence the run, ends by
//! itself.

mod chart;
mod ladder;
mod pipeline;
mod raw;
mod step;
mod table;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use ladder::{judge, Ladder, Limits, Outcome};
use pipeline::Pipeline;
use raw::Raw;
use step::Load;
use table::Ceiling;
pub use table::StepRow;

#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    /// Offered event rates (events/s), tried upward until one is not sustained.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,40000,60000,80000,100000,130000"
    )]
    pub steps: Vec<u64>,
    /// Seconds measured per step (after --warmup-secs at the step's rate).
    #[arg(long, default_value_t = 10)]
    pub step_secs: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// KPIs the events go to, round robin.
    #[arg(long, default_value_t = 1000)]
    pub kpis: usize,
    /// KPI codes are <prefix><index>.
    #[arg(long, default_value = "cap")]
    pub kpi_prefix: String,
    /// Partition counts to measure (`1,2,4,8` for the scaling table); the
    /// first is the headline layout, measured beside raw JetStream.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub partitions: Vec<u32>,
    /// Aggregator process counts to measure at each partition count
    /// (replica i of n owns the partitions p with p % n == i).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub aggregators: Vec<u32>,
    /// The aggregator's coalescing interval (its default is 100 ms).
    #[arg(long, default_value_t = 100)]
    pub coalesce_ms: u64,
    /// A step is sustained when its lag p99 stays at or below this...
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    /// ...at least this share of the offered events is stored, and none is lost.
    #[arg(long, default_value_t = 0.95)]
    pub min_achieved: f64,
    /// Bisections between the first failed rate and the last sustained one.
    #[arg(long, default_value_t = 2)]
    pub refine: u32,
    /// Most events per gRPC `Publish` call.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// `Publish` calls outstanding at once (ingest allows 64 per connection).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Raw JetStream publishes whose acks may be outstanding at once;
    /// default --batch x --in-flight, the most events the pipeline's
    /// publisher can have in ingest's hands (each call stores them all at
    /// once, up to ingest's --max-in-flight of 1024).
    #[arg(long)]
    pub raw_window: Option<usize>,
    /// KPIs whose minute updates the loadgen subscribes to for the lag.
    #[arg(long, default_value_t = 100)]
    pub watch: usize,
    /// Longest wait after a failed step for its backlog to be worked off.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Skip the raw JetStream baseline (a scaling-only run).
    #[arg(long)]
    pub no_raw: bool,
    /// Size of the event stream, in each run's nats-server: room for every
    /// step's events (kpi-bus's default of 1 GiB fills within a run past
    /// 100,000 events/s, and a full stream refuses events, read as loss).
    /// JetStream refuses a stream larger than its free disk: lower it there.
    #[arg(long, default_value_t = 8 << 30)]
    pub events_max_bytes: i64,
    /// Directory for capacity.json, capacity.md and capacity.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl CapacityArgs {
    fn raw_window(&self) -> usize {
        self.raw_window
            .unwrap_or(self.batch.min(1024) * self.in_flight)
            .max(1)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.kpis > 0, "--kpis must be at least 1");
        anyhow::ensure!(
            self.events_max_bytes > 0,
            "--events-max-bytes must be positive"
        );
        anyhow::ensure!(
            self.steps.iter().any(|s| *s > 0),
            "--steps needs a rate above 0"
        );
        anyhow::ensure!(self.step_secs > 0, "--step-secs must be at least 1");
        anyhow::ensure!(
            !self.partitions.is_empty() && self.partitions.iter().all(|p| *p > 0),
            "--partitions are at least 1"
        );
        anyhow::ensure!(
            !self.aggregators.is_empty() && self.aggregators.iter().all(|a| *a > 0),
            "--aggregators are at least 1"
        );
        anyhow::ensure!(
            self.min_achieved > 0.0 && self.min_achieved <= 1.0,
            "--min-achieved is a share in (0, 1]"
        );
        Ok(())
    }

    /// Every (partitions, aggregators) pair where each aggregator owns a partition.
    fn layouts(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for &p in &self.partitions {
            for &a in &self.aggregators {
                if a <= p && !out.contains(&(p, a)) {
                    out.push((p, a));
                }
            }
        }
        out
    }
}

pub async fn run(a: CapacityArgs) -> anyhow::Result<()> {
    a.check()?;
    let layouts = a.layouts();
    anyhow::ensure!(
        !layouts.is_empty(),
        "no layout has at most as many aggregators as partitions"
    );
    let codes = step::codes(&a.kpi_prefix, a.kpis)?;
    let limits = Limits {
        max_p99_ms: a.max_p99_ms,
        min_achieved: a.min_achieved,
    };
    let loadavg_start = step::loadavg();
    let mut raw = if a.no_raw {
        None
    } else {
        Some(
            Raw::start(
                codes.clone(),
                layouts[0].0,
                a.raw_window(),
                a.events_max_bytes,
            )
            .await?,
        )
    };
    let mut raw_ladder = Ladder::new(a.steps.clone(), a.refine);
    let mut rows: Vec<StepRow> = Vec::new();
    let mut ceilings = Vec::new();
    for (i, &(partitions, aggregators)) in layouts.iter().enumerate() {
        eprintln!("kpi-loadgen: capacity: kpistream, {partitions} partitions, {aggregators} aggregator(s)");
        let mut pipe = Pipeline::start(&a, codes.clone(), partitions, aggregators).await?;
        let mut ladder = Ladder::new(a.steps.clone(), a.refine);
        let climbed = async {
            loop {
                let next_pipe = ladder.next();
                let next_raw = if i == 0 { raw_ladder.next() } else { None };
                if next_pipe.is_none() && (next_raw.is_none() || raw.is_none()) {
                    return anyhow::Ok(());
                }
                if let Some(rate) = next_pipe {
                    let row = measure(
                        &mut pipe,
                        "kpistream",
                        (partitions, aggregators),
                        rate,
                        &a,
                        &limits,
                    )
                    .await;
                    ladder.record(rate, row.sustained);
                    settle(&mut pipe, &row, &limits, Duration::from_secs(a.drain_secs)).await;
                    rows.push(row);
                }
                if let (Some(rate), Some(r)) = (next_raw, raw.as_mut()) {
                    let row = measure(r, "raw", (partitions, 0), rate, &a, &limits).await;
                    raw_ladder.record(rate, row.sustained);
                    settle(r, &row, &limits, Duration::from_secs(a.drain_secs)).await;
                    rows.push(row);
                }
            }
        }
        .await;
        if climbed.is_err() {
            eprintln!("{}", pipe.logs());
        }
        pipe.shutdown().await;
        climbed?;
        ceilings.push(Ceiling::of(&rows, "kpistream", partitions, aggregators));
        if i == 0 && raw.is_some() {
            ceilings.push(Ceiling::of(&rows, "raw", partitions, 0));
        }
    }
    if let Some(r) = raw {
        r.shutdown().await;
    }
    let raw_rate = ceilings
        .iter()
        .find(|c| c.target == "raw")
        .and_then(|c| c.sustained_per_sec);
    for c in &mut ceilings {
        if let (Some(mine), Some(base)) = (c.sustained_per_sec, raw_rate) {
            c.fraction_of_raw = Some(mine / base);
        }
    }
    write_out(&a, &layouts, loadavg_start, &rows, &ceilings)
}

/// Measures one step and judges it.
async fn measure(
    load: &mut dyn Load,
    target: &str,
    (partitions, aggregators): (u32, u32),
    rate: u64,
    a: &CapacityArgs,
    limits: &Limits,
) -> StepRow {
    let m = step::run(
        load,
        rate as f64,
        Duration::from_secs(a.warmup_secs),
        Duration::from_secs(a.step_secs),
    )
    .await;
    let mut row = StepRow::new(target, partitions, aggregators, m);
    let verdict = judge(
        &Outcome {
            offered_per_sec: row.offered_per_sec,
            stored_per_sec: row.stored_per_sec,
            lost: row.refused + row.failed,
            lag_samples: row.lag_ms.count,
            p99_ms: row.lag_ms.p99,
        },
        limits,
    );
    row.sustained = verdict.is_ok();
    row.verdict = verdict.err().unwrap_or_else(|| "sustained".into());
    eprintln!(
        "kpi-loadgen: capacity: {target} {partitions}x{aggregators} offered {rate}/s stored {:.0}/s p50 {:.1} ms p99 {:.1} ms pipeline {:.1} µs/event: {}",
        row.stored_per_sec, row.lag_ms.p50, row.lag_ms.p99, row.pipeline_cpu_us_per_event, row.verdict
    );
    row
}

/// After a step that fell behind, waits (at most `drain`) until its backlog
/// is worked off; after one that kept up, a second's pause.
async fn settle(load: &mut dyn Load, row: &StepRow, limits: &Limits, drain: Duration) {
    if row.sustained {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    }
    let max_lag = Duration::from_secs_f64(limits.max_p99_ms / 1000.0);
    if !step::drain(load, max_lag, drain).await {
        eprintln!(
            "kpi-loadgen: capacity: {} still behind {} s after {:.0}/s; the next step inherits its backlog",
            row.target,
            drain.as_secs(),
            row.offered_per_sec
        );
    }
}

fn write_out(
    a: &CapacityArgs,
    layouts: &[(u32, u32)],
    loadavg_start: f64,
    rows: &[StepRow],
    ceilings: &[Ceiling],
) -> anyhow::Result<()> {
    let first = layouts[0];
    let headline = ceilings
        .iter()
        .find(|c| c.target == "kpistream" && (c.partitions, c.aggregators) == first);
    let raw = ceilings.iter().find(|c| c.target == "raw");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let report = json!({
        "scenario": "capacity",
        "setup": {
            "steps": a.steps,
            "step_secs": a.step_secs,
            "warmup_secs": a.warmup_secs,
            "kpis": a.kpis,
            "coalesce_ms": a.coalesce_ms,
            "layouts": layouts,
            "max_p99_ms": a.max_p99_ms,
            "min_achieved": a.min_achieved,
            "batch": a.batch,
            "in_flight": a.in_flight,
            "raw_window": a.raw_window(),
            "watched_kpis": a.watch.min(a.kpis),
            "nats_server": crate::nats_ws::version(),
            "lag": "kpistream: event time to its KPI's minute update arriving on NATS (event -> render); raw: event time to arrival at the ordered consumer",
        },
        "machine": {
            "cores": cores,
            "loadavg_1m_start": loadavg_start,
            "loadavg_1m_end": step::loadavg(),
        },
        "headline": {
            "kpistream_sustained_per_sec": headline.and_then(|c| c.sustained_per_sec),
            "raw_sustained_per_sec": raw.and_then(|c| c.sustained_per_sec),
            "fraction_of_raw": headline.and_then(|c| c.fraction_of_raw),
            "kpistream_pipeline_cpu_us_per_event": headline.map(|c| c.pipeline_cpu_us_per_event),
            "raw_nats_cpu_us_per_event": raw.map(|c| c.pipeline_cpu_us_per_event),
        },
        "ceilings": ceilings,
        "rows": rows,
    });
    let steps_md = table::steps_markdown(rows);
    let ceilings_md = table::ceilings_markdown(ceilings);
    eprintln!("\n{steps_md}\n{ceilings_md}");
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("capacity.json"), &json)?;
        std::fs::write(
            out.join("capacity.md"),
            format!("{steps_md}\n{ceilings_md}"),
        )?;
        std::fs::write(
            out.join("capacity.svg"),
            chart::capacity_chart(rows, first, a.max_p99_ms),
        )?;
    }
    Ok(())
}
