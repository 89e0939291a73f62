//! The dashboard scenario: what a 20-KPI `/ws` dashboard costs per hour under each cadence and encoding.
//!
//! One `kpi-stack --demo` publishes its ten KPIs at the demo's rate; six
//! dashboards connect to it at the same time, one per variant (`live`, `5s`,
//! `close` x `full`, `delta`), each subscribing to every KPI the stack lists
//! at `/api/kpis` (the demo's ten) for the minute and the hour period (20
//! subscriptions), as the dashboard page does. All six count the same
//! window, so every variant is measured against the same published events
//! and `live`/`full` is the baseline taken in the same run. `close` sends one
//! message per minute boundary per minute-period KPI, so its figure is only
//! meaningful over several boundaries: the report says how many minute
//! boundaries the window held, and the default window is two minutes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use crate::processes::{free_port, sibling, spawn, wait_http_ok};

const PERIODS: [&str; 2] = ["minute", "hour"];
const CADENCES: [&str; 3] = ["live", "5s", "close"];
const ENCODINGS: [&str; 2] = ["full", "delta"];

#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Seconds counted (after the warm-up); at least 120 for a `close` figure over two minute boundaries.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Seconds after subscribing before counting (the snapshots are not counted).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// The demo's rounds per second (`kpi-stack --demo-rate`; each round publishes all ten KPIs).
    #[arg(long, default_value_t = 2)]
    pub demo_rate: u32,
    /// Directory for dashboard.json (stdout gets the table either way).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one dashboard received in the window.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub cadence: String,
    pub encoding: String,
    pub messages: u64,
    /// WebSocket payload plus frame header bytes (server frames are unmasked).
    pub wire_bytes: u64,
    /// Of the messages, how many were `patch`es.
    pub patches: u64,
    pub messages_per_hour: f64,
    pub bytes_per_hour: f64,
    /// bytes_per_hour / live-full's in the same run.
    pub bytes_vs_live_full: f64,
    /// messages_per_hour / live-full's in the same run.
    pub messages_vs_live_full: f64,
}

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    pub setup: String,
    pub subscriptions: usize,
    pub window_secs: f64,
    /// Minute boundaries inside the window: `close`'s messages come only there.
    pub minute_boundaries: u64,
    pub variants: Vec<Variant>,
}

#[derive(Default)]
struct Count {
    messages: u64,
    wire_bytes: u64,
    patches: u64,
}

/// Bytes of a server-to-client frame carrying `len` payload bytes.
fn frame_bytes(len: usize) -> u64 {
    let header = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    (header + len) as u64
}

/// One dashboard: subscribes, then counts what arrives between `start` and `end`.
async fn dashboard(
    url: String,
    codes: Arc<Vec<String>>,
    cadence: &'static str,
    encoding: &'static str,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Count> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connecting {url}"))?;
    for kpi in codes.iter() {
        for period in PERIODS {
            let sub = serde_json::json!({"type": "subscribe", "kpi": kpi, "period": period,
                "cadence": cadence, "encoding": encoding});
            ws.send(Message::text(sub.to_string())).await?;
        }
    }
    let mut c = Count::default();
    loop {
        let msg = match tokio::time::timeout_at(end.into(), ws.next()).await {
            Err(_) => break,
            Ok(None) => anyhow::bail!("{cadence}/{encoding}: the gateway closed the dashboard"),
            Ok(Some(m)) => m?,
        };
        let Message::Text(t) = msg else { continue };
        if t.contains("\"type\":\"error\"") {
            anyhow::bail!("{cadence}/{encoding}: gateway error {t}");
        }
        if Instant::now() < start {
            continue;
        }
        c.messages += 1;
        c.wire_bytes += frame_bytes(t.len());
        if t.contains("\"type\":\"patch\"") {
            c.patches += 1;
        }
    }
    let _ = ws.close(None).await;
    Ok(c)
}

