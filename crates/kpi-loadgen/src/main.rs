//! `kpi-loadgen`: opens many WebSocket clients, publishes at a fixed rate, and measures what arrives.
//!
//! One run measures one target (`kpistream`, `plain`, `nats-ws`) or all three
//! with the same load (`compare`), so every figure has a baseline taken on
//! the same machine at the same time. `dashboard` measures what one 20-KPI
//! dashboard receives per hour under each cadence and encoding. `capacity`
//! steps the event rate through ingest and the aggregator until they fall
//! behind, beside raw JetStream climbing the same steps. Clients live in worker child processes
//! (`clients`), because one process may open at most 20,000 files here; the
//! plain baseline server is a child process too (`serve-plain`), so its CPU is
//! measured the way the gateway's is. Every run is bounded in connections and
//! time and stops by itself.

mod capacity;
mod clients;
mod coordinator;
mod dashboard;
mod formats;
mod nats_ws;
mod plain;
mod processes;
mod procstat;
mod publish;
mod report;
mod svg;
mod targets;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kpi-loadgen",
    version,
    about = "kpistream load and latency measurement"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Measure kpistream: spawns NATS and the three services (or kpi-stack), or targets a running gateway.
    Kpistream(KpistreamArgs),
    /// Baseline: a plain fan-out WebSocket writer (spawned as `serve-plain`).
    Plain(LoadArgs),
    /// Baseline: nats-server's own WebSocket listener serving the same fan-out.
    NatsWs(LoadArgs),
    /// Runs kpistream, plain and nats-ws with the same load and writes a report with ratios.
    Compare(CompareArgs),
    /// Bytes and messages per dashboard-hour: one 20-KPI `/ws` dashboard per cadence x encoding on `kpi-stack --demo`.
    Dashboard(dashboard::DashboardArgs),
    /// Pipeline capacity: steps the event rate up until ingest + aggregator fall behind, beside raw JetStream.
    Capacity(capacity::CapacityArgs),
    /// Ingest throughput per format (gRPC stream, JSON array, NDJSON, line protocol) in one run.
    IngestFormats(formats::FormatArgs),
    /// The plain baseline server (child process of `plain`).
    #[command(hide = true)]
    ServePlain(plain::ServeArgs),
    /// A worker holding a share of the client connections (child process).
    #[command(hide = true)]
    Clients(clients::WorkerArgs),
}

/// The load, the same for every target.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// WebSocket connections, each subscribed to one KPI (connection i watches KPI i mod --kpis).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// KPIs (topics) the connections spread over.
    #[arg(long, default_value_t = 10)]
    pub kpis: usize,
    /// Events per second per KPI; 0 = idle (connect, measure memory, no publishing).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, default_value = "minute")]
    pub period: String,
    /// kpistream's per-subscription cadence (`live`, `<N>s`, `<N>m`, `close`),
    /// to compare the gateway's CPU at the same published load.
    #[arg(long, default_value = "live")]
    pub cadence: String,
    /// Seconds of measurement (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of publishing before measuring starts.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds to wait after connecting before reading idle RSS.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Most connections one worker process holds (the file limit is 20,000 per process).
    #[arg(long, default_value_t = 15_000)]
    pub conns_per_worker: usize,
    /// Connections opened concurrently per worker.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Seconds allowed for all connections to open.
    #[arg(long, default_value_t = 120)]
    pub connect_timeout: u64,
    /// Times a client tries again after a failed connect, with a growing
    /// pause, as a dashboard's reconnect does. Retries are reported.
    #[arg(long, default_value_t = 2)]
    pub connect_retries: u32,
    /// Client source addresses are 127.0.0.<first> and up, one per --conns-per-source.
    #[arg(long, default_value_t = 2)]
    pub source_first: u8,
    #[arg(long, default_value_t = 20_000)]
    pub conns_per_source: usize,
    /// KPI codes are <prefix><index>.
    #[arg(long, default_value = "lg")]
    pub kpi_prefix: String,
    /// Directory for report.json and the SVG plots (stdout gets the JSON either way).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How kpistream is run for a measurement.
#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// `split`: nats-server -js plus kpi-ingest, kpi-aggregator and --gateways kpi-gateway
    /// processes (the gateway's CPU is measured apart); `single`: kpi-stack on its in-process bus.
    #[arg(long, default_value = "split")]
    pub stack: String,
    /// Gateway processes (split only); connections are spread over them.
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// The aggregator's coalescing interval; 0 publishes after every event.
    #[arg(long, default_value_t = 0)]
    pub coalesce_ms: u64,
    /// Per-connection queue of the gateway (--queue-capacity).
    #[arg(long)]
    pub queue_capacity: Option<usize>,
    /// Target a running gateway instead (repeatable: ws://host:port); needs --grpc.
    #[arg(long)]
    pub target_url: Vec<String>,
    /// Ingest's gRPC address of the running system, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    pub grpc: Option<String>,
    /// Processes whose CPU and RSS count as the server (repeatable).
    #[arg(long)]
    pub target_pid: Vec<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct KpistreamArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub stack: StackArgs,
    /// Name of this scenario in the report.
    #[arg(long, default_value = "compare")]
    pub name: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let work = async move {
            match cli.cmd {
                Cmd::Kpistream(a) => {
                    let target = targets::kpistream(&a.load, &a.stack).await?;
                    coordinator::run_one(&a.load, target).await
                }
                Cmd::Plain(load) => {
                    let target = targets::plain(coordinator::run_bound_secs(&load)).await?;
                    coordinator::run_one(&load, target).await
                }
                Cmd::NatsWs(load) => {
                    let target = targets::nats_ws(&load).await?;
                    coordinator::run_one(&load, target).await
                }
                Cmd::Compare(a) => coordinator::compare(&a).await,
                Cmd::Dashboard(a) => dashboard::run(a).await,
                Cmd::Capacity(a) => capacity::run(a).await,
                Cmd::IngestFormats(a) => formats::run(a).await,
                Cmd::ServePlain(a) => plain::serve(a).await,
                Cmd::Clients(a) => clients::run(a).await,
            }
        };
        // Dropping `work` drops every child process handle, and each was
        // spawned with `kill_on_drop`: a stopped run leaves no nats-server or
        // service behind.
        tokio::select! {
            r = work => r,
            signal = terminated() => {
                anyhow::bail!("stopped by {signal}; its child processes were stopped too")
            }
        }
    })
}

/// The first SIGTERM or SIGINT.
async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies, as before.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
