//! `ingest-formats`: the same events through gRPC PublishStream, a JSON array, NDJSON and InfluxDB line protocol, in one run, per ingest CPU-second.
//!
//! Spawns `nats-server -js` and `kpi-ingest`, builds every request body
//! before the clock starts, then sends `--events` events per format with
//! `--concurrency` requests (or streams) in flight and reads ingest's CPU
//! time around each format. gRPC streaming is the baseline the HTTP formats
//! are held against: every format ends in the same accept path and the same
//! JetStream store, so the difference is the decoding and the HTTP framing.

use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, Status};
use serde::Serialize;

use crate::processes::{pid, start_nats_and_ingest};
use crate::procstat;

#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// Events per format.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per HTTP request (JSON array, NDJSON, line protocol).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// HTTP requests in flight, and gRPC streams open, at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// KPIs the events spread over.
    #[arg(long, default_value_t = 100)]
    pub kpis: usize,
    /// Write report.json here too.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    format: &'static str,
    events: usize,
    stored: u64,
    wall_secs: f64,
    events_per_sec: f64,
    ingest_cpu_secs: f64,
    events_per_ingest_cpu_sec: f64,
    nats_cpu_secs: f64,
    vs_grpc_stream: f64,
}

pub async fn run(a: FormatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.events > 0 && a.batch > 0 && a.concurrency > 0 && a.kpis > 0,
        "all counts must be positive"
    );
    let dir = tempfile::Builder::new().prefix("kpi-formats-").tempdir()?;
    let ni = start_nats_and_ingest(dir.path(), &[("RUST_LOG", "warn")]).await?;
    let (grpc, http) = (ni.grpc, ni.http);
    let (ingest_pid, nats_pid) = (pid(&ni.ingest)?, pid(&ni.nats)?);

    let base = format!("http://127.0.0.1:{http}");
    let http_client = reqwest::Client::new();
    let mut rows: Vec<Row> = Vec::new();
    for format in ["grpc-stream", "json-array", "ndjson", "line-protocol"] {
        let cpu0 = (
            procstat::cpu_secs(ingest_pid)?,
            procstat::cpu_secs(nats_pid)?,
        );
        let started = Instant::now();
        let stored = match format {
            "grpc-stream" => grpc_stream(&format!("http://127.0.0.1:{grpc}"), &a).await?,
            _ => {
                let bodies = bodies(format, &a);
                post_all(&http_client, &base, format, bodies, a.concurrency).await?
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let ingest_cpu = procstat::cpu_secs(ingest_pid)? - cpu0.0;
        let nats_cpu = procstat::cpu_secs(nats_pid)? - cpu0.1;
        let per_cpu = stored as f64 / ingest_cpu.max(0.01);
        let baseline = rows
            .first()
            .map_or(per_cpu, |r| r.events_per_ingest_cpu_sec);
        rows.push(Row {
            format,
            events: a.events,
            stored,
            wall_secs: wall,
            events_per_sec: stored as f64 / wall,
            ingest_cpu_secs: ingest_cpu,
            events_per_ingest_cpu_sec: per_cpu,
            nats_cpu_secs: nats_cpu,
            vs_grpc_stream: per_cpu / baseline,
        });
        eprintln!("{format}: {stored} stored in {wall:.2} s, ingest {ingest_cpu:.2} CPU-s");
    }
    println!("| format | events/s | ingest CPU-s | events per ingest CPU-s | vs gRPC stream | nats CPU-s |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2}x | {:.2} |",
            r.format,
            r.events_per_sec,
            r.ingest_cpu_secs,
            r.events_per_ingest_cpu_sec,
            r.vs_grpc_stream,
            r.nats_cpu_secs
        );
    }
    let report = serde_json::json!({
        "setup": format!("nats-server -js + kpi-ingest (RUST_LOG=warn); {} events per format over {} KPIs, {} per HTTP request, {} requests or streams in flight", a.events, a.kpis, a.batch, a.concurrency),
        "rows": rows,
    });
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    }
    drop(ni);
    Ok(())
}