/// The KPIs the stack lists at `/api/kpis` once the demo has published a
/// round: read until two reads a round apart agree, because a code is
/// listed only after its first update.
async fn listed_kpis(http: u16, demo_rate: u32) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct List {
        kpis: Vec<String>,
    }
    let url = format!("http://127.0.0.1:{http}/api/kpis");
    let round = Duration::from_secs_f64(1.0 / f64::from(demo_rate.max(1)));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut previous: Vec<String> = Vec::new();
    loop {
        let list: List = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not a KPI list"))?;
        if !list.kpis.is_empty() && list.kpis == previous {
            return Ok(list.kpis);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} listed no stable set of KPIs within 30 s (last: {:?})",
            list.kpis
        );
        previous = list.kpis;
        tokio::time::sleep(round + Duration::from_millis(200)).await;
    }
}

pub async fn run(a: DashboardArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.duration > 0, "--duration must be at least 1 s");
    let dir = tempfile::Builder::new().prefix("kpi-loadgen-").tempdir()?;
    let (http, grpc) = (free_port()?, free_port()?);
    let mut cmd = Command::new(sibling("kpi-stack")?);
    cmd.args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
        .args(["--demo", "--demo-rate", &a.demo_rate.to_string()])
        .env("RUST_LOG", "warn");
    let mut stack = spawn(dir.path(), "kpi-stack", cmd)?;
    wait_http_ok(http, "/readyz", Duration::from_secs(30)).await?;
    let codes = Arc::new(listed_kpis(http, a.demo_rate).await?);

    let start = Instant::now() + Duration::from_secs(a.warmup);
    let end = start + Duration::from_secs(a.duration);
    let wall_start = chrono::Utc::now() + chrono::Duration::seconds(a.warmup as i64);
    let url = format!("ws://127.0.0.1:{http}/ws");
    let mut tasks = Vec::new();
    for cadence in CADENCES {
        for encoding in ENCODINGS {
            let url = url.clone();
            tasks.push((
                cadence,
                encoding,
                tokio::spawn(dashboard(url, codes.clone(), cadence, encoding, start, end)),
            ));
        }
    }
    let mut counts = Vec::new();
    for (cadence, encoding, t) in tasks {
        counts.push((cadence, encoding, t.await??));
    }
    let _ = stack.kill().await;

    let window = a.duration as f64;
    let scale = 3600.0 / window;
    let wall_end = wall_start + chrono::Duration::seconds(a.duration as i64);
    let minute_boundaries =
        (wall_end.timestamp().div_euclid(60) - wall_start.timestamp().div_euclid(60)) as u64;
    let base = counts
        .first()
        .map(|(_, _, c)| (c.messages.max(1) as f64, c.wire_bytes.max(1) as f64))
        .unwrap_or((1.0, 1.0));
    let variants: Vec<Variant> = counts
        .into_iter()
        .map(|(cadence, encoding, c)| Variant {
            cadence: cadence.to_string(),
            encoding: encoding.to_string(),
            messages: c.messages,
            wire_bytes: c.wire_bytes,
            patches: c.patches,
            messages_per_hour: c.messages as f64 * scale,
            bytes_per_hour: c.wire_bytes as f64 * scale,
            bytes_vs_live_full: c.wire_bytes as f64 / base.1,
            messages_vs_live_full: c.messages as f64 / base.0,
        })
        .collect();
    let report = DashboardReport {
        setup: format!(
            "kpi-stack --demo --demo-rate {} ({n} KPIs listed at /api/kpis x {} events/s), default coalescing; one /ws dashboard per variant, {n} KPIs x minute+hour",
            a.demo_rate,
            a.demo_rate,
            n = codes.len()
        ),
        subscriptions: codes.len() * PERIODS.len(),
        window_secs: window,
        minute_boundaries,
        variants,
    };
    println!(
        "{} s window, {} minute boundaries; per dashboard-hour:",
        report.window_secs, report.minute_boundaries
    );
    println!("| cadence | encoding | messages/h | MB/h | bytes vs live full |");
    println!("|---|---|---:|---:|---:|");
    for v in &report.variants {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.3} |",
            v.cadence,
            v.encoding,
            v.messages_per_hour,
            v.bytes_per_hour / 1e6,
            v.bytes_vs_live_full
        );
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(
            out.join("dashboard.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(())
}