/// The KPI of event `i`; ids are distinct per format and event, so nothing is a duplicate.
fn kpi(a: &FormatArgs, i: usize) -> String {
    format!("fmt_{}", i % a.kpis)
}

fn bodies(format: &str, a: &FormatArgs) -> Vec<(Vec<u8>, &'static str, &'static str)> {
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let mut out = Vec::new();
    let mut start = 0;
    while start < a.events {
        let end = (start + a.batch).min(a.events);
        let body = match format {
            "json-array" => {
                let evs: Vec<serde_json::Value> = (start..end)
                    .map(|i| serde_json::json!({"event_id": format!("ja-{i}"), "kpi": kpi(a, i), "value": i as f64, "labels": {"src": "bench"}}))
                    .collect();
                (
                    serde_json::to_vec(&evs).unwrap_or_default(),
                    "/v1/events",
                    "application/json",
                )
            }
            "ndjson" => {
                let mut b = Vec::new();
                for i in start..end {
                    let ev = serde_json::json!({"event_id": format!("nd-{i}"), "kpi": kpi(a, i), "value": i as f64, "labels": {"src": "bench"}});
                    b.extend_from_slice(ev.to_string().as_bytes());
                    b.push(b'\n');
                }
                (b, "/v1/events", "application/x-ndjson")
            }
            _ => {
                let mut b = String::new();
                for i in start..end {
                    // A distinct timestamp per point: ids are derived from content.
                    b.push_str(&format!(
                        "{},src=bench value={} {}\n",
                        kpi(a, i),
                        i,
                        now_ns + i as i64
                    ));
                }
                (
                    b.into_bytes(),
                    "/api/v2/write?org=bench&bucket=bench",
                    "text/plain",
                )
            }
        };
        out.push(body);
        start = end;
    }
    out
}

async fn post_all(
    client: &reqwest::Client,
    base: &str,
    format: &str,
    bodies: Vec<(Vec<u8>, &'static str, &'static str)>,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let counts = futures::stream::iter(bodies)
        .map(|(body, path, ct)| {
            let n = body.iter().filter(|&&b| b == b'\n').count();
            let req = client
                .post(format!("{base}{path}"))
                .header("content-type", ct)
                .body(body);
            async move {
                let resp = req.send().await.context("posting")?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                match status {
                    204 => Ok(n as u64),
                    200 => {
                        let v: serde_json::Value = serde_json::from_str(&text)?;
                        Ok(v["accepted"].as_u64().unwrap_or(0))
                    }
                    _ => anyhow::bail!("{format}: {status} {}", &text[..text.len().min(300)]),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<anyhow::Result<u64>>>()
        .await;
    counts.into_iter().sum()
}

async fn grpc_stream(url: &str, a: &FormatArgs) -> anyhow::Result<u64> {
    let per = a.events.div_ceil(a.concurrency);
    let ts = prost_types::Timestamp::from(std::time::SystemTime::now());
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..a.concurrency {
        let events: Vec<Event> = (s * per..((s + 1) * per).min(a.events))
            .map(|i| Event {
                event_id: format!("gs-{i}"),
                kpi: kpi(a, i),
                value: i as f64,
                time: Some(ts),
                labels: [("src".to_owned(), "bench".to_owned())].into(),
            })
            .collect();
        let mut client = IngestClient::connect(url.to_owned()).await?;
        tasks.spawn(async move {
            let mut acks = client
                .publish_stream(tokio_stream::iter(events))
                .await?
                .into_inner();
            let mut stored = 0u64;
            while let Some(ack) = acks.message().await? {
                if ack.status() == Status::Stored {
                    stored += 1;
                }
            }
            anyhow::Ok(stored)
        });
    }
    let mut stored = 0;
    while let Some(r) = tasks.join_next().await {
        stored += r??;
    }
    Ok(stored)
}
